//! The printing half of each `vigil` command, one file per command: main.rs parses and dispatches here.
//!
//! Everything goes to stdout through [`Out`], whose writes fail instead of panicking: when the reader of a pipe
//! goes away (`vigil status | head -1`), the command stops quietly (see [`is_broken_pipe`]).

pub mod alerts;
pub mod bootstrap;
pub mod check;
pub mod export;
pub mod runs;
pub mod serve;
pub mod status;

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use vigil_server::config::{Config, Overrides};

/// The two config files every command reads, and the data directory when it is not jobs.toml's.
#[derive(Debug, Args)]
pub struct Files {
    /// The fleet: hosts, logins, alert limits.
    #[arg(long, global = true, env = "VIGIL_CLIENTS", default_value = "clients.xml")]
    pub clients: PathBuf,
    /// What to collect, how often, and the server's settings.
    #[arg(long, global = true, env = "VIGIL_JOBS", default_value = "jobs.toml")]
    pub jobs: PathBuf,
    /// Use this data directory (host key, SQLite database) instead of jobs.toml's `[server] data_dir`: one node's
    /// when several share the config files.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl Files {
    /// What the command line sets over jobs.toml for every command: `--data-dir`.
    pub fn overrides(&self) -> Overrides {
        Overrides { data_dir: self.data_dir.clone(), ..Overrides::default() }
    }

    /// Loads and validates both files, `--data-dir` applied; warnings go to stderr.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut loaded = Config::load(&self.clients, &self.jobs)?;
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        self.overrides().apply(&mut loaded.config);
        Ok(loaded.config)
    }

    /// The config for views that must work while the files on disk are invalid: the valid files, else the config
    /// `vigil serve` last applied (with the load error, to show), else the load error. While an edit of `[server]
    /// database` waits for serve's restart, the database is the one in use (that of the config serve applied).
    pub fn load_for_view(&self) -> anyhow::Result<(Config, Option<String>)> {
        let overrides = self.overrides();
        let running = vigil_server::reload::last_good(&self.clients, &self.jobs, &overrides);
        match Config::load(&self.clients, &self.jobs) {
            Ok(l) => {
                let mut config = l.config;
                overrides.apply(&mut config);
                if let Some(running) = running
                    && (running.server.database != config.server.database
                        || running.server.postgres != config.server.postgres)
                    && (running.server.postgres.is_some() || running.server.database.exists())
                {
                    config.server.database = running.server.database;
                    config.server.postgres = running.server.postgres;
                }
                Ok((config, None))
            }
            Err(e) => match running {
                Some(c) => Ok((c, Some(e.to_string()))),
                None => Err(e.into()),
            },
        }
    }
}

/// Standard output, locked, with writes that return errors (a closed pipe) instead of panicking like `println!`.
#[derive(Debug)]
pub struct Out(std::io::StdoutLock<'static>);

impl Out {
    pub fn new() -> Self {
        Self(std::io::stdout().lock())
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Whether `e` comes from writing to a pipe whose reader has gone: the command then exits quietly.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// A multi-threaded runtime for the commands that need one.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}
