//! Call lifecycle: what the proxy saw of each Record-Routed INVITE dialog.
//!
//! The SIP path only *reports*: [`CallEvents::send`] is a non-blocking
//! `try_send` of a small event into a bounded channel (when it is full the
//! event is counted and dropped, never waited for). A dedicated thread, the
//! [`tracker`], owns all call state: started, ringing, answered, failed
//! (final >= 300, with its code), cancelled, ended by BYE with its
//! duration, transfers by REFER. State is bounded: a call with no activity
//! for `[calls] max_call_secs` is ended as `expired`, and the number of
//! calls tracked at once is capped. Every call, exception calls included,
//! is written to the call log ([`log`]), and so is an INVITE the proxy
//! refused itself (608 for a failed verification); CRM events go to the durable
//! outbox for `log` calls only. Calls in progress are kept in the store
//! ([`saved`]) in the same transaction as their events, and restored at
//! start: a restart (SIGTERM, crash, kill -9) ends no call and loses none.

pub mod log;
pub mod saved;
pub mod tracker;

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::SystemTime;

use bytes::Bytes;

use crate::config::Verdict;
use crate::metrics::Metrics;
use crate::screening::verstat::Attest;
use crate::screening::{Client, CreateTag, Direction, Reason};

/// Events the channel holds before the SIP path starts dropping them.
pub const CHANNEL: usize = 65_536;

/// A call the proxy has just screened and forwarded.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCall {
    /// `X-CRM-Call-Id`.
    pub call_id: String,
    pub direction: Direction,
    pub verdict: Verdict,
    pub client: Client,
    pub line: Option<u64>,
    pub create: CreateTag,
    pub source: String,
    /// Why the verdict (`X-CRM-Reason`).
    pub reason: Option<Reason>,
    /// The trusted trunk's STIR/SHAKEN result.
    pub attest: Attest,
    pub responsible: Option<String>,
    /// The line's `change_responsible_on_transfer`.
    pub change_responsible_on_transfer: bool,
    /// The line's `update_directory_on_transfer`.
    pub update_directory_on_transfer: bool,
    /// The line's `create = "offer"`.
    pub offer: bool,
}

/// What the SIP path reports.
#[derive(Debug)]
pub enum SipEvent {
    /// A dialog-creating INVITE was forwarded. Every event names its call
    /// by SIP Call-ID: a slice of the received message (no copy on the SIP
    /// path; the tracker copies it once per new call).
    Invite {
        sip_call_id: Bytes,
        call: Box<NewCall>,
        at: SystemTime,
    },
    /// A dialog-creating INVITE was answered by the proxy itself with
    /// final status `code` instead of being forwarded (608: a failed
    /// verification on a `reject` line). The call goes to the call log as
    /// it is, never to the CRM; retransmissions of the INVITE are reported
    /// again and logged once.
    Refused {
        sip_call_id: Bytes,
        call: Box<NewCall>,
        code: u16,
        at: SystemTime,
    },
    /// A response to an INVITE was forwarded.
    InviteResponse {
        sip_call_id: Bytes,
        code: u16,
        at: SystemTime,
    },
    /// BYE, CANCEL or REFER was forwarded (`refer_to`: the REFER's target
    /// user).
    Request {
        sip_call_id: Bytes,
        kind: RequestKind,
        refer_to: Option<String>,
        at: SystemTime,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Bye,
    Cancel,
    Refer,
    /// An in-dialog INVITE/UPDATE from the PBX with a P-Asserted-Identity:
    /// `refer_to` is the connected party's user.
    Reinvite,
}

/// The SIP path's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct CallEvents {
    tx: SyncSender<SipEvent>,
    metrics: Arc<Metrics>,
}

impl CallEvents {
    pub fn new(tx: SyncSender<SipEvent>, metrics: Arc<Metrics>) -> Self {
        CallEvents { tx, metrics }
    }

    /// Hands the event to the tracker, or counts it as dropped.
    pub fn send(&self, ev: SipEvent) {
        match self.tx.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.call_event_dropped();
            }
        }
    }
}

pub use crate::clock::unix_ms as ms;
