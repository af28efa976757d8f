//! Webhooks: a JSON POST signed with HMAC-SHA256 over the body (header
//! `X-Buildbot-Signature: sha256=HEX`), the key read from the notifier's `secret_file` at each
//! delivery. A 2xx answer is delivered; a 5xx, 408, 429, a timeout or no connection is tried
//! again; any other answer (4xx, a redirect) is a refusal for good.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::SendError;
use crate::master::config::{WebhookConfig, read_webhook_key};
use crate::master::store::Notification;

/// The one HTTP client of the delivery task: no redirects (a POST redirected is not what the
/// receiver was configured to take), a bounded connect.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("buildbot/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// `sha256=HEX` of HMAC-SHA256 of `body` under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", hex::encode(digest))
}

pub async fn send(
    http: &reqwest::Client,
    config: &WebhookConfig,
    timeout: Duration,
    notification: &Notification,
) -> Result<(), SendError> {
    let body = notification.new.payload.clone().into_bytes();
    let mut request = http
        .post(&config.url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Buildbot-Delivery", notification.id.to_string());
    if let Some(kind) = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|value| value.get("type")?.as_str().map(str::to_string))
    {
        request = request.header("X-Buildbot-Event", kind);
    }
    if let Some(secret_file) = &config.secret_file {
        // Read again for each delivery, checked again: the file may have changed since the
        // config was read. Blocking file I/O, off the runtime.
        let path = secret_file.clone();
        let key = tokio::task::spawn_blocking(move || read_webhook_key(&path))
            .await
            .map_err(|err| SendError::Transient(format!("reading the signing key failed: {err}")))?
            .map_err(SendError::Transient)?;
        let key = key.trim_ascii();
        request = request.header("X-Buildbot-Signature", signature(key, &body));
    }
    let answer = request
        .body(body)
        .send()
        .await
        .map_err(|err| SendError::Transient(format!("{}: {}", config.url, without_url(err))))?;
    let status = answer.status();
    if status.is_success() {
        Ok(())
    } else if status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        Err(SendError::Transient(format!(
            "{} answered {status}",
            config.url
        )))
    } else {
        Err(SendError::Permanent(format!(
            "{} answered {status}",
            config.url
        )))
    }
}

/// reqwest's error with its causes, without the URL it repeats (the caller says it once).
fn without_url(err: reqwest::Error) -> String {
    let timed_out = err.is_timeout();
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if timed_out {
        text = format!("timed out ({text})");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_rfc_4231s_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
