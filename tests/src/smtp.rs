//! A real SMTP server for mail tests: Debian's aiosmtpd with its Mailbox handler, one maildir file per message.
//!
//! It runs under `/usr/bin/python3` (Debian's python, where python3-aiosmtpd is installed), not whatever `python3`
//! is first on PATH. [`Smtp::stop`] and [`Smtp::start_again`] take it down and bring it back on the same port, to
//! test mail that must wait out an SMTP outage.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::net::port_accepts;
use crate::poll::wait_until;
use crate::service::Service;

/// Debian's python, which has the python3-aiosmtpd package.
pub const PYTHON: &str = "/usr/bin/python3";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One received message, as written to the maildir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The file it was stored in.
    pub path: PathBuf,
    /// The whole message, headers and body.
    pub raw: String,
}

impl Mail {
    /// The first value of header `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let mut value: Option<String> = None;
        for line in self.raw.lines() {
            if line.is_empty() {
                break;
            }
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push(' ');
                    v.push_str(line.trim());
                    continue;
                }
                break;
            }
            if let Some((key, rest)) = line.split_once(':')
                && key.eq_ignore_ascii_case(name)
            {
                value = Some(rest.trim().to_owned());
            }
        }
        value
    }

    /// The `Subject:` header.
    pub fn subject(&self) -> Option<String> {
        self.header("Subject")
    }

    /// Everything after the blank line that ends the headers.
    pub fn body(&self) -> &str {
        let raw = self.raw.as_str();
        raw.split_once("\r\n\r\n").or_else(|| raw.split_once("\n\n")).map_or("", |(_, body)| body)
    }
}

/// A running (or stopped) aiosmtpd on 127.0.0.1.
#[derive(Debug)]
pub struct Smtp {
    svc: Service,
}

impl Smtp {
    /// Starts the server on a free port with an empty maildir; returns once it accepts connections.
    pub fn start() -> Result<Self> {
        if !Path::new(PYTHON).is_file() {
            bail!("{PYTHON} is missing: install python3-aiosmtpd (scripts/test.sh does)");
        }
        let mut smtp = Self { svc: Service::new("aiosmtpd")? };
        smtp.launch()?;
        Ok(smtp)
    }

    fn launch(&mut self) -> Result<()> {
        let port = self.port();
        let mut cmd = Command::new(PYTHON);
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(self.maildir());
        self.svc
            .launch(cmd, READY_TIMEOUT, |_| port_accepts(port))
            .with_context(|| format!("is python3-aiosmtpd installed for {PYTHON}?"))
    }

    /// Stops the server by PID; the port then refuses connections until [`Smtp::start_again`].
    pub fn stop(&mut self) -> Result<()> {
        self.svc.stop()
    }

    /// Starts the server again on the same port and maildir.
    pub fn start_again(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.svc.is_running()
    }

    /// The server's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.svc.pid()
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.svc.port()
    }

    /// 127.0.0.1 and the port.
    pub fn addr(&self) -> SocketAddr {
        self.svc.addr()
    }

    /// The maildir the handler writes to.
    pub fn maildir(&self) -> PathBuf {
        self.svc.join("maildir")
    }

    /// Every message received so far, oldest first (by file time, then name).
    pub fn messages(&self) -> Result<Vec<Mail>> {
        let mut found = Vec::new();
        for sub in ["new", "cur"] {
            let dir = self.maildir().join(sub);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue; // created by the handler on first start
            };
            for entry in entries {
                let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
                let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                let raw = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                found.push((modified, Mail { path, raw }));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.path.cmp(&b.1.path)));
        Ok(found.into_iter().map(|(_, m)| m).collect())
    }

    /// Waits until at least `n` messages arrived and returns them all.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Result<Vec<Mail>> {
        wait_until(timeout, || self.messages().is_ok_and(|m| m.len() >= n));
        let got = self.messages()?;
        if got.len() < n {
            bail!("expected {n} mails within {timeout:?}, got {}", got.len());
        }
        Ok(got)
    }

    /// The server's log (every run), for assertion messages.
    pub fn logs(&self) -> String {
        self.svc.logs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(raw: &str) -> Mail {
        Mail { path: PathBuf::from("x"), raw: raw.to_owned() }
    }

    #[test]
    fn headers_are_found_case_insensitively_and_unfolded() {
        let m = mail("From: a@b\r\nsubject: cpu on web-01\r\n above 90%\r\nTo: ops@x\r\n\r\nbody text\r\n");
        assert_eq!(m.subject().as_deref(), Some("cpu on web-01 above 90%"));
        assert_eq!(m.header("to").as_deref(), Some("ops@x"));
        assert_eq!(m.header("Cc"), None);
        assert_eq!(m.body(), "body text\r\n");
    }

    #[test]
    fn headers_stop_at_the_body() {
        let m = mail("From: a\n\nSubject: not a header\n");
        assert_eq!(m.subject(), None);
    }
}
