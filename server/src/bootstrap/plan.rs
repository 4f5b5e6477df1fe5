//! What a bootstrap will do to one host, decided once from what is there ([`Inspection`]): a list of [`Step`]s. The
//! dry run prints the list; the real run executes the same list and records each step as it completes, so a dry run
//! cannot describe something the real run does not do.

use vigil_schema::agent_config::SecretHex;

use super::credentials::{self, Installed};
use crate::store::AgentRecord;

/// What is on the host now: the probe's answer (SSH) or a look at the directory (local).
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// The agent directory an install uses.
    pub dir: String,
    /// SHA-256 of the installed binary, if there is one.
    pub agent_sha: Option<String>,
    /// The installed agent.toml, if readable.
    pub installed: Option<Installed>,
    /// Whether an agent holds the directory's lock.
    pub running: bool,
    /// What the operator should know (a noexec temp directory, ...).
    pub notes: Vec<String>,
}

impl Inspection {
    /// The envelope secret new credentials carry as `previous_secrets`: the installed one, when readable.
    pub fn previous_secrets(&self) -> Vec<SecretHex> {
        self.installed.as_ref().and_then(|i| i.secret.clone()).into_iter().collect()
    }
}

/// What the run knows besides the host: the registrations, the server's key and endpoint, the binary it ships.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub registered: &'a [AgentRecord],
    pub host: &'a str,
    pub fingerprint: &'a str,
    pub endpoint: &'a str,
    /// The other nodes' endpoints, agent.toml's `fallback_servers`.
    pub fallbacks: &'a [String],
    /// The host's `commands="allow"`, which agent.toml must carry.
    pub commands: bool,
    pub binary_sha: &'a str,
    /// Whether `vigil serve` answers: then a start is confirmed by the agent's delivery, else by its process.
    pub server_up: bool,
}

/// How a start is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// A report sealed under the new credentials is stored.
    NewReport,
    /// The agent (same credentials) checked in after the start.
    CheckIn,
    /// The agent process holds its lock (the server is not running).
    Running,
}

/// One step of a bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Write the new binary and/or newly minted credentials beside the installed files; the running agent and its
    /// registration are untouched, so a failure here (a full or read-only disk) changes nothing.
    Stage { binary: bool, credentials: bool },
    /// Register the new credentials, replacing the host's registration in one transaction (put back if the next
    /// step fails).
    Register,
    /// Stop the running agent (only a verified pid), move the staged files into place, start the agent.
    Activate { stop: bool, binary: bool, credentials: bool, start: bool },
    /// Wait until the start is confirmed.
    Confirm(Confirm),
}

impl Step {
    /// The short progress message.
    pub fn progress(&self) -> &'static str {
        match self {
            Step::Stage { binary: true, .. } => "uploading",
            Step::Stage { .. } => "writing credentials",
            Step::Register => "registering",
            Step::Activate { start: true, .. } => "starting agent",
            Step::Activate { .. } => "installing",
            Step::Confirm(Confirm::NewReport) => "waiting for a report under the new credentials",
            Step::Confirm(Confirm::CheckIn) => "waiting for check-in",
            Step::Confirm(Confirm::Running) => "checking the agent runs",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Step::Stage { binary, credentials } => {
                let what = match (binary, credentials) {
                    (true, true) => {
                        "the agent binary (its sha256 differs) and new credentials (key, agent.toml, schedule)"
                    }
                    (true, false) => "the agent binary (its sha256 differs)",
                    _ => "new credentials (key, agent.toml, schedule)",
                };
                write!(f, "stage {what} beside the installed files (0700/0600); the running agent is untouched")
            }
            Step::Register => f.write_str("register the new credentials, replacing the host's old registration"),
            Step::Activate { stop, binary, credentials, start } => {
                let mut parts = Vec::new();
                if stop {
                    parts.push("stop the running agent (its verified pid only)");
                }
                if binary || credentials {
                    parts.push("move the staged files into place");
                }
                if start {
                    parts.push("start the agent");
                }
                f.write_str(&parts.join(", "))
            }
            Step::Confirm(Confirm::NewReport) => {
                f.write_str("wait until a report sealed under the new credentials is stored")
            }
            Step::Confirm(Confirm::CheckIn) => f.write_str("wait until the agent checks in"),
            Step::Confirm(Confirm::Running) => f.write_str("check that the agent process runs"),
        }
    }
}

/// The steps for one host, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub dir: String,
    pub steps: Vec<Step>,
}

impl Plan {
    /// Decides what to do: upload when the binary differs, mint new credentials unless the installed ones are
    /// current ([`credentials::current`]), (re)start when something changed or the agent is not running, and confirm
    /// every start.
    pub fn decide(insp: &Inspection, inp: &Inputs<'_>) -> Self {
        let binary = insp.agent_sha.as_deref() != Some(inp.binary_sha);
        let creds_ok = credentials::current(
            inp.registered,
            inp.host,
            insp.installed.as_ref(),
            inp.fingerprint,
            inp.endpoint,
            inp.fallbacks,
            inp.commands,
        );
        let credentials = !creds_ok;
        let mut steps = Vec::new();
        if binary || credentials {
            steps.push(Step::Stage { binary, credentials });
        }
        if credentials {
            steps.push(Step::Register);
        }
        let stop = insp.running && (binary || credentials);
        let start = !insp.running || stop;
        if binary || credentials || start {
            steps.push(Step::Activate { stop, binary, credentials, start });
        }
        if start {
            steps.push(Step::Confirm(match (inp.server_up, credentials) {
                (false, _) => Confirm::Running,
                (true, true) => Confirm::NewReport,
                (true, false) => Confirm::CheckIn,
            }));
        }
        Self { dir: insp.dir.clone(), steps }
    }

    /// The lines a dry run prints, and a real run reports as done.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("agent directory {}", self.dir)];
        out.extend(self.steps.iter().map(|s| s.to_string()));
        if self.steps.is_empty() {
            out.push("nothing to do: up to date and running".to_owned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> AgentRecord {
        AgentRecord {
            agent_id: id.into(),
            host: "web".into(),
            public_key: String::new(),
            secret_hex: String::new(),
            version: None,
            registered_at_ms: 0,
            last_seen_at_ms: None,
        }
    }

    fn installed(id: &str) -> Installed {
        Installed {
            agent_id: id.into(),
            server_host_key: "SHA256:k".into(),
            server: "s:1".into(),
            fallback_servers: Vec::new(),
            secret: Some(SecretHex("00".into())),
            key_present: true,
            commands: false,
        }
    }

    fn plan(insp: &Inspection, server_up: bool) -> Vec<Step> {
        let reg = [record("web-1")];
        let inp = Inputs {
            registered: &reg,
            host: "web",
            fingerprint: "SHA256:k",
            endpoint: "s:1",
            fallbacks: &[],
            commands: false,
            binary_sha: "abc",
            server_up,
        };
        Plan::decide(insp, &inp).steps
    }

    #[test]
    fn a_fresh_host_gets_everything_and_a_report_confirms_it() {
        let steps = plan(&Inspection::default(), true);
        assert_eq!(
            steps,
            [
                Step::Stage { binary: true, credentials: true },
                Step::Register,
                Step::Activate { stop: false, binary: true, credentials: true, start: true },
                Step::Confirm(Confirm::NewReport),
            ]
        );
    }

    #[test]
    fn a_current_running_install_needs_nothing_and_a_dead_one_only_a_start() {
        let mut insp = Inspection {
            dir: "/tmp/d".into(),
            agent_sha: Some("abc".into()),
            installed: Some(installed("web-1")),
            running: true,
            notes: Vec::new(),
        };
        assert!(plan(&insp, true).is_empty());
        insp.running = false;
        assert_eq!(
            plan(&insp, true),
            [
                Step::Activate { stop: false, binary: false, credentials: false, start: true },
                Step::Confirm(Confirm::CheckIn)
            ]
        );
        assert_eq!(plan(&insp, false)[1], Step::Confirm(Confirm::Running));
    }

    #[test]
    fn new_credentials_are_staged_before_registering_and_registered_before_the_restart() {
        let insp = Inspection {
            dir: "/tmp/d".into(),
            agent_sha: Some("abc".into()),
            installed: Some(Installed { key_present: false, ..installed("web-1") }),
            running: true,
            notes: Vec::new(),
        };
        assert_eq!(
            plan(&insp, true),
            [
                Step::Stage { binary: false, credentials: true },
                Step::Register,
                Step::Activate { stop: true, binary: false, credentials: true, start: true },
                Step::Confirm(Confirm::NewReport),
            ]
        );
        assert_eq!(insp.previous_secrets(), [SecretHex("00".into())]);
    }
}
