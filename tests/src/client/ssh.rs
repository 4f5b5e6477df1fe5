//! One real SSH connection to the endpoint ([`SshConn`], russh over TCP, the server's host key pinned) and a raw
//! session channel on it ([`RawChannel`]): any authentication method and any request, so tests can check what the
//! endpoint refuses.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use russh::ChannelMsg;
use russh::client::{self, Handle, Msg};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use super::{STEP_TIMEOUT, block, rt};

/// A russh client handler that accepts exactly the pinned server key (`SHA256:...`), and nothing else.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub fingerprint: String,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else { return Ok(false) };
        Ok(key.fingerprint(HashAlg::Sha256).to_string() == self.fingerprint)
    }
}

/// One SSH connection to the endpoint, authenticated or not.
pub struct SshConn {
    handle: Handle<Pinned>,
}

impl std::fmt::Debug for SshConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshConn").field("closed", &self.handle.is_closed()).finish()
    }
}

impl SshConn {
    /// Connects to `addr` (`host:port`) and completes the key exchange, accepting only the server key with
    /// `fingerprint` (`SHA256:...`).
    pub fn connect(addr: &str, fingerprint: &str) -> Result<Self> {
        let config = Arc::new(client::Config { nodelay: true, ..Default::default() });
        let handler = Pinned { fingerprint: fingerprint.to_owned() };
        let handle = block("ssh connect", STEP_TIMEOUT, client::connect(config, addr.to_owned(), handler))?
            .with_context(|| format!("ssh connect to {addr}"))?;
        Ok(Self { handle })
    }

    /// Public-key authentication as `user`; true when accepted.
    pub fn auth_key(&mut self, user: &str, key: &PrivateKey) -> Result<bool> {
        let key = PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None);
        let r = block("publickey auth", STEP_TIMEOUT, self.handle.authenticate_publickey(user, key))?
            .context("publickey auth")?;
        Ok(r.success())
    }

    /// Password authentication as `user`; true when accepted.
    pub fn auth_password(&mut self, user: &str, password: &str) -> Result<bool> {
        let r = block("password auth", STEP_TIMEOUT, self.handle.authenticate_password(user, password))?
            .context("password auth")?;
        Ok(r.success())
    }

    /// The "none" method; true when accepted.
    pub fn auth_none(&mut self, user: &str) -> Result<bool> {
        let r = block("none auth", STEP_TIMEOUT, self.handle.authenticate_none(user))?.context("none auth")?;
        Ok(r.success())
    }

    /// Opens a session channel; an error when refused.
    pub fn session(&self) -> Result<RawChannel> {
        let ch = block("channel open", STEP_TIMEOUT, self.handle.channel_open_session())?.context("channel open")?;
        Ok(RawChannel { ch })
    }

    /// Opens a direct-tcpip channel (local port forwarding); true when the server accepted it.
    pub fn direct_tcpip(&self, host: &str, port: u32) -> Result<bool> {
        let r = block("direct-tcpip", STEP_TIMEOUT, self.handle.channel_open_direct_tcpip(host, port, "127.0.0.1", 1))?;
        Ok(r.is_ok())
    }

    /// Asks for a remote port forward; true when granted, false when refused.
    pub fn tcpip_forward(&self, address: &str, port: u32) -> Result<bool> {
        match block("tcpip-forward", STEP_TIMEOUT, self.handle.tcpip_forward(address, port))? {
            Ok(_) => Ok(true),
            Err(russh::Error::RequestDenied) => Ok(false),
            Err(e) => Err(e).context("tcpip-forward"),
        }
    }

    /// Whether the connection is gone (closed by either side).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Waits up to `timeout` for the server to close the connection; true when it did.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let handle = &mut self.handle;
        block("connection close", timeout, handle).is_ok()
    }

    /// Sends a disconnect and waits briefly for the session to wind down.
    pub fn close(mut self) {
        let handle = &mut self.handle;
        let _ = rt().block_on(async {
            let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
            tokio::time::timeout(Duration::from_secs(2), handle).await
        });
    }
}

/// A session channel on which requests are tried one by one.
pub struct RawChannel {
    pub(super) ch: russh::Channel<Msg>,
}

impl std::fmt::Debug for RawChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawChannel").field("id", &self.ch.id()).finish()
    }
}

impl RawChannel {
    /// `exec`; true when the server said yes.
    pub fn exec(&mut self, command: &str) -> Result<bool> {
        block("exec", STEP_TIMEOUT, self.ch.exec(true, command))?.context("exec")?;
        self.reply("exec")
    }

    /// `shell`; true when the server said yes.
    pub fn shell(&mut self) -> Result<bool> {
        block("shell", STEP_TIMEOUT, self.ch.request_shell(true))?.context("shell")?;
        self.reply("shell")
    }

    /// `pty-req`; true when the server said yes.
    pub fn pty(&mut self) -> Result<bool> {
        block("pty", STEP_TIMEOUT, self.ch.request_pty(true, "xterm", 80, 24, 0, 0, &[]))?.context("pty")?;
        self.reply("pty")
    }

    /// `subsystem NAME`; true when the server said yes.
    pub fn subsystem(&mut self, name: &str) -> Result<bool> {
        block("subsystem", STEP_TIMEOUT, self.ch.request_subsystem(true, name))?.context("subsystem")?;
        self.reply("subsystem")
    }

    /// Waits for the server's success or failure reply to the last request (false also when the channel closed).
    fn reply(&mut self, what: &str) -> Result<bool> {
        let ch = &mut self.ch;
        block(what, STEP_TIMEOUT, async {
            loop {
                match ch.wait().await {
                    Some(ChannelMsg::Success) => return true,
                    Some(ChannelMsg::Failure | ChannelMsg::Close | ChannelMsg::Eof) | None => return false,
                    Some(_) => {}
                }
            }
        })
    }
}
