//! `vigil serve`: runs the daemon until SIGTERM or SIGINT.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use vigil_server::serve::{self, ServeOptions};

use super::Files;

pub fn run(files: &Files) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let opts = ServeOptions {
            clients: files.clients.clone(),
            jobs: files.jobs.clone(),
            limits: Default::default(),
            start_local_agents: true,
        };
        // The signal task only cancels; `run` then shuts down in order (endpoint, in-flight acks, ingest).
        let signal_task = tokio::spawn(serve::cancel_on_signal(shutdown.clone()));
        let result = serve::run(opts, shutdown).await;
        signal_task.abort();
        result?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
