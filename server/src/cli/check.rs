//! `vigil check [--verbose] [--test-mail ADDRESS]`: validates both files without side effects, and optionally
//! sends a test mail through `[smtp]`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use vigil_server::config::{Config, ConfigError};

use super::{Files, Out};

pub fn run(files: &Files, verbose: bool, test_mail: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut out = Out::new();
    let code = check(&mut out, files, verbose)?;
    let Some(to) = test_mail else { return Ok(code) };
    let Ok(loaded) = Config::load(&files.clients, &files.jobs) else {
        return Ok(code);
    };
    let smtp = loaded.config.smtp.context("jobs.toml has no [smtp]: there is no server to send a test mail through")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(vigil_server::mail::send_test(&smtp, to))
        .with_context(|| format!("test mail to {to} through {}:{}", smtp.host, smtp.port))?;
    writeln!(out, "test mail sent to {to} through {}:{}", smtp.host, smtp.port)?;
    Ok(code)
}

fn check(out: &mut Out, files: &Files, verbose: bool) -> std::io::Result<ExitCode> {
    match Config::load(&files.clients, &files.jobs) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                writeln!(out, "warning: {w}")?;
            }
            let c = &loaded.config;
            writeln!(
                out,
                "ok: {} host(s) in {}, {} job(s) in {}",
                c.clients.len(),
                files.clients.display(),
                c.jobs.len(),
                files.jobs.display()
            )?;
            if verbose {
                schedules(out, c)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ConfigError::Invalid(diags)) => {
            for d in &diags {
                writeln!(out, "error: {d}")?;
            }
            writeln!(out, "{} error(s); nothing applied", diags.len())?;
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            writeln!(out, "error: {e}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `--verbose`: each host's resolved schedule and alert rules.
fn schedules(out: &mut Out, c: &Config) -> std::io::Result<()> {
    for h in &c.clients {
        let s = c.schedule_for(&h.name);
        writeln!(out, "{} ({}, {:?}) schedule {}", h.name, h.ip, h.transport, &s.hash()[..12])?;
        for j in &s.jobs {
            let names: Vec<&str> = j.collectors.iter().map(|c| c.name()).collect();
            let what = match &j.command {
                // Debug form of the argv: quoted and escaped, one line whatever the arguments hold.
                Some(cmd) => format!(
                    "command {:?} timeout {}s parse {} max_output {}{}",
                    cmd.argv,
                    cmd.timeout_s,
                    cmd.parse.name(),
                    cmd.max_output,
                    if h.commands { "" } else { " (refused: no commands=\"allow\")" }
                ),
                None => names.join(", "),
            };
            writeln!(out, "  {:<12} every {:>5}s jitter {:>3}s: {what}", j.name, j.interval_s, j.jitter_s)?;
        }
        for a in &h.alerts {
            let on = match (&a.mount, &a.job, &a.metric) {
                (Some(m), _, _) => format!(" on {m}"),
                (_, Some(j), Some(m)) => format!(" on {j}/{m}"),
                (_, Some(j), None) => format!(" on {j}"),
                _ => String::new(),
            };
            writeln!(out, "  alert {:?} limit {}{on}", a.kind, a.limit)?;
        }
    }
    Ok(())
}
