//! Mail through an SMTP relay with lettre: `STARTTLS` required unless the notifier says
//! `smtp_tls = "none"`. An SMTP 5xx is a refusal for good; the rest is tried again.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::SendError;
use crate::master::config::MailConfig;
use crate::master::store::Notification;

#[derive(serde::Deserialize)]
struct Payload {
    subject: String,
    body: String,
}

pub async fn send(
    config: &MailConfig,
    timeout: Duration,
    notification: &Notification,
) -> Result<(), SendError> {
    let payload: Payload = serde_json::from_str(&notification.new.payload)
        .map_err(|err| SendError::Permanent(format!("kept mail is not readable: {err}")))?;
    let from = config
        .from
        .parse()
        .map_err(|err| SendError::Permanent(format!("from address {}: {err}", config.from)))?;
    let to = notification.new.recipient.parse().map_err(|err| {
        SendError::Permanent(format!("address {}: {err}", notification.new.recipient))
    })?;
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(payload.subject)
        .header(ContentType::TEXT_PLAIN)
        .body(payload.body)
        .map_err(|err| SendError::Permanent(format!("cannot make the mail: {err}")))?;
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
        .port(config.port)
        .timeout(Some(timeout));
    if config.starttls {
        let mut tls = TlsParameters::builder(config.host.clone());
        if let Some(ca_file) = &config.ca_file {
            let pem = tokio::fs::read(ca_file).await.map_err(|err| {
                SendError::Transient(format!("cannot read {}: {err}", ca_file.display()))
            })?;
            let certificate = Certificate::from_pem(&pem)
                .map_err(|err| SendError::Transient(format!("{}: {err}", ca_file.display())))?;
            tls = tls.add_root_certificate(certificate);
        }
        let tls = tls
            .build_rustls()
            .map_err(|err| SendError::Transient(format!("TLS set-up: {err}")))?;
        transport = transport.tls(Tls::Required(tls));
    }
    let transport = transport.build();
    match transport.send(message).await {
        Ok(_) => Ok(()),
        Err(err) if err.is_permanent() => Err(SendError::Permanent(format!(
            "{}:{} refused it: {err}",
            config.host, config.port
        ))),
        Err(err) => Err(SendError::Transient(format!(
            "{}:{}: {err}",
            config.host, config.port
        ))),
    }
}
