//! An SSH client to a host's own sshd, for bootstrap: host-key verification (pinned in clients.xml or in vigil's
//! known-hosts file), login with the credentials clients.xml names, and commands with their output and exit code.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::io::AsyncWriteExt;

use crate::config::{Auth, Host, Passphrase};

/// Why talking to a host failed. Each message is meant for the bootstrap summary.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error(
        "HOST KEY CHANGED for {addr}: expected {expected}, the host presented {seen}; refusing (if the change is \
         intended, update host_key in clients.xml or remove the line from {known_hosts})"
    )]
    HostKeyChanged { addr: String, expected: String, seen: String, known_hosts: String },
    #[error(
        "unknown host key {seen} for {addr}; verify it and rerun with --accept-new-host-key, or pin it with host_key="
    )]
    HostKeyUnknown { addr: String, seen: String },
    #[error("authentication as {user} failed ({method})")]
    AuthFailed { user: String, method: &'static str },
    #[error("{0}")]
    Credentials(String),
    #[error("ssh: {0}")]
    Ssh(String),
    #[error("`{command}` failed with exit code {code}: {stderr}")]
    Command { command: String, code: u32, stderr: String },
}

impl From<russh::Error> for RemoteError {
    fn from(e: russh::Error) -> Self {
        RemoteError::Ssh(e.to_string())
    }
}

/// vigil's own known-hosts file: one `[addr]:port SHA256:...` line per host, 0600 in the data directory.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl KnownHosts {
    pub fn new(data_dir: &Path) -> Self {
        Self { path: data_dir.join("known_hosts"), lock: Arc::new(Mutex::new(())) }
    }

    fn key(host: &Host) -> String {
        format!("[{}]:{}", host.ip, host.port)
    }

    /// The recorded fingerprint for a host.
    pub fn get(&self, host: &Host) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let key = Self::key(host);
        text.lines().find_map(|l| {
            let (k, fp) = l.split_once(' ')?;
            (k == key).then(|| fp.trim().to_owned())
        })
    }

    /// Records (or replaces) a host's fingerprint.
    pub fn record(&self, host: &Host, fingerprint: &str) -> std::io::Result<()> {
        let _guard = self.lock.lock().map_err(|_| std::io::Error::other("known-hosts lock poisoned"))?;
        let key = Self::key(host);
        let old = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut lines: Vec<String> =
            old.lines().filter(|l| !l.starts_with(&format!("{key} "))).map(String::from).collect();
        lines.push(format!("{key} {fingerprint}"));
        let text = lines.join("\n") + "\n";
        crate::keys::write_private(&self.path, text.as_bytes()).map_err(std::io::Error::other)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How a new host key is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewKeys {
    Refuse,
    Accept,
}

struct Checker {
    expected: Option<String>,
    accept_new: NewKeys,
    seen: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else { return Ok(false) };
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(fp.clone());
        }
        Ok(match &self.expected {
            Some(e) => *e == fp,
            None => self.accept_new == NewKeys::Accept,
        })
    }
}

/// Output of a remote command.
#[derive(Debug, Default)]
pub struct Output {
    pub code: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// A logged-in SSH session to one host.
pub struct Session {
    handle: russh::client::Handle<Checker>,
    /// The host key fingerprint, verified.
    pub fingerprint: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

fn env_secret(var: &str, what: &str) -> Result<String, RemoteError> {
    std::env::var(var).map_err(|_| RemoteError::Credentials(format!("{what}: environment variable {var} is not set")))
}

impl Session {
    /// Connects, verifies the host key, and logs in as clients.xml says.
    pub async fn open(host: &Host, known: &KnownHosts, new_keys: NewKeys) -> Result<Self, RemoteError> {
        let addr = format!("{}:{}", host.ip, host.port);
        let recorded = known.get(host);
        let expected = host.host_key.clone().or(recorded.clone());
        let seen = Arc::new(Mutex::new(None));
        let checker = Checker { expected: expected.clone(), accept_new: new_keys, seen: seen.clone() };
        let config = Arc::new(russh::client::Config {
            inactivity_timeout: Some(Duration::from_secs(60)),
            nodelay: true,
            ..Default::default()
        });
        let connect = russh::client::connect(config, addr.as_str(), checker);
        let mut handle = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Err(_) => return Err(RemoteError::Unreachable { addr, reason: "timed out".into() }),
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let seen = seen.lock().ok().and_then(|s| s.clone());
                return Err(match (seen, expected) {
                    (Some(seen), Some(expected)) if seen != expected => RemoteError::HostKeyChanged {
                        addr,
                        expected,
                        seen,
                        known_hosts: known.path().display().to_string(),
                    },
                    (Some(seen), None) => RemoteError::HostKeyUnknown { addr, seen },
                    _ => RemoteError::Unreachable { addr, reason: e.to_string() },
                });
            }
        };
        let fingerprint = seen.lock().ok().and_then(|s| s.clone()).unwrap_or_default();
        let user = host
            .username
            .clone()
            .ok_or_else(|| RemoteError::Credentials(format!("{}: no username in clients.xml", host.name)))?;
        let ok = match &host.auth {
            Auth::Password(p) => handle.authenticate_password(&user, p.expose()).await?.success(),
            Auth::PasswordEnv(var) => {
                let p = zeroize::Zeroizing::new(env_secret(var, "password_env")?);
                handle.authenticate_password(&user, p.as_str()).await?.success()
            }
            Auth::KeyFile { path, passphrase } => {
                let pass = match passphrase {
                    None => None,
                    Some(Passphrase::Inline(s)) => Some(zeroize::Zeroizing::new(s.expose().to_owned())),
                    Some(Passphrase::Env(v)) => Some(zeroize::Zeroizing::new(env_secret(v, "key passphrase")?)),
                };
                let key = russh::keys::load_secret_key(path, pass.as_deref().map(String::as_str))
                    .map_err(|e| RemoteError::Credentials(format!("{}: {e}", path.display())))?;
                let hash = handle.best_supported_rsa_hash().await?.flatten();
                handle.authenticate_publickey(&user, PrivateKeyWithHashAlg::new(Arc::new(key), hash)).await?.success()
            }
            Auth::None => false,
        };
        if !ok {
            let method = match host.auth {
                Auth::Password(_) => "password",
                Auth::PasswordEnv(_) => "password from environment",
                Auth::KeyFile { .. } => "key file",
                Auth::None => "no credentials in clients.xml",
            };
            return Err(RemoteError::AuthFailed { user, method });
        }
        if recorded.is_none() && host.host_key.is_none() {
            known.record(host, &fingerprint).map_err(|e| RemoteError::Credentials(format!("known_hosts: {e}")))?;
        }
        Ok(Self { handle, fingerprint })
    }

    /// Runs a command, feeding `stdin`, and collects its output.
    pub async fn run(&self, command: &str, stdin: Option<&[u8]>) -> Result<Output, RemoteError> {
        let mut channel = self.handle.channel_open_session().await?;
        channel.exec(true, command).await?;
        if let Some(data) = stdin {
            let mut w = channel.make_writer();
            for chunk in data.chunks(64 * 1024) {
                w.write_all(chunk).await.map_err(|e| RemoteError::Ssh(e.to_string()))?;
            }
            w.flush().await.map_err(|e| RemoteError::Ssh(e.to_string()))?;
            drop(w);
        }
        channel.eof().await?;
        let mut out = Output::default();
        let mut code = None;
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                _ => {}
            }
        }
        out.code = code.unwrap_or(255);
        Ok(out)
    }

    /// Runs a command and fails unless it exits 0.
    pub async fn check(&self, command: &str, stdin: Option<&[u8]>) -> Result<Output, RemoteError> {
        let out = self.run(command, stdin).await?;
        if out.code != 0 {
            return Err(RemoteError::Command {
                command: command.chars().take(80).collect(),
                code: out.code,
                stderr: String::from_utf8_lossy(&out.stderr).trim().chars().take(2000).collect(),
            });
        }
        Ok(out)
    }

    /// Says goodbye and waits for the connection to close.
    pub async fn close(self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
        let mut h = self.handle;
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut h).await;
    }
}
