//! A tracked call as the store keeps it across restarts: everything the
//! tracker needs to finish the call as if it had never stopped (the
//! `NewCall`, start, answer, ringing / cancelled, the responsible person,
//! transfers), as JSON with the times in unix nanoseconds. The SIP Call-ID
//! and the last activity are columns of their own
//! ([`crate::store::ActiveCall`]).

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::NewCall;
use super::log::Transfer;
use crate::config::Verdict;
use crate::screening::verstat::Attest;
use crate::screening::{Client, CreateTag, Direction, Reason};

/// The format's version, written in every row (a later release that
/// changes the format reads both or migrates).
const FORMAT: u32 = 1;

/// What `Call` holds, minus its activity clock.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub new: NewCall,
    pub start: SystemTime,
    pub ringing: bool,
    pub answer: Option<SystemTime>,
    pub cancelled: bool,
    pub responsible: Option<String>,
    pub transfers: Vec<Transfer>,
}

/// The row's JSON. Written borrowed from the call (no copy of its
/// strings), read back owned.
#[derive(Serialize, Deserialize)]
struct Saved<'a> {
    format: u32,
    call_id: Cow<'a, str>,
    direction: Cow<'a, str>,
    verdict: Cow<'a, str>,
    /// E.164 digits; absent: anonymous.
    client: Option<u64>,
    line: Option<u64>,
    create: Cow<'a, str>,
    source: Cow<'a, str>,
    /// `X-CRM-Reason` (absent in rows of earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// `X-CRM-Attest` (absent in rows of earlier releases: `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attest: Option<Cow<'a, str>>,
    /// The responsible person the call started with.
    responsible_at_start: Option<Cow<'a, str>>,
    change_responsible_on_transfer: bool,
    update_directory_on_transfer: bool,
    offer: bool,
    start_ns: u64,
    ringing: bool,
    answer_ns: Option<u64>,
    cancelled: bool,
    responsible: Option<Cow<'a, str>>,
    transfers: Cow<'a, [Transfer]>,
}

fn ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// The JSON of a call's state: [`Saved`]'s fields in its order, written
/// directly (the bytes serde writes for `Saved`: `the_writer_writes_what_serde_writes`).
pub fn to_json(s: &State) -> String {
    let mut out = String::with_capacity(512);
    write_json(s, &mut out);
    out
}

/// [`to_json`] into `out`, in place of what it held (its buffer reused).
pub fn write_json(s: &State, out: &mut String) {
    crate::json::object_in(out, |o| fields(s, o))
}

fn fields(s: &State, o: &mut crate::json::Obj<'_>) {
    let n = &s.new;
    o.num("format", u64::from(FORMAT));
    o.str("call_id", &n.call_id);
    o.str("direction", n.direction.as_str());
    o.str("verdict", n.verdict.as_str());
    o.opt_num(
        "client",
        match n.client {
            Client::Number(d) => Some(d),
            Client::Anonymous => None,
        },
    );
    o.opt_num("line", n.line);
    o.str("create", n.create.as_str());
    o.str("source", &n.source);
    if let Some(r) = n.reason {
        o.str("reason", &r.to_string());
    }
    if n.attest != Attest::None {
        o.str("attest", n.attest.as_str());
    }
    o.opt_str("responsible_at_start", n.responsible.as_deref());
    o.bool(
        "change_responsible_on_transfer",
        n.change_responsible_on_transfer,
    );
    o.bool(
        "update_directory_on_transfer",
        n.update_directory_on_transfer,
    );
    o.bool("offer", n.offer);
    o.num("start_ns", ns(s.start));
    o.bool("ringing", s.ringing);
    o.opt_num("answer_ns", s.answer.map(ns));
    o.bool("cancelled", s.cancelled);
    o.opt_str("responsible", s.responsible.as_deref());
    o.list("transfers", &s.transfers, Transfer::write_json);
}

/// A call's state from its JSON; the error says what is wrong with it.
pub fn from_json(text: &str) -> Result<State, String> {
    let s: Saved = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if s.format != FORMAT {
        return Err(format!("format {} (this release reads {FORMAT})", s.format));
    }
    let direction = match &*s.direction {
        "inbound" => Direction::Inbound,
        "outbound" => Direction::Outbound,
        d => return Err(format!("unknown direction {d:?}")),
    };
    let verdict = match &*s.verdict {
        "log" => Verdict::Log,
        "exception" => Verdict::Exception,
        v => return Err(format!("unknown verdict {v:?}")),
    };
    let create = match &*s.create {
        "lead" => CreateTag::Lead,
        "deal" => CreateTag::Deal,
        "offer" => CreateTag::Offer,
        "none" => CreateTag::None,
        c => return Err(format!("unknown create {c:?}")),
    };
    let reason = match s.reason.as_deref() {
        None => None,
        Some(r) => Some(Reason::parse(r).ok_or_else(|| format!("unknown reason {r:?}"))?),
    };
    let attest = match s.attest.as_deref() {
        None => Attest::None,
        Some(a) => Attest::parse(a).ok_or_else(|| format!("unknown attest {a:?}"))?,
    };
    Ok(State {
        new: NewCall {
            reason,
            attest,
            call_id: s.call_id.into_owned(),
            direction,
            verdict,
            client: s.client.map_or(Client::Anonymous, Client::Number),
            line: s.line,
            create,
            source: s.source.into_owned(),
            responsible: s.responsible_at_start.map(Cow::into_owned),
            change_responsible_on_transfer: s.change_responsible_on_transfer,
            update_directory_on_transfer: s.update_directory_on_transfer,
            offer: s.offer,
        },
        start: time(s.start_ns),
        ringing: s.ringing,
        answer: s.answer_ns.map(time),
        cancelled: s.cancelled,
        responsible: s.responsible.map(Cow::into_owned),
        transfers: s.transfers.into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state through serde's `Saved` (the writer's reference).
    fn through_serde(s: &State) -> String {
        let n = &s.new;
        let b = |o: &'static str| Cow::Borrowed(o);
        let saved = Saved {
            format: FORMAT,
            call_id: Cow::Borrowed(&n.call_id),
            direction: b(n.direction.as_str()),
            verdict: b(n.verdict.as_str()),
            client: match n.client {
                Client::Number(d) => Some(d),
                Client::Anonymous => None,
            },
            line: n.line,
            create: b(n.create.as_str()),
            source: Cow::Borrowed(&n.source),
            reason: n.reason.map(|r| r.to_string()),
            attest: (n.attest != Attest::None).then(|| b(n.attest.as_str())),
            responsible_at_start: n.responsible.as_deref().map(Cow::Borrowed),
            change_responsible_on_transfer: n.change_responsible_on_transfer,
            update_directory_on_transfer: n.update_directory_on_transfer,
            offer: n.offer,
            start_ns: ns(s.start),
            ringing: s.ringing,
            answer_ns: s.answer.map(ns),
            cancelled: s.cancelled,
            responsible: s.responsible.as_deref().map(Cow::Borrowed),
            transfers: Cow::Borrowed(&s.transfers),
        };
        serde_json::to_string(&saved).expect("plain data serialises")
    }

    /// States with every optional field set and unset, strings that need
    /// escaping, and zero to two transfers.
    fn states() -> Vec<State> {
        let mut out = Vec::new();
        for i in 0..16u32 {
            let bit = |b: u32| i & (1 << b) != 0;
            out.push(State {
                new: NewCall {
                    call_id: format!("crm-{i}\"\\\n"),
                    direction: if bit(0) {
                        Direction::Outbound
                    } else {
                        Direction::Inbound
                    },
                    verdict: if bit(1) {
                        Verdict::Exception
                    } else {
                        Verdict::Log
                    },
                    client: if bit(2) {
                        Client::Anonymous
                    } else {
                        Client::Number(4917000000001 + u64::from(i))
                    },
                    line: (!bit(3)).then_some(4930901820),
                    create: [
                        CreateTag::Lead,
                        CreateTag::Deal,
                        CreateTag::Offer,
                        CreateTag::None,
                    ][i as usize % 4],
                    source: if bit(1) {
                        "WEB".into()
                    } else {
                        "Wérbung\t".into()
                    },
                    reason: bit(0).then(|| {
                        Reason::Allow(
                            crate::screening::exceptions::Rule::parse_value("+49170*", true)
                                .unwrap(),
                        )
                    }),
                    attest: if bit(2) { Attest::B } else { Attest::None },
                    responsible: (!bit(1)).then(|| "101".into()),
                    change_responsible_on_transfer: bit(3),
                    update_directory_on_transfer: bit(0),
                    offer: bit(2),
                },
                start: time(1_700_000_000_123_456_789 + u64::from(i)),
                ringing: bit(1),
                answer: bit(3).then(|| time(1_700_000_003_000_000_001)),
                cancelled: bit(2),
                responsible: bit(0).then(|| "205".into()),
                transfers: (0..i % 3)
                    .map(|k| Transfer {
                        at: format!("2023-11-14T22:13:2{k}Z"),
                        to: format!("20{k}\""),
                    })
                    .collect(),
            });
        }
        out
    }

    #[test]
    fn the_writer_writes_what_serde_writes() {
        for s in states() {
            assert_eq!(to_json(&s), through_serde(&s));
            assert_eq!(from_json(&to_json(&s)).unwrap(), s);
        }
    }

    #[test]
    fn every_field_comes_back_exactly() {
        let s = State {
            new: NewCall {
                call_id: "crm-1".into(),
                direction: Direction::Outbound,
                verdict: Verdict::Exception,
                client: Client::Number(4917000000001),
                line: Some(4930901820),
                create: CreateTag::Deal,
                source: "WEB".into(),
                reason: Some(Reason::Allow(
                    crate::screening::exceptions::Rule::parse_value("+49170*", true).unwrap(),
                )),
                attest: Attest::B,
                responsible: Some("101".into()),
                change_responsible_on_transfer: true,
                update_directory_on_transfer: false,
                offer: true,
            },
            start: time(1_700_000_000_123_456_789),
            ringing: true,
            answer: Some(time(1_700_000_003_000_000_001)),
            cancelled: true,
            responsible: Some("205".into()),
            transfers: vec![Transfer {
                at: "2023-11-14T22:13:25Z".into(),
                to: "205".into(),
            }],
        };
        assert_eq!(from_json(&to_json(&s)).unwrap(), s);
        let mut anon = s.clone();
        anon.new.client = Client::Anonymous;
        anon.new.direction = Direction::Inbound;
        anon.answer = None;
        assert_eq!(from_json(&to_json(&anon)).unwrap(), anon);
    }

    #[test]
    fn a_damaged_row_is_refused_with_its_reason() {
        assert!(from_json("{").unwrap_err().contains("EOF"));
        let good = to_json(&State {
            new: NewCall {
                call_id: "c".into(),
                direction: Direction::Inbound,
                verdict: Verdict::Log,
                client: Client::Anonymous,
                line: None,
                create: CreateTag::None,
                source: String::new(),
                reason: None,
                attest: Attest::None,
                responsible: None,
                change_responsible_on_transfer: false,
                update_directory_on_transfer: false,
                offer: false,
            },
            start: UNIX_EPOCH,
            ringing: false,
            answer: None,
            cancelled: false,
            responsible: None,
            transfers: vec![],
        });
        let bad = good.replace("\"inbound\"", "\"sideways\"");
        assert_eq!(
            from_json(&bad).unwrap_err(),
            "unknown direction \"sideways\""
        );
        let later = good.replace("\"format\":1", "\"format\":9");
        assert!(from_json(&later).unwrap_err().contains("format 9"));
    }
}
