//! An SSH client to a host's own sshd, for bootstrap: host-key verification (pinned in clients.xml or in vigil's
//! known-hosts file), login with the credentials clients.xml names (or, with none named, the operator's SSH agent
//! and default keys, as OpenSSH would), and commands with their output and exit code. The same session asks the
//! host's sshd for remote forwards on its loopback (the reverse channel: [`Session::forward`]); forwarded
//! connections are handed out on the channel given to [`Session::open_forwarding`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::io::AsyncWriteExt;

use super::known_hosts::{KnownHosts, same_fingerprint};
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
    #[error("authentication as {user} failed (tried: {tried})")]
    AuthFailed { user: String, tried: String },
    #[error("{0}")]
    Credentials(String),
    #[error("ssh: {0}")]
    Ssh(String),
    /// The sshd refused a remote forward: `AllowTcpForwarding no` (or `remote`/`local` limits), or the port is taken.
    #[error(
        "the SSH server of {addr} refused to forward a port on its loopback (AllowTcpForwarding no on the host?): \
         allow it, or use channel=\"direct\" for this host"
    )]
    ForwardRefused { addr: String },
    /// The SSH server forwarded a port but would not cancel the forward (dropbear, for port 0).
    #[error("the SSH server of {addr} would not cancel a port forward")]
    CancelRefused { addr: String },
    #[error("`{command}` failed with exit code {code}: {stderr}")]
    Command { command: String, code: u32, stderr: String },
}

impl From<russh::Error> for RemoteError {
    fn from(e: russh::Error) -> Self {
        RemoteError::Ssh(e.to_string())
    }
}

/// How a host key never seen before is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewKeys {
    Refuse,
    /// Accept it and record it in the known-hosts file.
    Accept,
    /// Accept it for this connection only (a dry run records nothing).
    AcceptUnrecorded,
}

/// A connection forwarded by the host's sshd: the channel, and who connected on the host (`addr:port`). Boxed: a
/// held tunnel's queue then keeps 32 pointers, not 32 channels (tokio allocates its queue 32 slots at a time).
pub type Forwarded = Box<(russh::Channel<russh::client::Msg>, String)>;

struct Checker {
    expected: Option<String>,
    accept_new: NewKeys,
    seen: Arc<Mutex<Option<String>>>,
    /// Where forwarded connections go; `None`: they are refused.
    forwarded: Option<tokio::sync::mpsc::UnboundedSender<Forwarded>>,
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
            Some(e) => same_fingerprint(e, &fp),
            None => self.accept_new != NewKeys::Refuse,
        })
    }

    /// Accepts and hands the channel on at once: this runs on the session's loop, the work belongs elsewhere.
    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<russh::client::Msg>,
        _connected_address: &str,
        _connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut russh::client::Session,
    ) -> Result<(), Self::Error> {
        let Some(tx) = &self.forwarded else { return Ok(()) };
        reply.accept().await;
        let _ = tx.send(Box::new((channel, format!("{originator_address}:{originator_port}"))));
        Ok(())
    }
}

/// Output of a remote command. `Debug` shows only sizes: the probe's stdout carries the old envelope secret.
#[derive(Default)]
pub struct Output {
    pub code: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("code", &self.code)
            .field("stdout_len", &self.stdout.len())
            .field("stderr_len", &self.stderr.len())
            .finish()
    }
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Where remote forwards listen on the host: its loopback only.
pub const LOOPBACK: &str = "127.0.0.1";

/// A logged-in SSH session to one host.
pub struct Session {
    handle: russh::client::Handle<Checker>,
    /// The host key fingerprint, verified.
    pub fingerprint: String,
    /// `ip:port` of the host's sshd.
    addr: String,
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
        let config = russh::client::Config {
            inactivity_timeout: Some(Duration::from_secs(60)),
            nodelay: true,
            ..Default::default()
        };
        Self::open_with(host, known, new_keys, config, None).await
    }

    /// [`Session::open`] for a long-lived session holding remote forwards (serve's tunnel): a host key never seen
    /// is refused, keepalives detect a dead peer, and forwarded connections are sent on `forwarded`.
    pub async fn open_forwarding(
        host: &Host,
        known: &KnownHosts,
        forwarded: tokio::sync::mpsc::UnboundedSender<Forwarded>,
    ) -> Result<Self, RemoteError> {
        let config = russh::client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        };
        Self::open_with(host, known, NewKeys::Refuse, config, Some(forwarded)).await
    }

    async fn open_with(
        host: &Host,
        known: &KnownHosts,
        new_keys: NewKeys,
        config: russh::client::Config,
        forwarded: Option<tokio::sync::mpsc::UnboundedSender<Forwarded>>,
    ) -> Result<Self, RemoteError> {
        let addr = format!("{}:{}", host.ip, host.port);
        let recorded = known.get(host);
        let expected = host.host_key.clone().or(recorded.clone());
        let seen = Arc::new(Mutex::new(None));
        let checker = Checker { expected: expected.clone(), accept_new: new_keys, seen: seen.clone(), forwarded };
        let config = Arc::new(config);
        let connect = russh::client::connect(config, addr.as_str(), checker);
        let mut handle = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Err(_) => return Err(RemoteError::Unreachable { addr, reason: "timed out".into() }),
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let seen = seen.lock().ok().and_then(|s| s.clone());
                return Err(match (seen, expected) {
                    (Some(seen), Some(expected)) if !same_fingerprint(&seen, &expected) => {
                        RemoteError::HostKeyChanged {
                            addr,
                            expected,
                            seen,
                            known_hosts: known.path().display().to_string(),
                        }
                    }
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
        login(&mut handle, &user, &host.auth).await?;
        if recorded.is_none() && host.host_key.is_none() && new_keys == NewKeys::Accept {
            known.record(host, &fingerprint).map_err(|e| RemoteError::Credentials(format!("known_hosts: {e}")))?;
        }
        Ok(Self { handle, fingerprint, addr })
    }

    /// Asks the host's sshd to listen on `127.0.0.1:port` of the host and forward what connects there (`port` 0:
    /// sshd picks one). Returns the port listened on.
    pub async fn forward(&self, port: u16) -> Result<u16, RemoteError> {
        match self.handle.tcpip_forward(LOOPBACK, u32::from(port)).await {
            Ok(0) => Ok(port),
            Ok(p) => u16::try_from(p).map_err(|_| RemoteError::Ssh(format!("sshd forwarded impossible port {p}"))),
            Err(russh::Error::RequestDenied) => Err(RemoteError::ForwardRefused { addr: self.addr.clone() }),
            Err(e) => Err(e.into()),
        }
    }

    /// Learns a free port on the host's loopback that its sshd will forward: forwards port 0, then cancels. A
    /// refusal says forwarding is off on the host.
    /// dropbear (2022.83) refuses to cancel a forward of port 0 ([`RemoteError::CancelRefused`]): the forward then
    /// lasts as long as this session.
    pub async fn learn_forward_port(&self) -> Result<u16, RemoteError> {
        let port = self.forward(0).await?;
        match self.handle.cancel_tcpip_forward(LOOPBACK, u32::from(port)).await {
            Err(russh::Error::RequestDenied) => Err(RemoteError::CancelRefused { addr: self.addr.clone() }),
            other => other.map(|()| port).map_err(RemoteError::from),
        }
    }

    /// Resolves when the connection has ended (closed by either side, or keepalives unanswered).
    pub async fn closed(&mut self) {
        let _ = (&mut self.handle).await;
    }

    /// Runs a command, feeding `stdin`, and collects its output.
    pub async fn run(&self, command: &str, stdin: Option<&[u8]>) -> Result<Output, RemoteError> {
        let channel = self.handle.channel_open_session().await?;
        channel.exec(true, command).await?;
        // Read while writing: russh queues every window adjustment for the channel's reader, and a reader that waits
        // until the upload is done lets that queue fill and the session stall (an upload of ~50 MB hung).
        let (mut read, write) = channel.split();
        let send = async {
            if let Some(data) = stdin {
                let mut w = write.make_writer();
                for chunk in data.chunks(64 * 1024) {
                    w.write_all(chunk).await.map_err(|e| RemoteError::Ssh(e.to_string()))?;
                }
                w.flush().await.map_err(|e| RemoteError::Ssh(e.to_string()))?;
            }
            write.eof().await?;
            Ok::<_, RemoteError>(())
        };
        let receive = async {
            let mut out = Output::default();
            let mut code = None;
            while let Some(msg) = read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                    _ => {}
                }
            }
            (out, code)
        };
        let (sent, (mut out, code)) = tokio::join!(send, receive);
        match (sent, code) {
            // A command that exits before reading all its stdin says why in its output.
            (_, Some(code)) => out.code = code,
            (Err(e), None) => return Err(e),
            (Ok(()), None) => out.code = 255,
        }
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

/// Logs in as `user` with what clients.xml names; with nothing named, the SSH agent (`SSH_AUTH_SOCK`) and then the
/// default keys, in OpenSSH's order. The error names every method tried.
async fn login(handle: &mut russh::client::Handle<Checker>, user: &str, auth: &Auth) -> Result<(), RemoteError> {
    let ok = match auth {
        Auth::Password(p) => handle.authenticate_password(user, p.expose()).await?.success(),
        Auth::PasswordEnv(var) => {
            let p = zeroize::Zeroizing::new(env_secret(var, "password_env")?);
            handle.authenticate_password(user, p.as_str()).await?.success()
        }
        Auth::KeyFile { path, passphrase } => {
            let pass = match passphrase {
                None => None,
                Some(Passphrase::Inline(s)) => Some(zeroize::Zeroizing::new(s.expose().to_owned())),
                Some(Passphrase::Env(v)) => Some(zeroize::Zeroizing::new(env_secret(v, "key passphrase")?)),
            };
            let key = russh::keys::load_secret_key(path, pass.as_deref().map(String::as_str))
                .map_err(|e| RemoteError::Credentials(format!("{}: {e}", path.display())))?;
            try_key(handle, user, key).await?
        }
        Auth::None => return login_like_openssh(handle, user).await,
    };
    if ok {
        return Ok(());
    }
    let tried = match auth {
        Auth::Password(_) => "password".to_owned(),
        Auth::PasswordEnv(var) => format!("password from environment variable {var}"),
        Auth::KeyFile { path, .. } => format!("key file {}", path.display()),
        Auth::None => String::new(),
    };
    Err(RemoteError::AuthFailed { user: user.to_owned(), tried })
}

async fn try_key(
    handle: &mut russh::client::Handle<Checker>,
    user: &str,
    key: russh::keys::PrivateKey,
) -> Result<bool, RemoteError> {
    let hash = handle.best_supported_rsa_hash().await?.flatten();
    Ok(handle.authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash)).await?.success())
}

/// The default identity files, in the order OpenSSH 9 (`ssh(1)`, `-i`) tries them (the `_sk` and DSA kinds, which
/// russh cannot use, left out).
const DEFAULT_KEYS: [&str; 3] = ["id_rsa", "id_ecdsa", "id_ed25519"];

/// No credentials in clients.xml: every key the SSH agent holds, then each default key file that exists and needs no
/// passphrase.
async fn login_like_openssh(handle: &mut russh::client::Handle<Checker>, user: &str) -> Result<(), RemoteError> {
    let mut tried = Vec::new();
    match std::env::var_os("SSH_AUTH_SOCK") {
        None => tried.push("ssh-agent (SSH_AUTH_SOCK not set)".to_owned()),
        Some(sock) => match russh::keys::agent::client::AgentClient::connect_uds(&sock).await {
            Err(e) => tried.push(format!("ssh-agent ({}: {e})", PathBuf::from(&sock).display())),
            Ok(mut agent) => {
                let ids = agent.request_identities().await.unwrap_or_default();
                let hash = handle.best_supported_rsa_hash().await?.flatten();
                for id in &ids {
                    let key = id.public_key().into_owned();
                    match handle.authenticate_publickey_with(user, key, hash, &mut agent).await {
                        Ok(r) if r.success() => return Ok(()),
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "ssh-agent signature failed"),
                    }
                }
                tried.push(format!("ssh-agent ({} key(s))", ids.len()));
            }
        },
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    for name in DEFAULT_KEYS {
        let Some(path) = home.as_ref().map(|h| h.join(".ssh").join(name)) else { break };
        if !path.is_file() {
            continue;
        }
        match russh::keys::load_secret_key(&path, None) {
            Ok(key) => {
                if try_key(handle, user, key).await? {
                    return Ok(());
                }
                tried.push(path.display().to_string());
            }
            Err(e) => tried.push(format!("{} (unusable without a passphrase: {e})", path.display())),
        }
    }
    if home.is_some() && tried.len() == 1 {
        tried.push(format!("no default key in ~/.ssh ({})", DEFAULT_KEYS.join(", ")));
    }
    Err(RemoteError::AuthFailed { user: user.to_owned(), tried: tried.join(", ") })
}
