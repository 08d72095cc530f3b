//! The generic webhook: each event is POSTed as JSON with
//! `X-Sipscreen-Event: <kind>` and
//! `X-Sipscreen-Signature: sha256=<hex HMAC-SHA256 of the body>` (when a
//! secret is configured), so the receiver can check it came from us.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{CrmError, Delivery, Sink, by_status};
use crate::events::CallEvent;
use crate::store::{OutEvent, OutboxStore};

/// The `method` its errors name.
const POST: &str = "webhook POST";

pub struct Webhook {
    name: String,
    url: String,
    secret: Option<Vec<u8>>,
    http: reqwest::Client,
}

impl Webhook {
    pub fn new(
        name: &str,
        url: &str,
        secret: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Self, CrmError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| CrmError::Client(e.into()))?;
        Ok(Webhook {
            name: name.to_string(),
            url: url.to_string(),
            secret,
            http,
        })
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait::async_trait]
impl Sink for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    /// Posts the payload as queued (the tracker wrote it with
    /// [`CallEvent::to_json`]) once it reads as a call event of its kind;
    /// anything else is refused for good.
    async fn deliver(&self, ev: &OutEvent, _store: &Arc<dyn OutboxStore>) -> Delivery {
        let event = match CallEvent::from_outbox(&ev.kind, &ev.payload) {
            Ok(e) => e,
            Err(e) => return Delivery::Rejected(e.into()),
        };
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-sipscreen-event", event.kind.name())
            .body(ev.payload.clone());
        if let Some(s) = &self.secret {
            req = req.header("x-sipscreen-signature", signature(s, ev.payload.as_bytes()));
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                by_status(POST, status, &body)
            }
            Err(e) => Delivery::Retry(CrmError::Transport {
                method: POST,
                error: e.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
