//! The mailer: sends the `outbox` rows with lettre's async SMTP transport and marks each sent.
//!
//! SMTP comes from `[smtp]` of jobs.toml (host, port, TLS mode none/starttls/tls, from, username) with the password
//! read from the environment variable `password_env` names, when it is needed; the config in force is re-read
//! before every batch, so an edit applies without restart. Without `[smtp]` the mailer idles.
//!
//! Delivery: rows are sent oldest first. A transient failure (connection refused, timeout, 4xx) leaves the row
//! pending with its next attempt delayed, and the mailer backs off (1 s doubling to [`MAX_BACKOFF`]) while SMTP is
//! down; a permanent one (5xx, an address that does not parse) marks the row `failed` for good.
//!
//! Exactly once, as far as SMTP allows: a row is marked sent in the database right after the SMTP server accepted
//! the message, so a restart neither loses a mail (pending rows survive) nor resends one that was marked. The
//! residual window: a crash (or power loss) after the server accepted the message and before the mark commits sends
//! that mail again after restart. Each message carries a Message-ID derived from its outbox row
//! (`<vigil.CREATED.ID@DOMAIN>`), so such a duplicate is recognisable (and deduplicated by mail systems that do so).
//! A shutdown lets the send in flight finish (for up to [`SHUTDOWN_GRACE`]) and records it, then stops; a send still
//! unanswered after the grace is abandoned with its row pending, so it is sent again after restart: the same
//! residual window as a crash.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SmtpSettings, TlsMode};
use crate::ingest::{IngestError, IngestHandle};
use crate::store::StoreError;
use crate::store::alerts::{self as rows, OutboxRow};
use vigil_sys::clock::now_ms;

/// How often the outbox is looked at when idle.
pub const POLL: Duration = Duration::from_secs(1);
/// The longest wait between attempts while SMTP is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Timeout of one SMTP conversation.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);
/// Rows taken per look at the outbox.
const BATCH: usize = 20;
/// On shutdown, how long a send already in flight may still take before it is abandoned (the row stays pending).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a mail was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Worth retrying: the server is down, busy or answered 4xx.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help: a bad address, a 5xx answer, bad TLS settings.
    #[error("{0}")]
    Permanent(String),
}

impl MailError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, MailError::Permanent(_))
    }
}

impl From<lettre::transport::smtp::Error> for MailError {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        if e.is_permanent() { MailError::Permanent(e.to_string()) } else { MailError::Transient(e.to_string()) }
    }
}

/// A connection recipe for one `[smtp]` setting.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The domain of `from`, for Message-IDs.
    domain: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).finish_non_exhaustive()
    }
}

impl Mailer {
    /// Builds the transport for `smtp`, reading the password from its environment variable.
    pub fn new(smtp: &SmtpSettings) -> Result<Self, MailError> {
        let builder = match smtp.tls {
            TlsMode::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str()),
            TlsMode::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                .map_err(|e| MailError::Permanent(format!("smtp TLS setup: {e}")))?,
            TlsMode::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
                .map_err(|e| MailError::Permanent(format!("smtp TLS setup: {e}")))?,
        };
        let mut builder = builder.port(smtp.port).timeout(Some(SMTP_TIMEOUT));
        if let Some(user) = &smtp.username {
            let password = match &smtp.password_env {
                Some(var) => std::env::var(var).map_err(|_| {
                    MailError::Transient(format!("smtp password: environment variable {var} is not set"))
                })?,
                None => String::new(),
            };
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let from: Mailbox =
            smtp.from.parse().map_err(|e| MailError::Permanent(format!("smtp from {:?}: {e}", smtp.from)))?;
        let domain = from.email.domain().to_owned();
        Ok(Mailer { transport: builder.build(), from, domain })
    }

    /// Sends one message; `id` makes its Message-ID.
    pub async fn send(&self, id: &str, created_ms: i64, to: &str, subject: &str, body: &str) -> Result<(), MailError> {
        let to: Mailbox = to.parse().map_err(|e| MailError::Permanent(format!("recipient {to:?}: {e}")))?;
        let date = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(created_ms).unwrap_or(0));
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .date(date)
            .message_id(Some(format!("<vigil.{created_ms}.{id}@{}>", self.domain)))
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| MailError::Permanent(format!("building the message: {e}")))?;
        self.transport.send(message).await?;
        Ok(())
    }

    async fn send_row(&self, row: &OutboxRow) -> Result<(), MailError> {
        self.send(&row.id.to_string(), row.created_ms, &row.recipient, &row.subject, &row.body).await
    }
}

/// Sends a test mail to `to` through `smtp` (for `vigil check --test-mail`).
pub async fn send_test(smtp: &SmtpSettings, to: &str) -> Result<(), MailError> {
    let mailer = Mailer::new(smtp)?;
    let now = now_ms();
    let body = format!(
        "This is a test mail from vigil, sent at {} through {}:{}.\n\nIf you read this, alert mail will reach you.\n",
        crate::alert::message::utc(now),
        smtp.host,
        smtp.port
    );
    mailer.send(&format!("test.{}", std::process::id()), now, to, "[vigil] TEST mail", &body).await
}

/// How long a node's claim on a mail lasts: longer than a send can take; a node that died mid-send leaves its
/// claim to expire, and another node sends the mail.
pub const CLAIM_FOR_MS: i64 = 120_000;

/// Sends outbox rows until `cancel` fires or the writer stops. Stops only between messages. `node` claims each
/// mail before sending it, so nodes sharing the database send every mail once.
pub async fn run(
    ingest: IngestHandle,
    config: watch::Receiver<Arc<Config>>,
    node: Arc<str>,
    cancel: CancellationToken,
) {
    let mut backoff = vigil_sys::backoff::Backoff::new(POLL, MAX_BACKOFF);
    let mut cached: Option<(SmtpSettings, Mailer)> = None;
    loop {
        let smtp = config.borrow().smtp.clone();
        let pause = match smtp {
            None => POLL,
            Some(smtp) => match round(&ingest, &node, &smtp, &mut cached, &cancel).await {
                Round::Idle => {
                    backoff.reset();
                    POLL
                }
                Round::More => {
                    backoff.reset();
                    Duration::ZERO
                }
                Round::Down(e) => {
                    let wait = backoff.next_step();
                    tracing::warn!(error = %e, "mail not sent, retrying in {}s", wait.as_secs());
                    wait
                }
                Round::Stopped => return,
            },
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

enum Round {
    /// Nothing due.
    Idle,
    /// Sent a full batch: look again at once.
    More,
    /// SMTP failed transiently: back off.
    Down(MailError),
    /// The writer stopped.
    Stopped,
}

async fn round(
    ingest: &IngestHandle,
    node: &Arc<str>,
    smtp: &SmtpSettings,
    cached: &mut Option<(SmtpSettings, Mailer)>,
    cancel: &CancellationToken,
) -> Round {
    let node = node.clone();
    let claim = move |s: &mut crate::store::Store| s.write_tx(|c| rows::claim_mail(c, &node, BATCH, CLAIM_FOR_MS));
    let due = match ingest.exec(claim).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return Round::Down(MailError::Transient(format!("reading the outbox: {e}"))),
        Err(_) => return Round::Stopped,
    };
    if due.is_empty() {
        return Round::Idle;
    }
    if cached.as_ref().is_none_or(|(s, _)| s != smtp) {
        match Mailer::new(smtp) {
            Ok(m) => *cached = Some((smtp.clone(), m)),
            Err(e) => return Round::Down(e),
        }
    }
    let Some((_, mailer)) = cached.as_ref() else { return Round::Idle };
    let full = due.len() == BATCH;
    for row in due {
        if cancel.is_cancelled() {
            return Round::Stopped;
        }
        let sent = {
            let send = mailer.send_row(&row);
            tokio::pin!(send);
            tokio::select! {
                r = &mut send => Some(r),
                _ = cancel.cancelled() => tokio::time::timeout(SHUTDOWN_GRACE, &mut send).await.ok(),
            }
        };
        let Some(result) = sent else {
            tracing::warn!(outbox = row.id, "shutdown: abandoned a mail send in flight; it stays queued");
            return Round::Stopped;
        };
        let (id, now) = (row.id, now_ms());
        let mark = match &result {
            Ok(()) => {
                tracing::info!(outbox = id, to = %row.recipient, "mail sent: {}", row.subject);
                mark_sent(ingest, id, now).await
            }
            Err(e) => {
                let retry = (!e.is_permanent()).then(|| now + retry_delay(row.attempts));
                if retry.is_none() {
                    tracing::warn!(outbox = id, to = %row.recipient, error = %e, "mail refused for good");
                }
                let msg = e.to_string();
                ingest.exec(move |s| s.write_tx(|c| rows::mark_attempt_failed(c, id, &msg, retry))).await
            }
        };
        match mark {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(outbox = id, error = %e, "cannot record the mail's state"),
            Err(_) => return Round::Stopped,
        }
        if let Err(e) = result
            && !e.is_permanent()
        {
            // The server is down or refusing: stop this round, the rest waits with it.
            *cached = None;
            return Round::Down(e);
        }
    }
    if full { Round::More } else { Round::Idle }
}

/// Marks a row sent, retrying a few times: a mark that never lands means the mail is sent again after restart.
async fn mark_sent(ingest: &IngestHandle, id: i64, now: i64) -> Result<Result<(), StoreError>, IngestError> {
    let mut tries = 0;
    loop {
        let r = ingest.exec(move |s| s.write_tx(|c| rows::mark_sent(c, id, now))).await?;
        tries += 1;
        if r.is_ok() || tries == 5 {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Delay before the next attempt of a row that failed `attempts` times before: 1 s doubling, at most
/// [`MAX_BACKOFF`].
fn retry_delay(attempts: i64) -> i64 {
    let failures = u32::try_from(attempts.max(0)).unwrap_or(u32::MAX);
    let d = vigil_sys::backoff::step(Duration::from_secs(1), MAX_BACKOFF, failures);
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(tls: TlsMode) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port: 1,
            tls,
            from: "vigil@example.org".into(),
            username: None,
            password_env: None,
        }
    }

    #[test]
    fn retry_delay_doubles_and_caps() {
        assert_eq!(retry_delay(0), 1_000);
        assert_eq!(retry_delay(3), 8_000);
        assert_eq!(retry_delay(50), 30_000);
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn mailer_builds_for_every_tls_mode_and_checks_from() {
        // The pooled transport spawns its housekeeping: it lives inside a runtime.
        rt().block_on(async {
            for tls in [TlsMode::None, TlsMode::StartTls, TlsMode::Tls] {
                let m = Mailer::new(&smtp(tls)).expect("builds");
                assert_eq!(m.domain, "example.org");
            }
            let bad = SmtpSettings { from: "not an address".into(), ..smtp(TlsMode::None) };
            assert!(Mailer::new(&bad).expect_err("bad from").is_permanent());
            let missing = SmtpSettings {
                username: Some("u".into()),
                password_env: Some("VIGIL_TEST_SURELY_UNSET_PASSWORD".into()),
                ..smtp(TlsMode::None)
            };
            let e = Mailer::new(&missing).expect_err("unset env");
            assert!(e.to_string().contains("VIGIL_TEST_SURELY_UNSET_PASSWORD") && !e.is_permanent(), "{e}");
        });
    }

    #[test]
    fn refused_connection_is_transient_and_bad_recipient_permanent() {
        rt().block_on(async {
            // Port 1 on loopback refuses.
            let m = Mailer::new(&smtp(TlsMode::None)).expect("builds");
            let e = m.send("1", 0, "ops@example.org", "s", "b").await.expect_err("refused");
            assert!(!e.is_permanent(), "{e}");
            let e = m.send("1", 0, "no address", "s", "b").await.expect_err("bad rcpt");
            assert!(e.is_permanent(), "{e}");
        });
    }
}
