//! The russh `Handler` for one connection: who may authenticate, and which requests are served.
//!
//! Only public-key auth by a key in the allow-list, with the agent id as user name. Only one session channel and
//! only the `vigil` subsystem on it; exec, shell, pty, env, X11, agent and port forwarding are refused and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};

use super::Shared;
use super::counters::Counters;
use super::registry::AgentEntry;

/// Per-connection state.
#[derive(Debug)]
pub struct Handler {
    shared: Arc<Shared>,
    authenticated: Arc<AtomicBool>,
    /// Held until authentication: bounds the number of anonymous connections.
    unauth_permit: Option<super::Anonymous>,
    agent: Option<Arc<AgentEntry>>,
    /// This connection's place among its agent's live connections, once authenticated.
    agent_slot: Option<super::AgentSlot>,
    channel: Option<Channel<Msg>>,
    subsystem_started: bool,
    /// The connection's span (peer; agent and host once authenticated).
    span: tracing::Span,
}

impl Handler {
    pub fn new(
        shared: Arc<Shared>,
        authenticated: Arc<AtomicBool>,
        unauth_permit: super::Anonymous,
        span: tracing::Span,
    ) -> Self {
        Self {
            shared,
            authenticated,
            unauth_permit: Some(unauth_permit),
            agent: None,
            agent_slot: None,
            channel: None,
            subsystem_started: false,
            span,
        }
    }

    fn reject(&self, what: &str) -> Auth {
        if let Some(n) = Counters::bump(&self.shared.counters.auth_rejected) {
            tracing::info!(parent: &self.span, count = n, "authentication refused: {what}");
        }
        Auth::reject()
    }

    fn refuse(&self, what: &str) {
        if let Some(n) = Counters::bump(&self.shared.counters.requests_refused) {
            tracing::info!(parent: &self.span, count = n, "request refused: {what}");
        }
    }

    async fn lookup(&self, key: &russh::keys::PublicKey) -> Option<Arc<AgentEntry>> {
        if let Some(a) = self.shared.registry().lookup(key) {
            return Some(a);
        }
        self.shared.refresh_if_stale().await;
        self.shared.registry().lookup(key)
    }
}

impl russh::server::Handler for Handler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject { proceed_with_methods: None, partial_success: false })
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.reject("password authentication is not accepted"))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.reject("keyboard-interactive authentication is not accepted"))
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        match self.lookup(offer.public_key).await {
            Some(a) if a.agent_id == user => Ok(Auth::Accept),
            Some(_) => Ok(self.reject("key offered for another agent id")),
            None => Ok(self.reject("unknown key")),
        }
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self.lookup(key.public_key).await {
            Some(a) if a.agent_id == user => {
                let Some(slot) = self.shared.take_agent_slot(&a.agent_id) else {
                    return Ok(self.reject("too many connections with this agent key"));
                };
                self.span.record("agent", a.agent_id.as_str()).record("host", a.host.as_str());
                tracing::debug!(parent: &self.span, "agent authenticated");
                self.agent_slot = Some(slot);
                self.agent = Some(a);
                self.authenticated.store(true, Ordering::Release);
                self.unauth_permit = None;
                Ok(Auth::Accept)
            }
            _ => Ok(self.reject("unknown key")),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.agent.is_none() || self.channel.is_some() || self.subsystem_started {
            self.refuse("second session channel");
            reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        }
        self.channel = Some(channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ours = self.channel.as_ref().is_some_and(|c| c.id() == channel);
        match (name == vigil_schema::proto::SUBSYSTEM && ours, self.agent.clone(), self.channel.take()) {
            (true, Some(agent), Some(ch)) => {
                session.channel_success(channel)?;
                self.subsystem_started = true;
                let shared = self.shared.clone();
                let handle = session.handle();
                let session = super::session::run(shared, agent, ch, handle);
                self.shared.tracker.spawn(tracing::Instrument::instrument(session, self.span.clone()));
            }
            (_, _, ch) => {
                self.channel = ch;
                self.refuse("subsystem other than vigil");
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("exec");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.refuse("shell");
        session.channel_failure(channel)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("pty");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("env");
        session.channel_failure(channel)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("direct-tcpip");
        reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("tcpip-forward");
        Ok(false)
    }

    async fn streamlocal_forward(&mut self, _path: &str, _session: &mut Session) -> Result<bool, Self::Error> {
        self.refuse("streamlocal-forward");
        Ok(false)
    }
}
