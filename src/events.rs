//! The CRM call events: one serde type the tracker builds and queues in
//! the outbox, and the CRM sinks read back.
//!
//! It sits below both `calls` (which builds events) and `crm` (which
//! delivers them) and depends on neither, nor on anything else of the
//! crate but the screening enums it converts from: calls and crm stay
//! independent of each other.
//!
//! The JSON is a public contract (the generic webhook posts it as its
//! body; README, "CRM delivery"): the fields every event carries, `event`
//! naming its kind, and the kind's own fields, in one flat object with its
//! keys in alphabetical order (see [`CallEvent::to_json`]).

use serde::{Deserialize, Serialize};

/// Which way the call goes, seen from the PBX's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl From<crate::screening::Direction> for Direction {
    fn from(d: crate::screening::Direction) -> Self {
        match d {
            crate::screening::Direction::Inbound => Direction::Inbound,
            crate::screening::Direction::Outbound => Direction::Outbound,
        }
    }
}

/// What the CRM should create for the call (`X-CRM-Create`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Create {
    Lead,
    Deal,
    Offer,
    None,
}

impl From<crate::screening::CreateTag> for Create {
    fn from(c: crate::screening::CreateTag) -> Self {
        use crate::screening::CreateTag;
        match c {
            CreateTag::Lead => Create::Lead,
            CreateTag::Deal => Create::Deal,
            CreateTag::Offer => Create::Offer,
            CreateTag::None => Create::None,
        }
    }
}

/// One event of one call: what every event says of the call, and the
/// kind with its own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEvent {
    /// `X-CRM-Call-Id`.
    pub call_id: String,
    pub direction: Direction,
    /// The line's E.164 number (`+4930901820`), if the call has one.
    pub line: Option<String>,
    /// E.164, or `anonymous`.
    pub client: String,
    pub create: Create,
    /// Whether the line creates a lead or deal for this call.
    pub crm_create: bool,
    /// The line's `create = "offer"`.
    pub offer: bool,
    pub source: String,
    /// The responsible person when the event happened.
    pub responsible: Option<String>,
    /// RFC 3339, when the INVITE was forwarded.
    pub start: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kind of an event (`event` in the JSON) and its own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum EventKind {
    #[serde(rename = "call.started")]
    Started,
    #[serde(rename = "call.answered")]
    Answered {
        /// RFC 3339.
        answer: String,
    },
    #[serde(rename = "call.responsible_changed")]
    ResponsibleChanged {
        /// Who was responsible before (the new one is `responsible`).
        previous: Option<String>,
        /// RFC 3339.
        at: String,
    },
    #[serde(rename = "call.ended")]
    Ended(Ended),
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ended {
    /// The final SIP status (200 for a completed call).
    pub status: u16,
    /// `completed`, `cancelled`, `failed` or `expired` (as in the call
    /// log).
    pub outcome: String,
    /// Seconds from answer to end (0 when never answered).
    pub duration: u64,
    /// RFC 3339.
    pub end: String,
    pub answered: bool,
}

impl EventKind {
    /// The kind's name: `call.started`, `call.answered`,
    /// `call.responsible_changed`, `call.ended` (the outbox's `kind`, the
    /// webhook's `X-Sipscreen-Event`).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started => "call.started",
            EventKind::Answered { .. } => "call.answered",
            EventKind::ResponsibleChanged { .. } => "call.responsible_changed",
            EventKind::Ended(_) => "call.ended",
        }
    }
}

/// Why a stored payload is not a call event.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not a call event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("payload is a {payload} event, queued as {queued}")]
    KindMismatch {
        payload: &'static str,
        queued: String,
    },
}

/// What every event of a call says of the call, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct CallFields<'a> {
    pub call_id: &'a str,
    pub direction: Direction,
    pub line: Option<&'a str>,
    pub client: &'a str,
    pub create: Create,
    pub crm_create: bool,
    pub offer: bool,
    pub source: &'a str,
    pub start: &'a str,
}

impl CallFields<'_> {
    /// Run `i` (0, 1, 2) of the fields in an event's key order: the
    /// kind's own keys, `event` and `responsible` come between the runs.
    fn run(&self, i: usize, w: &mut crate::json::Obj<'_>) {
        match i {
            0 => {
                w.str("call_id", self.call_id);
                w.str("client", self.client);
                w.str("create", self.create.as_str());
                w.bool("crm_create", self.crm_create);
                w.str("direction", self.direction.as_str());
            }
            1 => {
                w.opt_str("line", self.line);
                w.bool("offer", self.offer);
            }
            _ => {
                w.str("source", self.source);
                w.str("start", self.start);
            }
        }
    }

    /// The three runs written once, for all the call's events (each of
    /// them then copies its bytes instead of writing nine fields again).
    pub fn written(&self) -> WrittenCall {
        WrittenCall(crate::json::Fields::new(|i, w| self.run(i, w)))
    }
}

/// A call's fields as [`CallFields::written`] wrote them.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenCall(crate::json::Fields<3>);

/// An event's call: its fields, or those written once.
#[derive(Debug, Clone, Copy)]
pub enum CallPart<'a> {
    Fields(CallFields<'a>),
    Written(&'a WrittenCall),
}

impl CallPart<'_> {
    fn run(&self, i: usize, w: &mut crate::json::Obj<'_>) {
        match self {
            CallPart::Fields(f) => f.run(i, w),
            CallPart::Written(x) => w.splice(&x.0, i),
        }
    }
}

/// A [`CallEvent`] borrowed from whatever holds its fields: the tracker
/// writes a payload from its call's state without copying each string
/// into a `CallEvent` first (six allocations an event).
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub call: CallPart<'a>,
    /// The responsible person when the event happened.
    pub responsible: Option<&'a str>,
    pub kind: &'a EventKind,
}

impl EventRef<'_> {
    /// [`CallEvent::to_json`] of the event.
    pub fn to_json(&self) -> String {
        crate::json::object(384, |w| self.fields(w))
    }

    /// [`CallEvent::to_json`] of the event into `out`, in place of what
    /// it held (its buffer reused).
    pub fn write_into(&self, out: &mut String) {
        crate::json::object_in(out, |w| self.fields(w))
    }

    /// [`CallEvent::write_json`] of the event.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut w = crate::json::Obj::new(out);
        self.fields(&mut w);
        w.end();
    }

    fn fields(&self, w: &mut crate::json::Obj<'_>) {
        let k = self.kind;
        match k {
            EventKind::Answered { answer } => w.str("answer", answer),
            EventKind::Ended(e) => w.bool("answered", e.answered),
            EventKind::ResponsibleChanged { at, .. } => w.str("at", at),
            EventKind::Started => {}
        }
        self.call.run(0, w);
        if let EventKind::Ended(e) = k {
            w.num("duration", e.duration);
            w.str("end", &e.end);
        }
        w.str("event", k.name());
        self.call.run(1, w);
        match k {
            EventKind::Ended(e) => w.str("outcome", &e.outcome),
            EventKind::ResponsibleChanged { previous, .. } => {
                w.opt_str("previous", previous.as_deref())
            }
            _ => {}
        }
        w.opt_str("responsible", self.responsible);
        self.call.run(2, w);
        if let EventKind::Ended(e) = k {
            w.num("status", u64::from(e.status));
        }
    }
}

impl CallEvent {
    /// The wire form: one flat JSON object, keys in alphabetical order
    /// (the order the events had when they were built as `json!` objects
    /// and then went through a sorted `serde_json::Value`, so bodies and
    /// their signatures stay the same).
    pub fn to_json(&self) -> String {
        self.borrowed().to_json()
    }

    /// Appends [`CallEvent::to_json`]'s bytes to `out`, written directly
    /// (no `serde_json::Value`, no map): every key of every kind in one
    /// alphabetical list, each written when the kind has it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.borrowed().write_json(out)
    }

    /// The event's fields, borrowed.
    pub fn borrowed(&self) -> EventRef<'_> {
        EventRef {
            call: CallPart::Fields(CallFields {
                call_id: &self.call_id,
                direction: self.direction,
                line: self.line.as_deref(),
                client: &self.client,
                create: self.create,
                crm_create: self.crm_create,
                offer: self.offer,
                source: &self.source,
                start: &self.start,
            }),
            responsible: self.responsible.as_deref(),
            kind: &self.kind,
        }
    }

    /// Reads an outbox payload queued as `kind`.
    pub fn from_outbox(kind: &str, payload: &str) -> Result<CallEvent, PayloadError> {
        let ev: CallEvent = serde_json::from_str(payload)?;
        if ev.kind.name() != kind {
            return Err(PayloadError::KindMismatch {
                payload: ev.kind.name(),
                queued: kind.to_string(),
            });
        }
        Ok(ev)
    }
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl Create {
    pub fn as_str(self) -> &'static str {
        match self {
            Create::Lead => "lead",
            Create::Deal => "deal",
            Create::Offer => "offer",
            Create::None => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind) -> CallEvent {
        CallEvent {
            call_id: "c1".into(),
            direction: Direction::Inbound,
            line: None,
            client: "anonymous".into(),
            create: Create::None,
            crm_create: false,
            offer: false,
            source: "CALL".into(),
            responsible: Some("101".into()),
            start: "2023-11-14T22:13:20.000Z".into(),
            kind,
        }
    }

    #[test]
    fn every_kind_reads_back_as_written() {
        for kind in [
            EventKind::Started,
            EventKind::Answered {
                answer: "2023-11-14T22:13:21.000Z".into(),
            },
            EventKind::ResponsibleChanged {
                previous: None,
                at: "2023-11-14T22:13:22.000Z".into(),
            },
            EventKind::Ended(Ended {
                status: 487,
                outcome: "cancelled".into(),
                duration: 0,
                end: "2023-11-14T22:13:23.000Z".into(),
                answered: false,
            }),
        ] {
            let e = ev(kind);
            let back = CallEvent::from_outbox(e.kind.name(), &e.to_json()).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn a_bad_payload_is_an_error_that_says_why() {
        let e = |kind: &str, payload: &str| {
            CallEvent::from_outbox(kind, payload)
                .unwrap_err()
                .to_string()
        };
        assert!(e("call.started", "not json").starts_with("payload is not a call event: "));
        let unknown = ev(EventKind::Started)
            .to_json()
            .replace("call.started", "call.parked");
        assert!(
            e("call.parked", &unknown).contains("unknown variant `call.parked`"),
            "{}",
            e("call.parked", &unknown)
        );
        let no_status = ev(EventKind::Ended(Ended {
            status: 200,
            outcome: "completed".into(),
            duration: 1,
            end: "x".into(),
            answered: true,
        }))
        .to_json()
        .replace("\"status\":200,", "")
        .replace(",\"status\":200", "");
        assert!(
            e("call.ended", &no_status).contains("missing field `status`"),
            "{}",
            e("call.ended", &no_status)
        );
        assert_eq!(
            e("call.ended", &ev(EventKind::Started).to_json()),
            "payload is a call.started event, queued as call.ended"
        );
    }
}

#[cfg(test)]
mod same_bytes {
    //! The direct writer against the path it replaced (serialize to a
    //! sorted `serde_json::Value`, then to a string): the outbox payloads
    //! and the webhook signatures depend on the bytes.
    use super::*;

    fn through_value(e: &CallEvent) -> String {
        serde_json::to_value(e).unwrap().to_string()
    }

    /// A small deterministic generator (xorshift), so a failure repeats.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[(self.next() % xs.len() as u64) as usize]
        }

        /// Strings with what JSON escapes: quotes, backslashes, control
        /// characters, non-ASCII, and the empty string.
        fn text(&mut self) -> String {
            let parts = [
                "",
                "+4930901820",
                "anonymous",
                "a\"b",
                "back\\slash",
                "tab\there",
                "nl\n",
                "\u{1}\u{1f}",
                "Müller",
                "☎",
                "😀",
                "</script>",
                "2023-11-14T22:13:20.000Z",
            ];
            let n = self.next() % 3;
            (0..n).map(|_| self.pick(&parts)).collect()
        }

        fn opt(&mut self) -> Option<String> {
            (!self.next().is_multiple_of(3)).then(|| self.text())
        }
    }

    #[test]
    fn the_direct_writer_writes_the_bytes_the_value_path_wrote() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let kind = match g.next() % 4 {
                0 => EventKind::Started,
                1 => EventKind::Answered { answer: g.text() },
                2 => EventKind::ResponsibleChanged {
                    previous: g.opt(),
                    at: g.text(),
                },
                _ => EventKind::Ended(Ended {
                    status: g.pick(&[0, 200, 408, 487, 603, u16::MAX]),
                    outcome: g.text(),
                    duration: g.pick(&[0, 1, 59, 3600, u64::MAX]),
                    end: g.text(),
                    answered: g.next().is_multiple_of(2),
                }),
            };
            let e = CallEvent {
                call_id: g.text(),
                direction: g.pick(&[Direction::Inbound, Direction::Outbound]),
                line: g.opt(),
                client: g.text(),
                create: g.pick(&[Create::Lead, Create::Deal, Create::Offer, Create::None]),
                crm_create: g.next().is_multiple_of(2),
                offer: g.next().is_multiple_of(2),
                source: g.text(),
                responsible: g.opt(),
                start: g.text(),
                kind,
            };
            assert_eq!(e.to_json(), through_value(&e), "{e:?}");
        }
    }
}
