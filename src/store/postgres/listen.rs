//! The change-log listener: a dedicated connection (not one of the pool's;
//! `application_name` `sipscreen-listen`, so an operator can find it in
//! `pg_stat_activity`) that `LISTEN`s on [`super::CHANNEL`] and passes the
//! notified sequence numbers to the follower. Lost, it reconnects with a
//! backoff (100 ms doubling to 5 s) and says so, and the follower catches
//! up by sequence number: nothing is lost with the notifications missed
//! meanwhile.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc::Sender;
use tokio_postgres::AsyncMessage;

use super::{CHANNEL, Target};
use crate::shutdown::Shutdown;
use crate::store::follow::Signal;

/// The listener's `application_name`.
pub const APPLICATION_NAME: &str = "sipscreen-listen";

/// Listens until shutdown, sending what it hears to `tx`.
pub async fn run(target: Target, tx: Sender<Signal>, mut shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    loop {
        let mut cfg = target.config.clone();
        cfg.application_name(APPLICATION_NAME);
        // A server gone without a word (a partition) is noticed by TCP.
        cfg.keepalives(true);
        cfg.keepalives_idle(Duration::from_secs(10));
        let connected = tokio::select! {
            _ = shutdown.wait() => return,
            c = cfg.connect(target.tls.clone()) => c,
        };
        match connected {
            Ok((client, mut conn)) => {
                let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel::<Option<i64>>();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                let _ = ntx.send(n.payload().trim().parse().ok());
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %super::error_text(&e), "the change-log listener's connection failed");
                                break;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        if failing {
                            tracing::info!(store = %target.shown, "listening to the change log again");
                        } else {
                            tracing::info!(store = %target.shown, "listening to the change log");
                        }
                        backoff = Duration::from_millis(100);
                        if tx.send(Signal::Listening).await.is_err() {
                            return;
                        }
                        loop {
                            tokio::select! {
                                _ = shutdown.wait() => {
                                    driver.abort();
                                    return;
                                }
                                n = nrx.recv() => match n {
                                    // A payload that is not a number: read anyway.
                                    Some(seq) => {
                                        let seq = seq.unwrap_or(i64::MAX);
                                        if tx.send(Signal::Notified(seq)).await.is_err() {
                                            return;
                                        }
                                    }
                                    None => break,
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %super::error_text(&e), "LISTEN on the change log failed");
                    }
                }
                driver.abort();
                drop(client);
                tracing::warn!(store = %target.shown, "the change-log listener lost its connection; reconnecting (changes are caught up by sequence)");
                failing = true;
                if tx.send(Signal::Lost).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(store = %target.shown, error = %super::error_text(&e), "the change-log listener cannot connect; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
