//! `vigil alerts [--since D] [--json]`: the alert history from the database.

use std::io::Write;
use std::process::ExitCode;

use vigil_server::alert::history;
use vigil_server::store::Store;

use super::{Files, Out};

/// `since_ms_back`: how far back from now (ms), from `--since`; `None` for the whole history.
pub fn run(files: &Files, since_ms_back: Option<i64>, json: bool) -> anyhow::Result<ExitCode> {
    let (config, _) = files.load_for_view()?;
    let since_ms = since_ms_back.map_or(0, |back| vigil_sys::clock::now_ms().saturating_sub(back));
    let store = Store::open_server_readonly(&config.server)?;
    let events = store.alert_events_since(since_ms)?;
    let outbox = store.outbox_counts()?;
    let mut out = Out::new();
    if json {
        writeln!(out, "{}", history::render_json(&events, outbox)?)?;
    } else {
        write!(out, "{}", history::render_table(&events, outbox))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// clap's value parser of `--since`: a duration such as 90s, 15m, 2h, 7d, in milliseconds.
pub fn parse_since(text: &str) -> Result<i64, String> {
    history::parse_since(text).ok_or_else(|| format!("{text:?}: expected a duration such as 90s, 15m, 2h, 7d"))
}
