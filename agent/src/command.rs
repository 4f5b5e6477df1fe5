//! Command jobs: runs a job's argv directly (no shell) with a clean environment (PATH, LANG, HOME), in the agent's
//! directory and its own process group, kills the group at the timeout, and captures stdout and stderr up to
//! `max_output` each (the rest is read and discarded, so memory stays bounded whatever the command prints).

use std::path::Path;
#[cfg(unix)]
use std::time::Duration;

#[cfg(unix)]
use vigil_schema::command::clean_output;
use vigil_schema::command::{CommandRun, CommandSpec, RunOutcome, parse_output};

/// Why an agent refuses command jobs when its host has not opted in.
pub const NOT_ALLOWED: &str =
    "command jobs are not allowed on this host (set commands=\"allow\" on its <client> and bootstrap it again)";

/// How long the output of a finished (or killed) command is still read, for processes that left the group and
/// hold its pipes open.
#[cfg(unix)]
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Runs `spec` in `dir` and reports how it went, with output parsed by the spec's parse mode.
pub async fn run(spec: &CommandSpec, dir: &Path) -> CommandRun {
    let started_ms = vigil_sys::clock::now_ms();
    let clock = std::time::Instant::now();
    let mut run = execute(spec, dir).await;
    run.started_ms = started_ms;
    run.duration_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    let parsed = parse_output(spec.parse, &run.stdout);
    run.metrics = parsed.metrics;
    run.parse_errors = parsed.errors;
    run
}

/// A run that did not get as far as a process.
pub fn not_run(outcome: RunOutcome) -> CommandRun {
    CommandRun {
        started_ms: vigil_sys::clock::now_ms(),
        duration_ms: 0,
        outcome,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        metrics: Vec::new(),
        parse_errors: Vec::new(),
    }
}

#[cfg(not(unix))]
async fn execute(_spec: &CommandSpec, _dir: &Path) -> CommandRun {
    not_run(RunOutcome::Refused { reason: "command jobs are not supported on Windows yet".into() })
}

/// Kills the whole process group when dropped (also when the agent stops while a command runs).
#[cfg(unix)]
struct Group(Option<rustix::process::Pid>);

#[cfg(unix)]
impl Group {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            // ESRCH (the group is gone already) is the expected case after a clean exit.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(unix)]
impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What was read of one stream: at most `max` bytes, and whether there was more.
#[cfg(unix)]
async fn read_capped(
    stream: Option<impl tokio::io::AsyncRead + Unpin>,
    max: usize,
    stop: tokio_util::sync::CancellationToken,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let Some(mut stream) = stream else { return (Vec::new(), false) };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => break,
            n = stream.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        truncated |= n > room;
    }
    (kept, truncated)
}

#[cfg(unix)]
async fn execute(spec: &CommandSpec, dir: &Path) -> CommandRun {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let Some((program, args)) = spec.argv.split_first() else {
        return not_run(RunOutcome::FailedToStart { error: "empty command".into() });
    };
    let env = |key: &str, default: &str| std::env::var(key).unwrap_or_else(|_| default.to_string());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
        .env("LANG", env("LANG", "C.UTF-8"))
        .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| dir.as_os_str().to_owned()))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let error = clean_output(e.to_string().as_bytes(), 400);
            return not_run(RunOutcome::FailedToStart { error });
        }
    };
    // The child leads its own group: its pid is the group id.
    let mut group = Group(child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)));
    let max = spec.max_output as usize;
    let stop = tokio_util::sync::CancellationToken::new();
    let out = tokio::spawn(read_capped(child.stdout.take(), max, stop.clone()));
    let err = tokio::spawn(read_capped(child.stderr.take(), max, stop.clone()));
    let timeout = Duration::from_secs(u64::from(spec.timeout_s));
    let status = tokio::time::timeout(timeout, child.wait()).await;
    // Whatever the leader did, nothing it started outlives the run.
    group.kill();
    let outcome = match status {
        Err(_elapsed) => {
            let _ = child.wait().await;
            RunOutcome::TimedOut
        }
        Ok(Ok(s)) => match (s.code(), s.signal()) {
            (Some(code), _) => RunOutcome::Exited { code },
            (None, Some(signal)) => RunOutcome::Signaled { signal },
            (None, None) => RunOutcome::Exited { code: -1 },
        },
        Ok(Err(e)) => RunOutcome::FailedToStart { error: clean_output(e.to_string().as_bytes(), 400) },
    };
    let (mut out, mut err) = (out, err);
    let drained = tokio::time::timeout(DRAIN_GRACE, async { ((&mut out).await, (&mut err).await) }).await;
    let (out, err) = match drained {
        Ok((o, e)) => (o.unwrap_or_default(), e.unwrap_or_default()),
        Err(_) => {
            // Processes that left the group hold the pipes open: cancelled readers return at once with what they
            // kept.
            stop.cancel();
            (out.await.unwrap_or_default(), err.await.unwrap_or_default())
        }
    };
    CommandRun {
        started_ms: 0,
        duration_ms: 0,
        outcome,
        stdout: clean_output(&out.0, max),
        stderr: clean_output(&err.0, max),
        stdout_truncated: out.1,
        stderr_truncated: err.1,
        metrics: Vec::new(),
        parse_errors: Vec::new(),
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use vigil_schema::command::ParseMode;

    fn spec(argv: &[&str], timeout_s: u32, max_output: u32) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_s,
            max_output,
            parse: ParseMode::Text,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn output_status_environment_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let r = block_on(run(
            &spec(&["/bin/sh", "-c", "echo 42; pwd; env | sort; echo oops >&2; exit 3"], 10, 4096),
            dir.path(),
        ));
        assert_eq!(r.outcome, RunOutcome::Exited { code: 3 });
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines[0], "42");
        assert_eq!(Path::new(lines[1]).canonicalize().unwrap(), dir.path().canonicalize().unwrap());
        let vars: Vec<&str> = lines[2..].iter().map(|l| l.split('=').next().unwrap()).collect();
        assert!(vars.iter().all(|v| ["HOME", "LANG", "PATH", "PWD", "SHLVL", "_"].contains(v)), "{vars:?}");
        assert_eq!(r.stderr, "oops\n");
        assert!(!r.stdout_truncated);
    }

    #[test]
    fn output_past_the_cap_is_cut_and_marked() {
        let dir = tempfile::tempdir().unwrap();
        let r =
            block_on(run(&spec(&["/bin/sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"], 10, 1000), dir.path()));
        assert_eq!(r.outcome, RunOutcome::Exited { code: 0 });
        assert_eq!(r.stdout.len(), 1000);
        assert!(r.stdout_truncated && !r.stderr_truncated);
    }

    #[test]
    fn a_missing_program_fails_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let r = block_on(run(&spec(&["/nonexistent/prog"], 10, 100), dir.path()));
        assert!(matches!(r.outcome, RunOutcome::FailedToStart { .. }), "{:?}", r.outcome);
    }

    /// Live (not zombie) processes whose argv is exactly `argv`.
    fn live(argv: &[&str]) -> usize {
        let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| *c == want)
            .count()
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let script = "sleep 300.4711 & sleep 300.4711";
        let r = block_on(run(&spec(&["/bin/sh", "-c", script], 1, 100), dir.path()));
        assert_eq!(r.outcome, RunOutcome::TimedOut);
        assert!(r.duration_ms < 60_000, "the run ended at the timeout, not with the sleeps");
        // SIGKILL is delivered before kill() returns; give the kernel a moment to tear the processes down.
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            live(&["sleep", "300.4711"]) == 0
        });
        assert!(gone, "a process of the timed-out job is still alive");
    }
}
