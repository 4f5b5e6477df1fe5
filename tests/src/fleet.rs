//! A test fleet on disk: `clients.xml` and `jobs.toml` written for the hosts a test started, and the `vigil` binary
//! run on them.
//!
//! [`ClientEntry`] renders one `<client>` element in the documented form (see the shipped clients.xml);
//! [`Workdir`] holds the two files in a temporary directory and builds `vigil` commands that pass `--clients` and
//! `--jobs` explicitly.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::agent_set::agents_dir;
use crate::paths::{TestDir, bin};
use crate::process::Proc;
use crate::sshd::Sshd;

/// Every collector the agent knows, for jobs that collect everything.
pub const ALL_COLLECTORS: &[&str] =
    &["system", "users", "cpu", "memory", "swap", "partitions", "disk_usage", "network", "security_events"];

/// How vigil logs in to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `key_file="PATH"`.
    Key(PathBuf),
    /// `password="..."` in the file.
    Password(String),
    /// `password_env="VAR"`: the password comes from that environment variable.
    PasswordEnv(String),
}

/// One `<client>` of clients.xml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    attrs: Vec<(&'static str, String)>,
    alerts: Vec<(String, String)>,
}

impl ClientEntry {
    /// An SSH host served by a test sshd: ip 127.0.0.1, its port, `username` and `auth`.
    pub fn ssh(name: &str, sshd: &Sshd, username: &str, auth: Auth) -> Self {
        Self::ssh_port(name, sshd.port(), username, auth)
    }

    /// An SSH host at 127.0.0.1:`port` (any SSH server there, e.g. a test dropbear), `username` and `auth`.
    pub fn ssh_port(name: &str, port: u16, username: &str, auth: Auth) -> Self {
        let mut attrs = vec![
            ("name", name.to_owned()),
            ("ip", "127.0.0.1".to_owned()),
            ("port", port.to_string()),
            ("username", username.to_owned()),
        ];
        attrs.push(match auth {
            Auth::Key(path) => ("key_file", path.display().to_string()),
            Auth::Password(p) => ("password", p),
            Auth::PasswordEnv(var) => ("password_env", var),
        });
        Self { attrs, alerts: Vec::new() }
    }

    /// This machine, without SSH (`transport="local"`).
    pub fn local(name: &str) -> Self {
        let attrs = vec![("name", name.to_owned()), ("ip", "127.0.0.1".to_owned()), ("transport", "local".to_owned())];
        Self { attrs, alerts: Vec::new() }
    }

    /// A host on SSH transport at `ip` (port 22, user `vigil`) whose agent the test enrolls itself (`vigil enroll`, or
    /// registered in the database): serve never dials it, so `ip` may be any address.
    pub fn enrolled(name: &str, ip: impl Into<String>) -> Self {
        Self::local(name).attr("transport", "ssh").attr("ip", ip).attr("port", "22").attr("username", "vigil")
    }

    /// Sets (or replaces) an attribute, e.g. `host_key`, `mail`, `tags`, `endpoint`.
    pub fn attr(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.attrs.retain(|(k, _)| *k != key);
        self.attrs.push((key, value.into()));
        self
    }

    /// Adds `<alert type=".." limit=".."/>`.
    pub fn alert(mut self, kind: &str, limit: &str) -> Self {
        self.alerts.push((kind.to_owned(), limit.to_owned()));
        self
    }

    /// The `<client>` element.
    pub fn to_xml(&self) -> String {
        let attrs: String = self.attrs.iter().map(|(k, v)| format!(" {k}=\"{}\"", escape(v))).collect();
        if self.alerts.is_empty() {
            return format!("  <client{attrs}/>\n");
        }
        let mut out = format!("  <client{attrs}>\n");
        for (kind, limit) in &self.alerts {
            out.push_str(&format!("    <alert type=\"{}\" limit=\"{}\"/>\n", escape(kind), escape(limit)));
        }
        out.push_str("  </client>\n");
        out
    }
}

/// A whole clients.xml.
pub fn clients_xml(entries: &[ClientEntry]) -> String {
    let body: String = entries.iter().map(ClientEntry::to_xml).collect();
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clients>\n{body}</clients>\n")
}

/// A jobs.toml with the endpoint on 127.0.0.1:`listen_port`, data in `data_dir`, optional SMTP on
/// 127.0.0.1:`smtp_port`, and one job "all" running every collector every `interval`.
pub fn jobs_toml(listen_port: u16, data_dir: &Path, smtp_port: Option<u16>, interval: &str) -> String {
    let mut out = format!(
        "[server]\nlisten = \"127.0.0.1:{listen_port}\"\ndata_dir = \"{}\"\nretention_days = 30\n\n",
        escape_toml(&data_dir.display().to_string())
    );
    if let Some(port) = smtp_port {
        out.push_str(&format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"vigil@localhost\"\n\n"
        ));
    }
    let collectors: Vec<String> = ALL_COLLECTORS.iter().map(|c| format!("\"{c}\"")).collect();
    out.push_str(&format!(
        "[[job]]\nname = \"all\"\ncollectors = [{}]\ninterval = \"{}\"\n",
        collectors.join(", "),
        escape_toml(interval)
    ));
    out
}

/// A directory holding a clients.xml and a jobs.toml, where `vigil` runs.
#[derive(Debug)]
pub struct Workdir {
    dir: TestDir,
}

impl Workdir {
    /// An empty work directory.
    pub fn new() -> Result<Self> {
        Ok(Self { dir: TestDir::new("work")? })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `<dir>/clients.xml`.
    pub fn clients_path(&self) -> PathBuf {
        self.dir.join("clients.xml")
    }

    /// `<dir>/jobs.toml`.
    pub fn jobs_path(&self) -> PathBuf {
        self.dir.join("jobs.toml")
    }

    /// `<dir>/data`, a data directory for jobs.toml.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Writes clients.xml from entries.
    pub fn write_clients(&self, entries: &[ClientEntry]) -> Result<()> {
        self.write_clients_text(&clients_xml(entries))
    }

    /// Writes clients.xml verbatim.
    pub fn write_clients_text(&self, text: &str) -> Result<()> {
        std::fs::write(self.clients_path(), text).context("writing clients.xml")
    }

    /// Writes jobs.toml verbatim.
    pub fn write_jobs(&self, text: &str) -> Result<()> {
        std::fs::write(self.jobs_path(), text).context("writing jobs.toml")
    }

    /// `vigil ARGS... --clients <dir>/clients.xml --jobs <dir>/jobs.toml`, run in the directory, shipping the agent
    /// set of [`agents_dir`] (`VIGIL_AGENTS_DIR`).
    pub fn vigil(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("vigil"));
        cmd.env("VIGIL_AGENTS_DIR", agents_dir())
            .current_dir(self.path())
            .args(args)
            .arg("--clients")
            .arg(self.clients_path())
            .arg("--jobs")
            .arg(self.jobs_path());
        cmd
    }

    /// Starts `vigil ARGS...` (as [`Workdir::vigil`]) as a [`Proc`] logging to `<dir>/<name>.stdout|stderr`.
    pub fn spawn_vigil(&self, args: &[&str], name: &str) -> Result<Proc> {
        Proc::spawn(self.vigil(args), self.path(), name)
    }
}

fn escape(value: &str) -> String {
    value.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

fn escape_toml(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A host name unique across this test binary's tests and concurrent test binaries: `prefix`, the pid, `label`, a
/// counter (host names become agent directory names in the shared /tmp).
pub fn unique_host(prefix: &str, label: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}{}{label}{n}", std::process::id())
}

/// Kills the agents installed for these hosts (in [`agent_dir`]) and removes their directories when dropped: test
/// hosts share this machine's /tmp, so nothing a test installed may outlive it.
#[derive(Debug)]
pub struct AgentCleanup(pub Vec<String>);

impl Drop for AgentCleanup {
    fn drop(&mut self) {
        for n in &self.0 {
            crate::process::kill_processes_under(&agent_dir(n));
            let _ = std::fs::remove_dir_all(agent_dir(n));
        }
    }
}

/// Where bootstrap installs `host`'s agent on a test host (they share this machine's /tmp).
pub fn agent_dir(host: &str) -> std::path::PathBuf {
    std::path::PathBuf::from("/tmp").join(format!("vigil-agent-{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_client_with_alerts_renders_in_the_documented_form() {
        let xml = ClientEntry::local("here").attr("mail", "ops@x").alert("cpu", "90%").to_xml();
        assert_eq!(
            xml,
            "  <client name=\"here\" ip=\"127.0.0.1\" transport=\"local\" mail=\"ops@x\">\n    \
             <alert type=\"cpu\" limit=\"90%\"/>\n  </client>\n"
        );
    }

    #[test]
    fn attribute_values_are_escaped_and_replaced() {
        let xml = ClientEntry::local("a").attr("mail", "x").attr("mail", "\"<&>'").to_xml();
        assert_eq!(
            xml,
            "  <client name=\"a\" ip=\"127.0.0.1\" transport=\"local\" mail=\"&quot;&lt;&amp;&gt;&apos;\"/>\n"
        );
    }

    #[test]
    fn jobs_toml_is_valid_toml_with_every_collector() {
        let text = jobs_toml(7022, Path::new("/tmp/d\"x"), Some(2525), "2s");
        assert!(text.contains("listen = \"127.0.0.1:7022\""));
        assert!(text.contains("data_dir = \"/tmp/d\\\"x\""));
        assert!(text.contains("port = 2525"));
        for c in ALL_COLLECTORS {
            assert!(text.contains(&format!("\"{c}\"")), "{c}");
        }
        assert!(!jobs_toml(1, Path::new("d"), None, "1s").contains("[smtp]"));
    }

    #[test]
    fn a_workdir_holds_both_files() {
        let w = Workdir::new().unwrap();
        w.write_clients(&[ClientEntry::local("here")]).unwrap();
        w.write_jobs(&jobs_toml(1, &w.data_dir(), None, "1s")).unwrap();
        let clients = std::fs::read_to_string(w.clients_path()).unwrap();
        assert!(clients.starts_with("<?xml") && clients.contains("<client name=\"here\""));
        assert!(w.jobs_path().is_file());
        let cmd = w.vigil(&["check"]);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args[0], "check");
        assert_eq!(args[1], "--clients");
        assert_eq!(args[3], "--jobs");
    }
}
