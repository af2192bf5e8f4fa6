//! Email delivery: the [`Mailer`] trait, SMTP through `lettre` ([`SmtpMailer`]) and an in-memory
//! [`Outbox`] for development and tests (a dev API can read it).

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use nimbus_model::UnixMillis;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailKind {
    VerifyEmail,
    PasswordReset,
    /// Sent to an existing user when someone signs up with their address.
    SignUpAttempt,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailMessage {
    pub project: String,
    pub to: String,
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    pub kind: EmailKind,
    /// The link in the message, if any (for tests and the dev outbox).
    pub link: Option<String>,
    pub created_at: UnixMillis,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid mail configuration: {0}")]
    Config(String),
    #[error("invalid address {0:?}")]
    Address(String),
    #[error("sending mail: {0}")]
    Send(String),
}

/// Delivers the service's emails. Sends happen off the request path (see the crate docs).
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    async fn send(&self, message: &EmailMessage) -> Result<(), MailError>;

    /// The in-memory outbox, when this mailer is one (development mode).
    fn as_outbox(&self) -> Option<&Outbox> {
        None
    }
}

/// Keeps the last `capacity` messages in memory instead of sending them.
#[derive(Debug)]
pub struct Outbox {
    messages: Mutex<VecDeque<EmailMessage>>,
    capacity: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new(1000)
    }
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox { messages: Mutex::new(VecDeque::new()), capacity: capacity.max(1) }
    }

    /// A project's messages, oldest first.
    pub fn messages(&self, project: &str) -> Vec<EmailMessage> {
        self.messages.lock().iter().filter(|m| m.project == project).cloned().collect()
    }

    /// The newest message of a project to `to`.
    pub fn latest_to(&self, project: &str, to: &str) -> Option<EmailMessage> {
        self.messages.lock().iter().rev().find(|m| m.project == project && m.to == to).cloned()
    }
}

#[async_trait]
impl Mailer for Outbox {
    async fn send(&self, message: &EmailMessage) -> Result<(), MailError> {
        let mut messages = self.messages.lock();
        if messages.len() == self.capacity {
            messages.pop_front();
        }
        messages.push_back(message.clone());
        Ok(())
    }

    fn as_outbox(&self) -> Option<&Outbox> {
        Some(self)
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain text: only for a relay on localhost or a private network.
    None,
    /// Connect in plain text, then require STARTTLS (usually port 587).
    StartTls,
    /// TLS from the first byte (usually port 465).
    Tls,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The `From:` mailbox, e.g. `Nimbus <no-reply@example.com>`.
    pub from: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// Sends through an SMTP server (connection pooling by `lettre`).
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpMailer {
    pub fn new(config: &SmtpConfig) -> Result<Self, MailError> {
        let builder = match config.security {
            SmtpSecurity::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            }
            SmtpSecurity::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                    .map_err(|e| MailError::Config(e.to_string()))?
            }
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)
                .map_err(|e| MailError::Config(e.to_string()))?,
        };
        let mut builder = builder.port(config.port).timeout(Some(config.timeout));
        match (&config.username, &config.password) {
            (Some(u), Some(p)) => {
                builder = builder.credentials(Credentials::new(u.clone(), p.clone()))
            }
            (None, None) => {}
            _ => {
                return Err(MailError::Config(
                    "set both SMTP username and password, or neither".into(),
                ));
            }
        }
        let from = config.from.parse().map_err(|_| MailError::Address(config.from.clone()))?;
        Ok(SmtpMailer { transport: builder.build(), from })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, message: &EmailMessage) -> Result<(), MailError> {
        let to: Mailbox = message.to.parse().map_err(|_| MailError::Address(message.to.clone()))?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&message.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(message.text.clone())
            .map_err(|e| MailError::Send(e.to_string()))?;
        self.transport.send(email).await.map_err(|e| MailError::Send(e.to_string()))?;
        Ok(())
    }
}
