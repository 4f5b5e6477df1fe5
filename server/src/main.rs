//! `vigil`: the operator's command. Parses arguments, sets up logging, and maps errors to exit codes; the work is
//! in the `vigil_server` library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vigil_server::config::{Config, ConfigError};
use vigil_server::store::Store;

/// vigil: fleet monitoring over SSH.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    files: Files,
    #[command(subcommand)]
    command: Command,
}

/// The two config files every command reads.
#[derive(Debug, Args)]
struct Files {
    /// The fleet: hosts, logins, alert limits.
    #[arg(long, global = true, default_value = "clients.xml")]
    clients: PathBuf,
    /// What to collect, how often, and the server's settings.
    #[arg(long, global = true, default_value = "jobs.toml")]
    jobs: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate clients.xml and jobs.toml without side effects.
    Check {
        /// Print each host's resolved schedule.
        #[arg(short, long)]
        verbose: bool,
        /// Then send a test mail to ADDRESS through the `[smtp]` server of jobs.toml.
        #[arg(long, value_name = "ADDRESS")]
        test_mail: Option<String>,
    },
    /// Run the server: SSH endpoint, ingest, live reload, local agents.
    Serve,
    /// One row per host: last report, latest figures, silence, pending config errors.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Install (or repair, or upgrade) the agent on hosts.
    Bootstrap {
        /// Host names from clients.xml.
        hosts: Vec<String>,
        /// Every host in clients.xml.
        #[arg(long)]
        all: bool,
        /// Show what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Accept (and record) a host key never seen before. A changed key is always refused.
        #[arg(long)]
        accept_new_host_key: bool,
        /// Hosts bootstrapped at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
    /// Stop and remove the agent from hosts, and forget its registration.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["hosts", "all"]))]
    Uninstall {
        /// Host names from clients.xml.
        hosts: Vec<String>,
        /// Every host in clients.xml.
        #[arg(long)]
        all: bool,
        /// Accept (and record) a host key never seen before.
        #[arg(long)]
        accept_new_host_key: bool,
    },
    /// Mint credentials for a host's agent and write its files (agent.toml, key, schedule) into a directory,
    /// without installing or starting anything: for manual installs and tests.
    Enroll {
        host: String,
        /// Directory to write into (created 0700).
        #[arg(long)]
        dir: PathBuf,
        /// Collector source overrides written into agent.toml.
        #[arg(long)]
        utmp: Option<String>,
        #[arg(long)]
        auth_log: Option<String>,
    },
    /// Print the server's SSH host-key fingerprint (created on first use).
    HostKey,
    /// The alert history: transitions, security reports, and what became of their mail.
    Alerts {
        /// Only events this recent: 90s, 15m, 2h, 7d, 1w (default: all).
        #[arg(long)]
        since: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| "info,russh=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let files = &cli.files;
    match cli.command {
        Command::Check { verbose, test_mail: None } => Ok(check(files, verbose)),
        Command::Check { verbose, test_mail: Some(to) } => check_and_mail(files, verbose, &to),
        Command::Serve => serve(files),
        Command::Status { json } => status(files, json),
        Command::Bootstrap { hosts, all, dry_run, accept_new_host_key, parallel } => {
            bootstrap(files, &hosts, all, dry_run, accept_new_host_key, parallel)
        }
        Command::Uninstall { hosts, all, accept_new_host_key } => uninstall(files, &hosts, all, accept_new_host_key),
        Command::Enroll { host, dir, utmp, auth_log } => enroll(files, &host, &dir, utmp, auth_log),
        Command::HostKey => {
            let config = load(files)?;
            println!("{}", vigil_server::keys::host_key_fingerprint(&config.server.data_dir)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Alerts { since, json } => alerts(files, since.as_deref(), json),
    }
}

fn load(files: &Files) -> anyhow::Result<Config> {
    let loaded = Config::load(&files.clients, &files.jobs)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded.config)
}

fn check(files: &Files, verbose: bool) -> ExitCode {
    match Config::load(&files.clients, &files.jobs) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
            let c = &loaded.config;
            println!(
                "ok: {} host(s) in {}, {} job(s) in {}",
                c.clients.len(),
                files.clients.display(),
                c.jobs.len(),
                files.jobs.display()
            );
            if verbose {
                for h in &c.clients {
                    let s = c.schedule_for(&h.name);
                    println!("{} ({}, {:?}) schedule {}", h.name, h.ip, h.transport, &s.hash()[..12]);
                    for j in &s.jobs {
                        let names: Vec<&str> = j.collectors.iter().map(|c| c.name()).collect();
                        println!(
                            "  {:<12} every {:>5}s jitter {:>3}s: {}",
                            j.name,
                            j.interval_s,
                            j.jitter_s,
                            names.join(", ")
                        );
                    }
                    for a in &h.alerts {
                        println!(
                            "  alert {:?} limit {}{}",
                            a.kind,
                            a.limit,
                            a.mount.as_deref().map(|m| format!(" on {m}")).unwrap_or_default()
                        );
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(diags)) => {
            for d in &diags {
                println!("error: {d}");
            }
            println!("{} error(s); nothing applied", diags.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(files: &Files) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = {
            let shutdown = shutdown.clone();
            async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
                else {
                    return std::future::pending().await;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                shutdown.cancel();
            }
        };
        let opts = vigil_server::serve::ServeOptions {
            clients: files.clients.clone(),
            jobs: files.jobs.clone(),
            limits: Default::default(),
            start_local_agents: true,
        };
        // The signal handler only cancels; `run` then shuts down in order (endpoint, in-flight acks, ingest).
        let signal_task = tokio::spawn(signals);
        let result = vigil_server::serve::run(opts, shutdown).await;
        signal_task.abort();
        result?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

fn status(files: &Files, json: bool) -> anyhow::Result<ExitCode> {
    // The view must come up while the files on disk are invalid: then it uses the config serve last applied, and
    // the error (recorded by serve, or found now) is shown with the hosts.
    let (config, load_error) = match Config::load(&files.clients, &files.jobs) {
        Ok(l) => (l.config, None),
        Err(e) => match vigil_server::reload::last_good(&files.clients, &files.jobs) {
            Some(c) => (c, Some(e.to_string())),
            None => return Err(e.into()),
        },
    };
    let store = Store::open_readonly(&config.server.database)?;
    let hosts: Vec<(String, String, Option<u32>)> = config
        .clients
        .iter()
        .map(|h| (h.name.clone(), h.ip.clone(), config.schedule_for(&h.name).min_interval_s()))
        .collect();
    let rows = vigil_server::status::collect(&store, &hosts, vigil_server::store::now_ms())?;
    let err = vigil_server::status::config_error(&store)?.or(load_error);
    if json {
        println!("{}", vigil_server::status::render_json(&rows, err.as_deref())?);
    } else {
        print!("{}", vigil_server::status::render_table(&rows, err.as_deref()));
    }
    Ok(ExitCode::SUCCESS)
}

fn bootstrap(
    files: &Files,
    names: &[String],
    all: bool,
    dry_run: bool,
    accept_new: bool,
    parallel: usize,
) -> anyhow::Result<ExitCode> {
    if names.is_empty() && !all {
        anyhow::bail!("name hosts from clients.xml, or pass --all");
    }
    let config = load(files)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let outcome = rt.block_on(vigil_server::bootstrap::bootstrap(config, names, all, dry_run, accept_new, parallel))?;
    print!("{outcome}");
    Ok(if outcome.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn uninstall(files: &Files, names: &[String], all: bool, accept_new: bool) -> anyhow::Result<ExitCode> {
    let config = load(files)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let results = rt.block_on(vigil_server::bootstrap::uninstall(config, names, all, accept_new))?;
    for (host, r) in &results {
        match r {
            Ok(()) => println!("ok     {host}: agent stopped, removed, registration forgotten"),
            Err(e) => println!("FAILED {host}: {e}"),
        }
    }
    Ok(if results.iter().all(|(_, r)| r.is_ok()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn enroll(
    files: &Files,
    name: &str,
    dir: &std::path::Path,
    utmp: Option<String>,
    auth_log: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = load(files)?;
    let collect = vigil_schema::agent_config::CollectPaths { utmp, auth_log };
    println!("{}", vigil_server::bootstrap::enroll(&config, name, dir, collect)?);
    Ok(ExitCode::SUCCESS)
}

/// `vigil check --test-mail ADDRESS`: the check, then a test mail through the configured SMTP server.
fn check_and_mail(files: &Files, verbose: bool, to: &str) -> anyhow::Result<ExitCode> {
    let code = check(files, verbose);
    let Ok(loaded) = Config::load(&files.clients, &files.jobs) else {
        return Ok(code);
    };
    let smtp = loaded.config.smtp.context("jobs.toml has no [smtp]: there is no server to send a test mail through")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(vigil_server::mail::send_test(&smtp, to))
        .with_context(|| format!("test mail to {to} through {}:{}", smtp.host, smtp.port))?;
    println!("test mail sent to {to} through {}:{}", smtp.host, smtp.port);
    Ok(code)
}

/// `vigil alerts [--since D] [--json]`: the alert history from the database.
fn alerts(files: &Files, since: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&files.clients, &files.jobs) {
        Ok(l) => l.config,
        Err(e) => vigil_server::reload::last_good(&files.clients, &files.jobs).ok_or(e)?,
    };
    let since_ms = match since {
        None => 0,
        Some(s) => {
            let back = vigil_server::alert::history::parse_since(s)
                .with_context(|| format!("--since {s:?}: expected a duration such as 90s, 15m, 2h, 7d"))?;
            vigil_server::store::now_ms().saturating_sub(back)
        }
    };
    let store = Store::open_readonly(&config.server.database)?;
    let events = store.alert_events_since(since_ms)?;
    let outbox = store.outbox_counts()?;
    if json {
        println!("{}", vigil_server::alert::history::render_json(&events, outbox)?);
    } else {
        print!("{}", vigil_server::alert::history::render_table(&events, outbox));
    }
    Ok(ExitCode::SUCCESS)
}
