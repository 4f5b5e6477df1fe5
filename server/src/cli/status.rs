//! `vigil status [--json]`: one row per host, read straight from the database.

use std::io::Write;
use std::process::ExitCode;

use vigil_server::status;
use vigil_server::store::Store;

use super::{Files, Out};

pub fn run(files: &Files, json: bool) -> anyhow::Result<ExitCode> {
    // The view must come up while the files on disk are invalid: then it uses the config serve last applied, and
    // the error (recorded by serve, or found now) is shown with the hosts.
    let (config, load_error) = files.load_for_view()?;
    let store = Store::open_server_readonly(&config.server)?;
    let hosts: Vec<(String, String, Option<u32>)> = config
        .clients
        .iter()
        .map(|h| (h.name.clone(), h.ip.clone(), config.schedule_for(&h.name).min_interval_s()))
        .collect();
    let now = vigil_sys::clock::now_ms();
    let mut rows = status::collect(&store, &hosts, now)?;
    let nodes = status::nodes(&store, now)?;
    status::add_channels(&mut rows, &store, &config, nodes.iter().any(|n| n.running))?;
    let err = status::config_error(&store)?.or(load_error);
    let restart = store.restart_needed()?;
    let mut out = Out::new();
    if json {
        writeln!(out, "{}", status::render_json(&rows, &nodes, err.as_deref(), restart.as_deref())?)?;
    } else {
        write!(out, "{}", status::render_table(&rows, &nodes, err.as_deref(), restart.as_deref()))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
