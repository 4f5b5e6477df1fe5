//! `vigil-agent`: collects system statistics on the schedule pulled from the server, seals and spools every report,
//! and pushes the spool over an SSH channel it opens to the server.
//!
//! - [`cli`]: the command line.
//! - [`collect`]: one collector per statistic family (sysinfo, utmp, auth log).
//! - [`config`]: `agent.toml`, written by `vigil bootstrap`.
//! - [`command`]: runs command jobs (own process group, timeout, capped output).
//! - [`schedule`]: runs the jobs on their intervals with a per-agent phase.
//! - [`spool`]: sealed reports on disk until acknowledged, bounded, loss counted.
//! - [`push`]: the SSH client to the server's endpoint.
//! - [`control`]: `--sha256`, `--unpack`, `--is-running`, `--stop`, `--detach`: what bootstrap asks of the binary
//!   on a host.
//!
//! Runs on a current-thread runtime; the scheduler, the pusher and the signal handler are three futures joined in
//! `main`, so nothing outlives it.

mod cli;
mod collect;
mod command;
mod config;
mod control;
mod push;
mod schedule;
mod spool;

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use vigil_schema::job::Collector;
use vigil_schema::proto::AgentMsg;
use vigil_schema::report::Report;

use crate::cli::{Cli, Parsed};
use crate::collect::{CollectOptions, Collectors};
use crate::config::AgentConfig;

/// The control commands ([`control`]), when one is asked for.
fn control_command(cli: &Cli) -> Option<ExitCode> {
    if !cli.sha256.is_empty() {
        return Some(control::exit_code(control::sha256(&cli.sha256).map(|()| true)));
    }
    if let Some(dir) = &cli.unpack {
        return Some(control::exit_code(control::unpack(dir, &mut std::io::stdin().lock()).map(|()| true)));
    }
    if let Some(dir) = &cli.is_running {
        return Some(control::exit_code(control::is_running(dir)));
    }
    if let Some(dir) = &cli.stop {
        #[cfg(unix)]
        return Some(control::exit_code(control::stop(dir).map(|()| true)));
        #[cfg(not(unix))]
        {
            eprintln!("vigil-agent: --stop {}: not available on this OS", dir.display());
            return Some(ExitCode::from(2));
        }
    }
    None
}

/// The log level from `VIGIL_LOG` (error, warn, info, debug, trace; default info). A plain level rather than an
/// env filter keeps the regex engine out of the agent.
fn log_level() -> tracing::Level {
    std::env::var("VIGIL_LOG")
        .ok()
        .and_then(|v| v.rsplit([',', '=']).next().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(tracing::Level::INFO)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(log_level())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(cli)) => cli,
        Ok(Parsed::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("vigil-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vigil-agent: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    if let Some(code) = control_command(&cli) {
        return code;
    }
    if cli.once {
        return once(&cli);
    }
    #[cfg(unix)]
    if cli.session_leader {
        // Fails only for a process group leader, which a freshly spawned child is not.
        let _ = rustix::process::setsid();
    }
    let path = cli.config.clone().unwrap_or_else(|| PathBuf::from("agent.toml"));
    let cfg = match AgentConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil-agent: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.detach {
        return control::exit_code(control::detach(&path, &cfg.dir).map(|()| true));
    }
    // One agent per directory: a second one exits at once.
    let lock_path = cfg.dir.join(control::LOCK);
    let lock = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vigil-agent: cannot open {}: {e}", lock_path.display());
            return ExitCode::from(2);
        }
    };
    // A probe (`vigil-agent --is-running` from bootstrap) may hold the lock for an instant: retry briefly.
    let locked = (0..40).any(|i| {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        lock.try_lock().is_ok()
    });
    if !locked {
        eprintln!("vigil-agent: another agent already runs in {}", cfg.dir.display());
        return ExitCode::from(3);
    }
    let _ = std::fs::write(cfg.dir.join(control::PID), format!("{}\n", std::process::id()));
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(run(cfg));
    drop(lock);
    code
}

async fn run(cfg: AgentConfig) -> ExitCode {
    let spool = match spool::Spool::open(&cfg.spool_dir, cfg.spool_max_bytes, cfg.spool_max_reports) {
        Ok(s) => RefCell::new(s),
        Err(e) => {
            eprintln!("vigil-agent: cannot open the spool {}: {e}", cfg.spool_dir.display());
            return ExitCode::from(2);
        }
    };
    // Before anything is pushed: reports spooled under replaced credentials are re-sealed (or dropped and counted),
    // so none of them can block delivery of new ones.
    match spool.borrow_mut().rekey(&cfg.keys, &cfg.agent_id, &cfg.previous_keys) {
        Ok(r) if r.resealed + r.dropped > 0 => {
            tracing::warn!(resealed = r.resealed, dropped = r.dropped, "spooled reports under replaced credentials")
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "could not re-seal spooled reports under the current credentials"),
    }
    tracing::info!(agent = %cfg.agent_id, server = %cfg.server, spooled = spool.borrow().len(), "starting");
    let collectors =
        Collectors::new(CollectOptions { utmp_path: cfg.utmp.clone(), auth_log_path: cfg.auth_log.clone() });
    let (schedule_tx, schedule_rx) = watch::channel(cfg.load_schedule());
    let produced = Notify::new();
    let cancel = CancellationToken::new();
    let signals = async {
        wait_for_signal().await;
        tracing::info!("stopping");
        cancel.cancel();
    };
    tokio::join!(
        schedule::run(&cfg, collectors, &spool, schedule_rx, &produced, cancel.clone()),
        push::run(&cfg, &spool, &schedule_tx, &produced, cancel.clone()),
        signals,
    );
    ExitCode::SUCCESS
}

/// Waits for SIGTERM or SIGINT.
#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Waits for Ctrl-C, Ctrl-Break, the console closing or the system shutting down.
#[cfg(windows)]
async fn wait_for_signal() {
    use tokio::signal::windows::{ctrl_break, ctrl_close, ctrl_shutdown};
    match (ctrl_break(), ctrl_close(), ctrl_shutdown()) {
        (Ok(mut brk), Ok(mut close), Ok(mut shutdown)) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = brk.recv() => {}
                _ = close.recv() => {}
                _ = shutdown.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn once(cli: &Cli) -> ExitCode {
    let which: Vec<Collector> = if cli.collectors.is_empty() {
        Collector::ALL.to_vec()
    } else {
        let mut v = Vec::new();
        for name in &cli.collectors {
            match Collector::from_name(name) {
                Some(c) => v.push(c),
                None => {
                    eprintln!("vigil-agent: unknown collector {name:?}");
                    return ExitCode::from(2);
                }
            }
        }
        v
    };
    // With --once the config only supplies collector source paths; a named config that cannot be read is reported.
    let paths = cli.config.as_deref().and_then(|p| match AgentConfig::load(p) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("vigil-agent: warning: {e}; collecting from the default sources");
            None
        }
    });
    let mut collectors = Collectors::new(CollectOptions {
        utmp_path: paths.as_ref().and_then(|c| c.utmp.clone()),
        auth_log_path: paths.as_ref().and_then(|c| c.auth_log.clone()),
    });
    let stats = collectors.collect(&which);
    let collected_at_ms = vigil_sys::clock::now_ms();
    let msg = AgentMsg::Report(Report { seq: 1, job: "once".into(), collected_at_ms, dropped: 0, stats });
    if cli.print {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let written =
            serde_json::to_writer_pretty(&mut out, &msg).map_err(std::io::Error::from).and_then(|()| writeln!(out));
        match written {
            // A reader that stops early (`| head`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                eprintln!("vigil-agent: {e}");
                return ExitCode::FAILURE;
            }
            Ok(()) => {}
        }
    }
    ExitCode::SUCCESS
}
