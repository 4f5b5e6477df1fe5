//! `vigil`: the operator's command. Parses arguments (clap validates what it can), sets up logging, dispatches to
//! the command's file in `cli/`, and maps errors to exit codes; the work is in the `vigil_server` library.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser, Subcommand};
use cli::Files;
use tracing_subscriber::EnvFilter;

/// vigil: fleet monitoring over SSH.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    files: Files,
    #[command(subcommand)]
    command: Command,
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
    Serve(cli::serve::ServeArgs),
    /// One row per host: last report, latest figures, silence, pending config errors.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Install (or repair, or upgrade) the agent on hosts.
    #[command(group(ArgGroup::new("targets").args(["hosts", "all"]).required(true)))]
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
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
        parallel: u16,
    },
    /// Stop and remove the agent from hosts, and forget its registration.
    #[command(group(ArgGroup::new("which").args(["hosts", "all"]).required(true)))]
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
        #[arg(long, value_parser = cli::alerts::parse_since)]
        since: Option<i64>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Command job runs, newest first.
    Runs {
        /// Only this host's runs.
        #[arg(long)]
        host: Option<String>,
        /// Only this job's runs.
        #[arg(long)]
        job: Option<String>,
        /// Only runs this recent: 90s, 15m, 2h, 1d, 1w (default: all).
        #[arg(long, value_parser = cli::alerts::parse_since)]
        since: Option<i64>,
        /// At most this many runs.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Show each run's stdout, stderr and parsed values (the JSON form always has them).
        #[arg(long)]
        output: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stored samples to stdout, oldest first.
    Export {
        /// Samples this recent: 90s, 15m, 2h, 7d, 1w.
        #[arg(long, value_parser = cli::alerts::parse_since)]
        since: i64,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Only this family (cpu, memory, swap, disk_usage, network, partitions, system, sessions,
        /// security_events); all of them when absent (jsonl only).
        #[arg(long, value_parser = cli::export::parse_family)]
        family: Option<String>,
        #[arg(long, value_enum)]
        format: cli::export::Format,
    },
}

/// The log filter when `VIGIL_LOG` does not say otherwise.
const DEFAULT_LOG: &str = "info,russh=warn";
/// Added to every filter that does not name refinery.
const QUIET_REFINERY: &str = "refinery_core=warn";

/// Exit code when stdout's reader went away (as a shell reports a process killed by SIGPIPE).
const BROKEN_PIPE: u8 = 141;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // refinery's own lines ("no migrations to apply") stay out unless VIGIL_LOG asks for them; the store logs a
    // migration when it applies one.
    let env = std::env::var("VIGIL_LOG").ok();
    let mut filter = env.as_deref().map_or_else(
        || EnvFilter::new(DEFAULT_LOG),
        |v| EnvFilter::try_new(v).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
    );
    if !env.is_some_and(|v| v.contains("refinery"))
        && let Ok(quiet) = QUIET_REFINERY.parse()
    {
        filter = filter.add_directive(quiet);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::from(BROKEN_PIPE),
        Err(e) => {
            eprintln!("vigil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let files = &cli.files;
    match cli.command {
        Command::Check { verbose, test_mail } => cli::check::run(files, verbose, test_mail.as_deref()),
        Command::Serve(args) => cli::serve::run(files, args),
        Command::Status { json } => cli::status::run(files, json),
        Command::Bootstrap { hosts, all, dry_run, accept_new_host_key, parallel } => {
            let parallel = usize::from(parallel);
            let args = cli::bootstrap::BootstrapArgs { hosts: &hosts, all, dry_run, accept_new_host_key, parallel };
            cli::bootstrap::bootstrap(files, args)
        }
        Command::Uninstall { hosts, all, accept_new_host_key } => {
            cli::bootstrap::uninstall(files, &hosts, all, accept_new_host_key)
        }
        Command::Enroll { host, dir, utmp, auth_log } => {
            cli::bootstrap::enroll(files, cli::bootstrap::EnrollArgs { host: &host, dir: &dir, utmp, auth_log })
        }
        Command::HostKey => cli::bootstrap::host_key(files),
        Command::Alerts { since, json } => cli::alerts::run(files, since, json),
        Command::Runs { host, job, since, limit, output, json } => {
            cli::runs::run(files, cli::runs::RunsArgs { host, job, since_ms_back: since, limit, output, json })
        }
        Command::Export { since, host, family, format } => {
            cli::export::run(files, since, host.as_deref(), family.as_deref(), format)
        }
    }
}
