//! `vigil serve [--node NAME] [--listen ADDR] [--web-listen ADDR]` (and the global `--data-dir DIR`): runs the
//! daemon until SIGTERM or SIGINT. The flags set this node's name and override jobs.toml for this process only, so
//! several nodes share one pair of config files.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use tokio_util::sync::CancellationToken;
use vigil_server::config::Overrides;
use vigil_server::serve::{self, ServeOptions};

use super::Files;

/// The flags of `vigil serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// This node's name (1 to 64 of A-Z a-z 0-9 . _ -); default: the machine's host name.
    #[arg(long, value_name = "NAME", value_parser = parse_node)]
    pub node: Option<String>,
    /// Listen here instead of jobs.toml's `[server] listen` (agents dial it unless `[server] endpoint` says else).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Serve the dashboard here instead of jobs.toml's `[web] listen` (the `[web]` table must be there).
    #[arg(long, value_name = "ADDR")]
    pub web_listen: Option<SocketAddr>,
}

/// `--node`: a name as [`vigil_server::config::overrides::node_name`] allows.
fn parse_node(s: &str) -> Result<String, String> {
    vigil_server::config::overrides::node_name(s).map(|()| s.to_owned())
}

pub fn run(files: &Files, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let opts = ServeOptions {
            clients: files.clients.clone(),
            jobs: files.jobs.clone(),
            limits: Default::default(),
            start_local_agents: true,
            node: args.node,
            overrides: Overrides { listen: args.listen, web_listen: args.web_listen, ..files.overrides() },
        };
        // The signal task only cancels; `run` then shuts down in order (endpoint, in-flight acks, ingest).
        let signal_task = tokio::spawn(serve::cancel_on_signal(shutdown.clone()));
        let result = serve::run(opts, shutdown).await;
        signal_task.abort();
        result?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
