//! `vigil runs [--host H] [--job J] [--since D] [--output] [--json]`: command job runs from the database, newest
//! first.

use std::io::Write;
use std::process::ExitCode;

use vigil_server::store::{RunFilter, RunRow, Store};

use super::{Files, Out};

/// What `vigil runs` was asked for.
#[derive(Debug)]
pub struct RunsArgs {
    pub host: Option<String>,
    pub job: Option<String>,
    /// How far back from now (ms), from `--since`; `None` for all.
    pub since_ms_back: Option<i64>,
    pub limit: u32,
    /// Show stdout and stderr in the table (the JSON form always carries them).
    pub output: bool,
    pub json: bool,
}

pub fn run(files: &Files, args: RunsArgs) -> anyhow::Result<ExitCode> {
    let (config, _) = files.load_for_view()?;
    let since_ms = args.since_ms_back.map_or(0, |back| vigil_sys::clock::now_ms().saturating_sub(back));
    let store = Store::open_server_readonly(&config.server)?;
    let filter = RunFilter { host: args.host, job: args.job, since_ms, limit: args.limit };
    let runs = store.command_runs(&filter)?;
    let mut out = Out::new();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&runs)?)?;
    } else {
        write!(out, "{}", render_table(&runs, args.output))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The table: one line per run, then (with `output`) its output indented. Output holds no control characters but
/// newline and tab (the schema refuses others), so it cannot drive the terminal.
pub fn render_table(runs: &[RunRow], output: bool) -> String {
    if runs.is_empty() {
        return "no command runs\n".into();
    }
    let mut s = format!("{:<20} {:<16} {:<16} {:>9}  {}\n", "STARTED (UTC)", "HOST", "JOB", "DURATION", "RESULT");
    for r in runs {
        let mut result = r.describe();
        if r.stdout_truncated || r.stderr_truncated {
            result.push_str(" (output truncated)");
        }
        if !r.parse_errors.is_empty() {
            result.push_str(&format!(" ({} parse problems)", r.parse_errors.len()));
        }
        s.push_str(&format!(
            "{:<20} {:<16} {:<16} {:>7}ms  {}\n",
            vigil_sys::clock::utc(r.started_ms.div_euclid(1000)),
            r.host,
            r.job,
            r.duration_ms,
            result
        ));
        if output {
            for (name, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
                if !text.is_empty() {
                    s.push_str(&format!("  {name}:\n"));
                    for line in text.lines() {
                        s.push_str(&format!("    {line}\n"));
                    }
                }
            }
            for e in &r.parse_errors {
                s.push_str(&format!("  parse: {e}\n"));
            }
            for m in &r.metrics {
                s.push_str(&format!("  metric {} {} = {}\n", m.name, m.labels, m.value));
            }
        }
    }
    s
}
