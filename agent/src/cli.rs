//! The agent's command line, parsed with `lexopt` (clap cost the shipped binary ~200 kB; the agent is uploaded to
//! every host, and its static x86-64 build must stay within 2.5 MB).

use std::ffi::OsString;
use std::path::PathBuf;

/// What `--help` prints.
pub const USAGE: &str = "\
vigil's agent: collects system statistics and pushes them, sealed, to the server.

Usage: vigil-agent [OPTIONS]

Options:
      --config <FILE>          The agent's config, written by `vigil bootstrap` (default: agent.toml; optional
                               with --once)
      --once                   Collect once and exit (with --print: show the JSON that would be sealed and sent)
      --print                  With --once: print the report
      --collectors <NAMES>     With --once: only these collectors (comma-separated names); default all
      --detach                 Start detached (own session, output appended to agent.log beside the config);
                               return once the agent runs
      --sha256 <FILE>...       Print the sha256 of each file (like sha256sum) and exit
      --is-running <DIR>       Exit 0 if an agent holds DIR/agent.lock, 1 if not
      --unpack <DIR>           Stage the parts streamed on stdin into DIR as .new.* files, each checked by its
                               sha256 (for bootstrap)
      --stop <DIR>             Stop the agent of DIR (its verified pid only) and exit
  -h, --help                   Print help
  -V, --version                Print version
";

/// The parsed command line.
#[derive(Debug, Default, PartialEq)]
pub struct Cli {
    pub config: Option<PathBuf>,
    pub once: bool,
    pub print: bool,
    pub collectors: Vec<String>,
    pub detach: bool,
    /// Set by --detach for the agent it starts: call setsid() first (not in `--help`).
    pub session_leader: bool,
    pub sha256: Vec<PathBuf>,
    pub is_running: Option<PathBuf>,
    pub unpack: Option<PathBuf>,
    pub stop: Option<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Run(Cli),
    Help,
    Version,
}

/// Parses `args` (without the program name).
pub fn parse(args: impl IntoIterator<Item = impl Into<OsString>>) -> Result<Parsed, lexopt::Error> {
    use lexopt::prelude::*;
    let mut cli = Cli::default();
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next()? {
        match arg {
            Long("config") => cli.config = Some(p.value()?.into()),
            Long("once") => cli.once = true,
            Long("print") => cli.print = true,
            Long("collectors") => {
                let v = p.value()?.string()?;
                cli.collectors.extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_owned));
            }
            Long("detach") => cli.detach = true,
            Long("session-leader") => cli.session_leader = true,
            Long("sha256") => {
                cli.sha256.push(p.value()?.into());
                cli.sha256.extend(p.values().into_iter().flatten().map(PathBuf::from));
            }
            Long("is-running") => cli.is_running = Some(p.value()?.into()),
            Long("unpack") => cli.unpack = Some(p.value()?.into()),
            Long("stop") => cli.stop = Some(p.value()?.into()),
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Short('V') | Long("version") => return Ok(Parsed::Version),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Parsed::Run(cli))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Cli {
        match parse(args.iter().copied()) {
            Ok(Parsed::Run(c)) => c,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn every_option_parses_and_mistakes_are_errors() {
        let c =
            run(&["--config", "/d/agent.toml", "--once", "--print", "--collectors", "cpu,memory", "--collectors=swap"]);
        assert_eq!(c.config, Some(PathBuf::from("/d/agent.toml")));
        assert!(c.once && c.print && !c.detach);
        assert_eq!(c.collectors, ["cpu", "memory", "swap"]);
        let c = run(&["--sha256", "/a", "/b c", "--stop", "/d"]);
        assert_eq!(c.sha256, [PathBuf::from("/a"), PathBuf::from("/b c")]);
        assert_eq!(c.stop, Some(PathBuf::from("/d")));
        let c = run(&["--is-running", "/d", "--unpack", "/e", "--detach", "--session-leader"]);
        assert_eq!((c.is_running, c.unpack), (Some(PathBuf::from("/d")), Some(PathBuf::from("/e"))));
        assert!(c.detach && c.session_leader);
        assert_eq!(run(&[]), Cli::default());
        assert_eq!(parse(["--help"]).unwrap(), Parsed::Help);
        assert_eq!(parse(["-V"]).unwrap(), Parsed::Version);
        for bad in [&["--bogus"][..], &["--config"], &["--sha256"], &["extra"], &["--once=yes"]] {
            assert!(parse(bad.iter().copied()).is_err(), "{bad:?}");
        }
    }
}
