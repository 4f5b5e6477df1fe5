//! Control of an installed agent by its own binary, so a host needs no util-linux or coreutils beyond `cat`, `mkdir`,
//! `chmod`, `mv`, `rm` and `uname`: `--sha256` (hash files), `--is-running` (try the lock), `--stop` (signal only
//! this directory's verified agent), and `--detach` (start in a session of its own, logging to `agent.log`, and
//! return once the agent holds its lock). `vigil bootstrap` calls these on the host.

// `--stop` (pid verification, signals) is Unix-only; on Windows the Scheduled Task stops the agent.
#![cfg_attr(not(unix), allow(dead_code, unused_variables))]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The agent's lock file in its directory.
pub const LOCK: &str = "agent.lock";
/// The running agent's pid, written after it takes the lock.
pub const PID: &str = "agent.pid";
/// The binary's name in its directory.
pub const BINARY: &str = "vigil-agent";
/// Where a detached agent's stdout and stderr go.
pub const LOG: &str = "agent.log";

/// How long `--detach` waits for the agent to take its lock.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `--stop` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a control command refused or failed; each message is for the operator (bootstrap shows it).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{dir} is a symlink or not this user's directory: nothing signalled")]
    NotPrivate { dir: PathBuf },
    #[error("{dir}: {why}; nothing signalled")]
    Unverified { dir: PathBuf, why: String },
    #[error("unpacking into {dir}: {why}")]
    Unpack { dir: PathBuf, why: String },
    #[error("the agent did not start ({why}); last lines of {log}:\n{tail}")]
    NotStarted { why: String, log: PathBuf, tail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
    move |cause| ControlError::Io { path: path.to_owned(), cause }
}

/// Prints `<sha256 hex>  <path>` for each file, like `sha256sum`.
pub fn sha256(files: &[PathBuf]) -> Result<(), ControlError> {
    for path in files {
        println!("{}  {}", file_sha256(path)?, path.display());
    }
    Ok(())
}

/// A file's sha256, lowercase hex.
fn file_sha256(path: &Path) -> Result<String, ControlError> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Prefix of a staged file, as bootstrap names them.
const STAGED: &str = ".new.";

/// Stages the parts bootstrap streams on `input` into `dir` as `.new.<name>`: per part a line
/// `NAME MODE LEN SHA256` and LEN bytes, or `NAME MODE - SHA256` for a part already staged (only checked). Every
/// part's sha256 must match. On failure the files written here are removed and the rest of `input` is drained.
pub fn unpack(dir: &Path, input: &mut impl std::io::BufRead) -> Result<(), ControlError> {
    #[cfg(unix)]
    check_private(dir)?;
    let mut written = Vec::new();
    let result = unpack_parts(dir, input, &mut written);
    if result.is_err() {
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
        let _ = std::io::copy(input, &mut std::io::sink());
    }
    result
}

fn unpack_parts(dir: &Path, input: &mut impl std::io::BufRead, written: &mut Vec<PathBuf>) -> Result<(), ControlError> {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let bad = |why: String| ControlError::Unpack { dir: dir.to_owned(), why };
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line).map_err(|e| bad(e.to_string()))? == 0 {
            return Ok(());
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, mode, len, sha] = fields[..] else { return Err(bad(format!("bad header {:?}", line.trim()))) };
        let safe = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if name.is_empty() || name.len() > 64 || name.starts_with('.') || !name.chars().all(safe) {
            return Err(bad(format!("bad part name {name:?}")));
        }
        let mode =
            u32::from_str_radix(mode, 8).ok().filter(|m| *m <= 0o777).ok_or_else(|| bad(format!("mode {mode}")))?;
        let path = dir.join(format!("{STAGED}{name}"));
        let got = if len == "-" {
            file_sha256(&path)?
        } else {
            let len: u64 = len.parse().map_err(|_| bad(format!("bad length {len:?}")))?;
            let _ = std::fs::remove_file(&path);
            let mut options = std::fs::File::options();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
            let mut file = options.open(&path).map_err(io(&path))?;
            written.push(path.clone());
            let mut hasher = Sha256::new();
            let mut part = input.take(len);
            let mut buf = vec![0u8; 64 * 1024];
            let mut copied = 0u64;
            loop {
                let n = std::io::Read::read(&mut part, &mut buf).map_err(|e| bad(e.to_string()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).map_err(io(&path))?;
                copied += n as u64;
            }
            if copied != len {
                return Err(bad(format!("{name}: cut short at {copied} of {len} bytes")));
            }
            file.sync_all().map_err(io(&path))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io(&path))?;
            }
            hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
        };
        if got != sha {
            return Err(bad(format!("{name} differs from what was sent")));
        }
    }
}

/// Whether an agent holds `dir/agent.lock` (an absent lock file: no agent ran there).
pub fn is_running(dir: &Path) -> Result<bool, ControlError> {
    let path = dir.join(LOCK);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ControlError::Io { path, cause: e }),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(cause)) => Err(ControlError::Io { path, cause }),
    }
}

#[cfg(unix)]
fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuses a directory that is a symlink or belongs to another user.
#[cfg(unix)]
fn check_private(dir: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() || m.uid() != my_uid() => {
            Err(ControlError::NotPrivate { dir: dir.to_owned() })
        }
        Ok(_) => Ok(()),
        Err(e) => Err(ControlError::Io { path: dir.to_owned(), cause: e }),
    }
}

/// The agent's pid from `agent.pid`, only when verified: a positive integer whose `/proc/PID/exe` is `vigil-agent`
/// of `dir` (possibly replaced or deleted since it started) and which runs as this user.
#[cfg(unix)]
pub fn verified_pid(dir: &Path) -> Result<rustix::process::Pid, ControlError> {
    use std::os::unix::fs::MetadataExt;
    let unverified = |why: String| ControlError::Unverified { dir: dir.to_owned(), why };
    let text = std::fs::read_to_string(dir.join(PID)).map_err(|e| unverified(format!("{PID}: {e}")))?;
    let raw: i32 = text.trim().parse().map_err(|_| unverified(format!("{PID} holds {:?}, not a pid", text.trim())))?;
    let pid = (raw > 0)
        .then(|| rustix::process::Pid::from_raw(raw))
        .flatten()
        .ok_or_else(|| unverified(format!("{PID} holds {raw}, not a process id")))?;
    let proc_dir = PathBuf::from(format!("/proc/{raw}"));
    let exe = std::fs::read_link(proc_dir.join("exe")).unwrap_or_default();
    let want = std::fs::canonicalize(dir).map_err(io(dir))?.join(BINARY);
    let mut deleted = want.clone().into_os_string();
    deleted.push(" (deleted)");
    let owner = std::fs::metadata(&proc_dir).map(|m| m.uid()).ok();
    if (exe != want && exe.as_os_str() != deleted) || owner != Some(my_uid()) {
        return Err(unverified(format!("process {raw} is not the agent of this directory")));
    }
    Ok(pid)
}

/// Stops the agent of `dir` if one runs: SIGTERM, then SIGKILL after 5 s. Only a verified pid ([`verified_pid`]) in a
/// private directory is signalled; otherwise this fails and signals nothing.
#[cfg(unix)]
pub fn stop(dir: &Path) -> Result<(), ControlError> {
    use rustix::process::{Signal, kill_process};
    if std::fs::symlink_metadata(dir).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Ok(());
    }
    check_private(dir)?;
    if !is_running(dir)? {
        return Ok(());
    }
    let pid = verified_pid(dir)?;
    let _ = kill_process(pid, Signal::TERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if !is_running(dir)? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill_process(pid, Signal::KILL);
    for _ in 0..50 {
        if !is_running(dir)? {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Starts this binary again as the agent for `config` (which must load: checked by the caller), detached: a session
/// of its own (`--session-leader` makes the child call setsid), stdin from /dev/null, stdout and stderr appended to
/// `agent.log` beside the config. Returns once the agent holds its lock; fails with the log's tail if it exits or
/// does not take the lock in time. The child is not waited for: it outlives this process and is adopted by init.
pub fn detach(config: &Path, dir: &Path) -> Result<(), ControlError> {
    let log_path = dir.join(LOG);
    let log = std::fs::File::options().create(true).append(true).open(&log_path).map_err(io(&log_path))?;
    let log2 = log.try_clone().map_err(io(&log_path))?;
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let mut child = Command::new(&exe)
        .arg("--session-leader")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(io(&exe))?;
    let not_started = |why: String| ControlError::NotStarted { why, tail: tail(&log_path, 5), log: log_path.clone() };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if is_running(dir)? {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(not_started(format!("it exited with {status}")));
        }
        if Instant::now() > deadline {
            return Err(not_started(format!("no lock within {} s", START_TIMEOUT.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of a file (empty when unreadable).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs one control command, mapping the outcome to an exit code: 0 done (or running, for `--is-running`), 1 not
/// running, 2 failed.
pub fn exit_code(result: Result<bool, ControlError>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vigil-agent: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    /// A process holding `dir/agent.lock`, run from `exe` (a copy of `flock` renamed as the test needs).
    fn lock_holder(exe: &Path, dir: &Path) -> std::process::Child {
        let c = Command::new(exe).arg("-o").arg(dir.join(LOCK)).args(["sleep", "30"]).spawn().unwrap();
        for _ in 0..250 {
            if is_running(dir).unwrap() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    #[test]
    fn the_lock_tells_whether_an_agent_runs() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!is_running(tmp.path()).unwrap(), "no lock file");
        std::fs::write(tmp.path().join(LOCK), "").unwrap();
        assert!(!is_running(tmp.path()).unwrap(), "a free lock");
        let mut holder = lock_holder(Path::new("/usr/bin/flock"), tmp.path());
        assert!(is_running(tmp.path()).unwrap());
        let _ = holder.kill();
        let _ = holder.wait();
        assert!(!is_running(tmp.path()).unwrap());
    }

    #[test]
    fn stop_signals_nothing_it_has_not_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let mut victim = Command::new("sleep").arg("30").spawn().unwrap();
        let dir = tmp.path().join("vigil-agent-foreign");
        std::fs::create_dir(&dir).unwrap();
        let mut holder = lock_holder(Path::new("/usr/bin/flock"), &dir);
        for pid in [victim.id().to_string(), holder.id().to_string(), "-1".into(), "0".into(), "1 2".into(), "".into()]
        {
            std::fs::write(dir.join(PID), &pid).unwrap();
            let e = stop(&dir).unwrap_err();
            assert!(matches!(e, ControlError::Unverified { .. }), "{pid:?}: {e}");
            assert!(victim.try_wait().unwrap().is_none() && holder.try_wait().unwrap().is_none(), "{pid:?}");
        }
        let _ = holder.kill();
        let _ = holder.wait();
        // A symlink in the directory's place: refused before anything is read behind it.
        let link = tmp.path().join("vigil-agent-link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(stop(&link), Err(ControlError::NotPrivate { .. })));
        // No directory at all: nothing runs, nothing to do.
        assert!(stop(&tmp.path().join("absent")).is_ok());
        // The directory's own agent (a copy of flock named vigil-agent, holding the lock): stopped.
        let own = tmp.path().join("vigil-agent-own");
        std::fs::create_dir(&own).unwrap();
        std::fs::copy("/usr/bin/flock", own.join(BINARY)).unwrap();
        let mut agent = lock_holder(&own.join(BINARY), &own);
        std::fs::write(own.join(PID), agent.id().to_string()).unwrap();
        stop(&own).unwrap();
        assert!(agent.wait().is_ok());
        assert!(!is_running(&own).unwrap());
        let _ = victim.kill();
        let _ = victim.wait();
    }

    fn header(name: &str, mode: &str, bytes: Option<&[u8]>, sha_of: &[u8]) -> Vec<u8> {
        let sha: String = {
            use sha2::{Digest, Sha256};
            Sha256::digest(sha_of).iter().map(|b| format!("{b:02x}")).collect()
        };
        let len = bytes.map_or("-".to_owned(), |b| b.len().to_string());
        let mut out = format!("{name} {mode} {len} {sha}\n").into_bytes();
        out.extend_from_slice(bytes.unwrap_or_default());
        out
    }

    #[test]
    fn unpack_stages_checked_parts_and_leaves_nothing_on_failure() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join(".new.vigil-agent"), b"binary").unwrap();
        let mut stream = header("vigil-agent", "700", None, b"binary");
        stream.extend(header("agent.toml", "600", Some(b"a = 1\n"), b"a = 1\n"));
        stream.extend(header("agent_key", "600", Some(b"\0\xffkey no newline"), b"\0\xffkey no newline"));
        unpack(dir, &mut &stream[..]).unwrap();
        assert_eq!(std::fs::read(dir.join(".new.agent.toml")).unwrap(), b"a = 1\n");
        assert_eq!(std::fs::read(dir.join(".new.agent_key")).unwrap(), b"\0\xffkey no newline");
        let mode = std::fs::metadata(dir.join(".new.agent_key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Cut short, a wrong hash, a staged part that differs, a name with a path in it: an error, nothing left.
        for stream in [
            header("schedule.json", "600", Some(b"{}"), b"{}").split_last().unwrap().1.to_vec(),
            header("schedule.json", "600", Some(b"{}"), b"{ }"),
            [header("schedule.json", "600", Some(b"{}"), b"{}"), header("vigil-agent", "700", None, b"other")].concat(),
            header("../x", "600", Some(b"{}"), b"{}"),
        ] {
            assert!(unpack(dir, &mut &stream[..]).is_err());
            assert!(!dir.join(".new.schedule.json").exists() && !tmp.path().join("x").exists());
        }
        // A symlinked directory is refused before anything is written.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(dir, &link).unwrap();
        let stream = header("schedule.json", "600", Some(b"{}"), b"{}");
        assert!(matches!(unpack(&link, &mut &stream[..]), Err(ControlError::NotPrivate { .. })));
    }

    #[test]
    fn hashes_match_sha256sum() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"abc").unwrap();
        // sha256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(file_sha256(&f).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(sha256(&[tmp.path().join("missing")]).is_err());
    }
}
