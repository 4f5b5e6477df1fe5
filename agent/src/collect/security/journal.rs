//! Security events from the systemd journal, for hosts without a text auth log: runs
//! `journalctl -o json SYSLOG_FACILITY=4 SYSLOG_FACILITY=10` (auth, authpriv) for the entries after the last one
//! seen, and classifies them with [`super::event`].
//!
//! The first read starts at the time the reader was created (`--since=@<seconds>`), later reads after the cursor of
//! the last entry read (`--after-cursor`). A read stops after [`super::MAX_EVENTS`] events (the
//! rest comes next time) or after [`READ_TIMEOUT`] (journalctl is then killed and the cursor stays at the last
//! entry read). The read blocks the calling thread for as long as journalctl runs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use vigil_schema::report::SecurityEvent;

use super::{MAX_EVENTS, event};

/// Longest a single read may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Where persistent and volatile journals live.
pub const JOURNAL_DIRS: [&str; 2] = ["/var/log/journal", "/run/log/journal"];

/// Where the next read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    Since(i64),
    Cursor(String),
}

/// Reads the journal incrementally.
#[derive(Debug)]
pub struct JournalReader {
    program: PathBuf,
    dirs: Vec<PathBuf>,
    position: Position,
}

/// Why a journal read failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot run journalctl: {0}")]
    Spawn(std::io::Error),
    #[error("journalctl gave no output stream")]
    NoStdout,
    #[error("journalctl did not finish within {0:?}")]
    Timeout(Duration),
}

/// The fields of one `journalctl -o json` entry used here.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "__CURSOR")]
    cursor: String,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime_us: Option<String>,
    #[serde(rename = "SYSLOG_IDENTIFIER")]
    identifier: Option<serde_json::Value>,
    #[serde(rename = "_HOSTNAME")]
    hostname: Option<serde_json::Value>,
    #[serde(rename = "_PID")]
    pid: Option<serde_json::Value>,
    #[serde(rename = "MESSAGE")]
    message: Option<serde_json::Value>,
}

impl JournalReader {
    /// A reader of the system journal whose first read returns entries from now on.
    pub fn new(now: i64) -> Self {
        Self::with_program("journalctl", JOURNAL_DIRS.iter().map(PathBuf::from).collect(), now)
    }

    /// A reader running `program` (a journalctl) and considering the journal present when one of `dirs` holds a
    /// `*.journal` file.
    pub fn with_program(program: impl Into<PathBuf>, dirs: Vec<PathBuf>, now: i64) -> Self {
        JournalReader { program: program.into(), dirs, position: Position::Since(now) }
    }

    /// Whether the host keeps a journal (a `*.journal` file in a journal directory or one level below it).
    pub fn available(&self) -> bool {
        self.dirs.iter().any(|d| has_journal_file(d, 1))
    }

    /// Appends the events logged since the previous read.
    pub fn read(&mut self, now: i64, events: &mut Vec<SecurityEvent>) -> Result<(), JournalError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(["--quiet", "--no-pager", "--output=json"]);
        match &self.position {
            Position::Since(t) => cmd.arg(format!("--since=@{t}")),
            Position::Cursor(c) => cmd.arg(format!("--after-cursor={c}")),
        };
        cmd.args(["SYSLOG_FACILITY=4", "SYSLOG_FACILITY=10"]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(JournalError::Spawn)?;
        let stdout = child.stdout.take().ok_or(JournalError::NoStdout)?;
        // Lines come through a thread so a stuck journalctl can be killed at the deadline.
        let (tx, rx) = mpsc::sync_channel::<String>(256);
        let pump = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + READ_TIMEOUT;
        let mut outcome = Ok(());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let Some((cursor, event)) = parse_entry(&line, now) else { continue };
                    self.position = Position::Cursor(cursor);
                    if let Some(e) = event {
                        events.push(e);
                        if events.len() >= MAX_EVENTS {
                            break;
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    outcome = Err(JournalError::Timeout(READ_TIMEOUT));
                    break;
                }
            }
        }
        drop(rx);
        // Finished or not, the child goes: killing an exited process is harmless.
        let _ = child.kill();
        let _ = child.wait();
        let _ = pump.join();
        outcome
    }
}

/// Parses one JSON entry into its cursor and, if it is an authentication or privilege event, the event.
fn parse_entry(line: &str, now: i64) -> Option<(String, Option<SecurityEvent>)> {
    let e: Entry = serde_json::from_str(line).ok()?;
    let time = e.realtime_us.as_deref().and_then(|us| us.parse::<i64>().ok()).map_or(now, |us| us / 1_000_000);
    let event = (|| {
        let program = text(e.identifier.as_ref()?)?;
        let msg = text(e.message.as_ref()?)?;
        let host = e.hostname.as_ref().and_then(text).unwrap_or_default();
        let tag = match e.pid.as_ref().and_then(text) {
            Some(pid) => format!("{program}[{pid}]"),
            None => program.clone(),
        };
        event(time, &program, &msg, &format!("{host} {tag}: {msg}"))
    })();
    Some((e.cursor, event))
}

/// A journal field: a string, or an array of bytes for values that are not UTF-8.
fn text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(a) => {
            let bytes: Vec<u8> = a.iter().filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn has_journal_file(dir: &Path, depth: u32) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else { return false };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "journal") {
            return true;
        }
        depth > 0 && e.file_type().is_ok_and(|t| t.is_dir()) && has_journal_file(&p, depth - 1)
    })
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use vigil_schema::report::SecurityEventKind;

    const NOW: i64 = 1_795_694_400;

    fn entry(cursor: &str, ident: &str, msg: &str) -> String {
        serde_json::json!({
            "__CURSOR": cursor,
            "__REALTIME_TIMESTAMP": "1795694400123456",
            "SYSLOG_IDENTIFIER": ident,
            "_PID": "77",
            "_HOSTNAME": "web1",
            "MESSAGE": msg,
        })
        .to_string()
    }

    #[test]
    fn entries_parse_and_classify() {
        let (c, e) =
            parse_entry(&entry("s=1", "sshd", "Accepted publickey for alice from 192.0.2.5 port 2 ssh2"), 0).unwrap();
        assert_eq!(c, "s=1");
        let e = e.unwrap();
        assert_eq!(
            (e.kind, e.user.as_deref(), e.source.as_deref(), e.time),
            (SecurityEventKind::LoginSucceeded, Some("alice"), Some("192.0.2.5"), NOW)
        );
        assert!(e.message.starts_with("web1 sshd[77]: Accepted"), "{}", e.message);
        let (c, e) = parse_entry(&entry("s=2", "CRON", "pam_unix(cron:session): session opened"), 0).unwrap();
        assert_eq!((c.as_str(), e), ("s=2", None));
        let bytes = r#"{"__CURSOR":"s=3","SYSLOG_IDENTIFIER":"sudo","MESSAGE":[98,111,98,32,58,32,67,79,77,77,65,78,68,61,47,98,105,110,47,105,100]}"#;
        let (_, e) = parse_entry(bytes, NOW).unwrap();
        assert_eq!(e.unwrap().user.as_deref(), Some("bob"));
        assert!(parse_entry("not json", NOW).is_none());
    }

    /// A stand-in journalctl: prints the entries in `out` after the cursor given, and records its arguments.
    fn fake_journalctl(dir: &Path, lines: &[String]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let data = dir.join("entries");
        std::fs::write(&data, lines.join("\n") + "\n").unwrap();
        let script = dir.join("journalctl");
        let body = format!(
            "#!/bin/sh\necho \"$@\" >> {args}\nfor a in \"$@\"; do case $a in --after-cursor=*) c=${{a#--after-cursor=}};; esac; done\n\
             if [ -z \"$c\" ]; then cat {data}; else sed -n \"/\\\"__CURSOR\\\":\\\"$c\\\"/,\\$p\" {data} | tail -n +2; fi\n",
            args = dir.join("args").display(),
            data = data.display()
        );
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    #[test]
    fn reads_continue_after_the_last_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = vec![
            entry("c1", "sshd", "Failed password for root from 198.51.100.1 port 1 ssh2"),
            entry("c2", "sudo", "alice : TTY=pts/0 ; PWD=/ ; USER=root ; COMMAND=/bin/ls"),
        ];
        let prog = fake_journalctl(dir.path(), &lines);
        let jdir = dir.path().join("journal");
        let mut r = JournalReader::with_program(&prog, vec![jdir.clone()], NOW);
        assert!(!r.available());
        std::fs::create_dir_all(jdir.join("machine-id")).unwrap();
        std::fs::write(jdir.join("machine-id/system.journal"), b"").unwrap();
        assert!(r.available());

        let mut ev = Vec::new();
        r.read(NOW, &mut ev).unwrap();
        let kinds: Vec<_> = ev.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [SecurityEventKind::LoginFailed, SecurityEventKind::Sudo]);

        ev.clear();
        r.read(NOW, &mut ev).unwrap();
        assert!(ev.is_empty(), "nothing is read twice: {ev:?}");

        lines.push(entry("c3", "sshd", "Invalid user zed from 198.51.100.2 port 3"));
        let prog = fake_journalctl(dir.path(), &lines);
        assert_eq!(prog, r.program);
        r.read(NOW, &mut ev).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].user.as_deref(), Some("zed"));

        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        let calls: Vec<_> = args.lines().collect();
        assert!(calls[0].contains(&format!("--since=@{NOW}")) && calls[0].contains("SYSLOG_FACILITY=10"), "{args}");
        assert!(calls[1].contains("--after-cursor=c2") && calls[2].contains("--after-cursor=c2"), "{args}");
    }

    #[test]
    fn a_missing_journalctl_is_an_error_not_a_panic() {
        let mut r = JournalReader::with_program("/nonexistent/journalctl", vec![], NOW);
        assert!(matches!(r.read(NOW, &mut Vec::new()), Err(JournalError::Spawn(_))));
    }
}
