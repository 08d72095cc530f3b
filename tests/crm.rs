//! Call lifecycle and CRM delivery against an in-process test CRM (a real
//! HTTP server on loopback that records every request, and in limit mode
//! refuses each with 503 QUERY_LIMIT_EXCEEDED, recording the refusal): Bitrix24 register/finish parameters
//! for inbound, outbound, missed, busy and cancelled calls; exception calls
//! never sent but logged; order per call; nothing lost across a CRM outage
//! or a restart of sipscreen; the request rate never above the limit; the
//! webhook's HMAC signature; a REFER changes the responsible person; the
//! call log API.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use common::crm::*;
use common::*;
use serde_json::{Value, json};

/// `GET /api/v1/calls{query}` with the view token.
async fn call_log(h: &Harness, query: &str) -> Value {
    let url = format!("http://{}/api/v1/calls{query}", h.server.admin.unwrap());
    reqwest::Client::new()
        .get(&url)
        .bearer_auth("view-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn sinks(crm: SocketAddr, rate: f64, burst: u32) -> String {
    format!(
        "\n[crm]\n{}[[crm.webhook]]\nname = \"hook\"\nurl = \"http://{crm}/hook\"\nsecret = \"s3cret\"\n",
        app_sink("portal", crm, rate, burst)
    )
}

/// Plays one call through the harness: INVITE from `from_trunk` (else
/// from the PBX), then the given responses from the callee, then the
/// caller's ACK/BYE or CANCEL.
struct Call<'a> {
    h: &'a Harness,
    id: String,
    invite: String,
    inbound: bool,
}

impl<'a> Call<'a> {
    async fn inbound(h: &'a Harness, caller: &str, line: &str, id: &str) -> Call<'a> {
        let (_, got, _) = h.invite_from_trunk(caller, line, id, "").await;
        Call {
            h,
            id: id.to_string(),
            invite: got,
            inbound: true,
        }
    }

    async fn outbound(h: &'a Harness, line: &str, callee: &str, id: &str) -> Call<'a> {
        let inv = invite(h.sip_udp, h.pbx.local_addr().unwrap(), callee, line, id, "");
        h.pbx.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
        let (got, _) = recv(&h.trunk).await;
        Call {
            h,
            id: id.to_string(),
            invite: got,
            inbound: false,
        }
    }

    fn sides(&self) -> (&tokio::net::UdpSocket, &tokio::net::UdpSocket) {
        if self.inbound {
            (&self.h.trunk, &self.h.pbx)
        } else {
            (&self.h.pbx, &self.h.trunk)
        }
    }

    async fn respond(&self, code: u16, reason: &str) {
        let (caller, callee) = self.sides();
        let contact = format!("sip:agent@{}", callee.local_addr().unwrap());
        let r = response_to(&self.invite, code, reason, "callee-tag", &contact);
        callee.send_to(r.as_bytes(), self.h.sip_udp).await.unwrap();
        recv(caller).await;
    }

    /// An in-dialog request from the caller (`BYE`, `REFER`), through our
    /// Record-Route, answered 200 by the callee.
    async fn in_dialog(&self, method: &str, cseq: u32, extra: &str) {
        let (caller, callee) = self.sides();
        let req = format!(
            "{method} sip:agent@{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-{method}-{}\r\nRoute: <sip:{};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:x@carrier.example>;tag=f-{}\r\nTo: <sip:y@carrier.example>;tag=callee-tag\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n",
            callee.local_addr().unwrap(),
            caller.local_addr().unwrap(),
            self.id,
            self.h.me(),
            self.id,
            self.id
        );
        caller
            .send_to(req.as_bytes(), self.h.sip_udp)
            .await
            .unwrap();
        let (fwd, _) = recv(callee).await;
        assert!(fwd.starts_with(method), "{fwd}");
    }

    async fn cancel(&self) {
        let (caller, callee) = self.sides();
        let c = format!(
            "CANCEL {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-{}\r\nMax-Forwards: 70\r\nFrom: <sip:x@carrier.example>;tag=f-{}\r\nTo: <sip:y@carrier.example>\r\nCall-ID: {}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
            self.invite
                .lines()
                .next()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap(),
            caller.local_addr().unwrap(),
            self.id,
            self.id,
            self.id
        );
        caller.send_to(c.as_bytes(), self.h.sip_udp).await.unwrap();
        recv(callee).await;
        self.respond(487, "Request Terminated").await;
    }
}

/// The first call's card was hidden once, for user 101, between its
/// register and its finish.
fn hidden_once_before_the_finish(crm: &Crm) {
    let hides = crm.calls("telephony.externalcall.hide");
    assert_eq!(hides.len(), 1, "{hides:?}");
    assert_eq!(hides[0]["CALL_ID"], "externalCall.0");
    assert_eq!(hides[0]["USER_ID"], "101");
    let order: Vec<String> = crm
        .seen()
        .iter()
        .filter(|s| s.refused.is_none() && s.method.starts_with("telephony."))
        .map(|s| s.method.clone())
        .collect();
    assert_eq!(
        order,
        [
            "telephony.externalcall.register",
            "telephony.externalcall.hide",
            "telephony.externalcall.finish"
        ]
    );
    assert_eq!(
        crm.calls.lock().unwrap()["externalCall.0"].hidden_for,
        ["101"]
    );
}

#[tokio::test]
async fn cancelled_offered_call_is_hidden_before_its_finish() {
    let (crm, addr) = Crm::start().await;
    let h = Harness::start_with("udp", &sinks(addr, 50.0, 50)).await;
    let call = Call::inbound(&h, "+4917011111112", "+4930901820", "crm-cancelled").await;
    call.respond(180, "Ringing").await;
    call.cancel().await;
    crm.wait_for("telephony.externalcall.finish", 1).await;
    let fin = &crm.calls("telephony.externalcall.finish")[0];
    assert_eq!(fin["STATUS_CODE"], "304", "{fin}");
    // Shown to the responsible (SHOW=1), never answered: hidden at the
    // end, once, before the finish.
    hidden_once_before_the_finish(&crm);
}

#[tokio::test]
async fn answered_inbound_call_registers_and_finishes_with_its_duration() {
    let (crm, addr) = Crm::start().await;
    crm.crm_answer.lock().unwrap().insert(
        "+4917011111111".into(),
        json!({"CRM_ENTITY_TYPE": "CONTACT", "CRM_ENTITY_ID": 42}),
    );
    let h = Harness::start_with("udp", &sinks(addr, 50.0, 50)).await;
    let call = Call::inbound(&h, "+4917011111111", "+4930901820", "crm-answered").await;
    let tag = header(&call.invite, "X-CRM-Call-Id").unwrap();
    call.respond(180, "Ringing").await;
    // The tracker times the call by when the proxy forwarded the 200 and
    // the BYE: between `inner` and `outer` (the mapping of a longer
    // duration is pinned in the_json_of_each_event_kind_is_pinned and in
    // the Bitrix24 sink's tests).
    let before_200 = Instant::now();
    call.respond(200, "OK").await;
    let after_200 = Instant::now();
    call.in_dialog("BYE", 2, "").await;
    let (inner, outer) = (after_200.elapsed(), before_200.elapsed());
    crm.wait_for("telephony.externalcall.finish", 1).await;

    let reg = &crm.calls("telephony.externalcall.register")[0];
    assert_eq!(reg["PHONE_NUMBER"], "+4917011111111");
    assert_eq!(reg["LINE_NUMBER"], "+4930901820");
    assert_eq!(reg["TYPE"], 2);
    assert_eq!(
        reg["CRM_CREATE"], 0,
        "line +4930901820 offers, it does not create"
    );
    assert_eq!(reg["SHOW"], 1);
    assert_eq!(reg["CRM_SOURCE"], "ADVERTISING");
    assert_eq!(reg["USER_ID"], "101", "first member of the line's queue");
    assert_eq!(reg["EXTERNAL_CALL_ID"], tag.as_str());
    let fin = &crm.calls("telephony.externalcall.finish")[0];
    assert_eq!(fin["CALL_ID"], "externalCall.0");
    assert_eq!(fin["STATUS_CODE"], "200");
    // The card offered to the responsible is hidden once answered,
    // before the finish.
    hidden_once_before_the_finish(&crm);
    let duration = fin["DURATION"].as_u64().unwrap();
    assert!(
        (inner.as_secs()..=outer.as_secs()).contains(&duration),
        "{fin}: {inner:?}..{outer:?}"
    );

    // The webhook got every event, signed (its own worker: wait for it).
    until(
        || crm.hooks().len() >= 3,
        || "webhook events missing".into(),
    )
    .await;
    let hooks = crm.hooks();
    let kinds: Vec<&str> = hooks
        .iter()
        .map(|s| s.body["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["call.started", "call.answered", "call.ended"]);
    for s in &hooks {
        let sig = s.headers["x-sipscreen-signature"].to_str().unwrap();
        assert_eq!(sig, sipscreen::crm::webhook::signature(b"s3cret", &s.raw));
        assert_eq!(s.body["call_id"], tag.as_str());
    }

    // The call log has it.
    let v = call_log(&h, "?verdict=log").await;
    let rec = &v["items"][0];
    assert_eq!(rec["call_id"], tag.as_str());
    assert_eq!(rec["outcome"], "completed");
    assert_eq!(rec["status"], 200);
    assert!(rec["answer"].is_string());
    assert_eq!(
        rec["crm"]["portal"],
        json!({"CRM_ENTITY_TYPE": "CONTACT", "CRM_ENTITY_ID": 42}),
        "what register answered"
    );

    // A lead the portal could not create: in the call log, logged, counted.
    crm.crm_answer.lock().unwrap().insert(
        "+4917011111112".into(),
        json!({"LEAD_CREATION_ERROR": "lead limit reached"}),
    );
    let c = Call::inbound(&h, "+4917011111112", "+4930901821", "crm-nolead").await;
    c.respond(486, "Busy Here").await;
    crm.wait_for("telephony.externalcall.finish", 2).await;
    until(
        || {
            h.server
                .metrics
                .encode()
                .contains("sipscreen_crm_lead_creation_errors_total{sink=\"portal\"} 1")
        },
        || h.server.metrics.encode(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = call_log(&h, "?line=%2B4930901821").await;
        if v["items"][0]["crm"]["portal"]["LEAD_CREATION_ERROR"] == "lead limit reached" {
            break;
        }
        assert!(Instant::now() < deadline, "not in the call log: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn exception_calls_are_logged_but_never_sent() {
    let (crm, addr) = Crm::start().await;
    let h = Harness::start_with("udp", &sinks(addr, 50.0, 50)).await;
    let listed = Call::inbound(&h, "+4915112345678", "+4930901820", "crm-listed").await;
    assert_eq!(
        header(&listed.invite, "X-CRM-Verdict").as_deref(),
        Some("exception")
    );
    listed.respond(200, "OK").await;
    listed.in_dialog("BYE", 2, "").await;
    // A log call after it: once its events arrived, the exception call's
    // would have too.
    let other = Call::inbound(&h, "+4917022222222", "+4930901820", "crm-after").await;
    other.respond(486, "Busy Here").await;
    crm.wait_for("telephony.externalcall.finish", 1).await;
    until(
        || crm.hooks().len() >= 2,
        || format!("webhook: {:?}", crm.hooks()),
    )
    .await;
    let regs = crm.calls("telephony.externalcall.register");
    assert_eq!(regs.len(), 1, "{regs:?}");
    assert_eq!(regs[0]["PHONE_NUMBER"], "+4917022222222");
    let hooks = crm.hooks();
    assert_eq!(hooks.len(), 2, "{hooks:?}");
    assert!(hooks.iter().all(|s| s.body["client"] == "+4917022222222"));

    let v = call_log(&h, "?verdict=exception").await;
    assert_eq!(v["items"][0]["client"], "+4915112345678");
    assert_eq!(v["items"][0]["outcome"], "completed");
    h.stop().await;
}

#[tokio::test]
async fn missed_busy_and_cancelled_calls_map_to_bitrix_status_codes() {
    let (crm, addr) = Crm::start().await;
    let h = Harness::start_with("udp", &sinks(addr, 50.0, 50)).await;
    // Inbound, caller hangs up while it rings: missed.
    let missed = Call::inbound(&h, "+4917033333333", "+4930901820", "crm-missed").await;
    missed.respond(180, "Ringing").await;
    missed.cancel().await;
    // Outbound to a busy number.
    let busy = Call::outbound(&h, "+4930901820", "+4917044444444", "crm-busy").await;
    busy.respond(486, "Busy Here").await;
    // Outbound, the agent gives up: cancelled.
    let gave_up = Call::outbound(&h, "+4930901820", "+4917055555555", "crm-gaveup").await;
    gave_up.cancel().await;
    crm.wait_for("telephony.externalcall.finish", 3).await;

    let regs = crm.calls("telephony.externalcall.register");
    let types: Vec<(Value, Value)> = regs
        .iter()
        .map(|r| (r["PHONE_NUMBER"].clone(), r["TYPE"].clone()))
        .collect();
    assert_eq!(
        types,
        [
            (json!("+4917033333333"), json!(2)),
            (json!("+4917044444444"), json!(1)),
            (json!("+4917055555555"), json!(1))
        ]
    );
    assert_eq!(regs[1]["LINE_NUMBER"], "+4930901820");
    let codes: Vec<Value> = crm
        .calls("telephony.externalcall.finish")
        .iter()
        .map(|f| f["STATUS_CODE"].clone())
        .collect();
    assert_eq!(codes, [json!("304"), json!("486"), json!("603-S")]);
    h.stop().await;
}

#[tokio::test]
async fn a_crm_outage_loses_nothing_keeps_order_and_respects_the_rate() {
    let (crm, addr) = Crm::start().await;
    crm.mode.store(LIMIT, Ordering::Relaxed);
    let (rate, burst) = (10.0, 3);
    let h = Harness::start_with("udp", &sinks(addr, rate, burst)).await;
    for i in 0..4 {
        let c = Call::inbound(
            &h,
            &format!("+491706666666{i}"),
            "+4930901820",
            &format!("crm-out{i}"),
        )
        .await;
        c.respond(200, "OK").await;
        c.in_dialog("BYE", 2, "").await;
    }
    // The CRM refuses with 503 QUERY_LIMIT_EXCEEDED: the sink tries the
    // first call's register, backs off, and tries it again.
    until(
        || crm.refusals().len() >= 3,
        || format!("refused so far: {:?}", crm.refusals()),
    )
    .await;
    let refused = crm.refusals();
    for r in &refused {
        assert_eq!(
            r.refused,
            Some((StatusCode::SERVICE_UNAVAILABLE, "QUERY_LIMIT_EXCEEDED"))
        );
        assert!(
            r.method == "telephony.externalcall.register" || r.method == "batch",
            "{r:?}"
        );
        let (method, params) = first_command(r);
        assert_eq!(method, "telephony.externalcall.register", "{r:?}");
        assert_eq!(params["PHONE_NUMBER"], "+4917066666660", "{r:?}");
    }
    crm.mode.store(OK, Ordering::Relaxed);
    crm.wait_for("telephony.externalcall.finish", 4).await;
    assert!(
        crm.seen().iter().any(|s| s.method == "batch"),
        "the backlog went in batch requests"
    );

    // Each call: register before finish, and finish names register's id.
    let rest: Vec<Seen> = crm
        .seen()
        .into_iter()
        .filter(|s| s.method.starts_with("telephony."))
        .collect();
    let mut ids = std::collections::HashMap::new();
    for s in &rest {
        if s.method == "telephony.externalcall.register" {
            ids.insert(
                s.body["EXTERNAL_CALL_ID"].as_str().unwrap().to_string(),
                ids.len(),
            );
        }
    }
    assert_eq!(ids.len(), 4, "every call registered once");
    let regs = crm.calls("telephony.externalcall.register");
    for (k, fin) in crm
        .calls("telephony.externalcall.finish")
        .iter()
        .enumerate()
    {
        let reg_pos = rest
            .iter()
            .position(|s| s.method.ends_with("register") && s.body == regs[k])
            .unwrap();
        let fin_pos = rest
            .iter()
            .position(|s| s.method.ends_with("finish") && &s.body == fin)
            .unwrap();
        assert!(reg_pos < fin_pos, "finish before register");
    }
    // Never above the limit: any n consecutive requests to the portal span
    // at least (n - burst) / rate seconds.
    let portal: Vec<Instant> = crm
        .seen()
        .iter()
        .filter(|s| s.method != "hook" && !s.inner)
        .map(|s| s.at)
        .collect();
    for i in 0..portal.len() {
        for j in i + 1..portal.len() {
            let n = (j - i + 1) as f64;
            let span = portal[j].duration_since(portal[i]).as_secs_f64();
            assert!(
                n <= f64::from(burst) + rate * span + 1.0,
                "{n} requests in {span:.3} s"
            );
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn undelivered_events_survive_a_restart() {
    let (crm, addr) = Crm::start().await;
    crm.mode.store(LIMIT, Ordering::Relaxed);
    let h = Harness::start_with("udp", &sinks(addr, 50.0, 50)).await;
    let c = Call::inbound(&h, "+4917077777777", "+4930901820", "crm-restart").await;
    c.respond(200, "OK").await;
    c.in_dialog("BYE", 2, "").await;
    // The register is queued and refused before the stop.
    until(
        || !crm.refusals().is_empty(),
        || "the register was never tried".into(),
    )
    .await;
    let config = h.config_path.clone();
    let dir = h.dir;
    h.trigger.fire();
    let _ = tokio::time::timeout(WAIT, h.task).await;
    drop(h.server);
    for r in crm.refusals() {
        let (method, params) = first_command(&r);
        assert_eq!(method, "telephony.externalcall.register", "{r:?}");
        assert_eq!(params["PHONE_NUMBER"], "+4917077777777", "{r:?}");
        assert_eq!(r.refused.unwrap().1, "QUERY_LIMIT_EXCEEDED");
    }

    // A new process-equivalent on the same data directory, CRM back up.
    crm.mode.store(OK, Ordering::Relaxed);
    let bound = sipscreen::server::Server::bind(&config)
        .await
        .expect("restarts");
    let (trigger, sd) = sipscreen::shutdown::channel();
    let task = tokio::spawn(bound.run(sd));
    crm.wait_for("telephony.externalcall.finish", 1).await;
    assert_eq!(
        crm.calls("telephony.externalcall.register")[0]["PHONE_NUMBER"],
        "+4917077777777"
    );
    trigger.fire();
    let _ = task.await;
    drop(dir);
}

#[tokio::test]
async fn a_refer_changes_the_responsible_person() {
    let (crm, addr) = Crm::start().await;
    let h = Harness::start_with("udp", &sinks(addr, 50.0, 50)).await;
    let c = Call::inbound(&h, "+4917088888888", "+4930901820", "crm-refer").await;
    c.respond(200, "OK").await;
    c.in_dialog("REFER", 2, "Refer-To: <sip:205@pbx.example>\r\n")
        .await;
    c.in_dialog("BYE", 3, "").await;
    crm.wait_for("telephony.externalcall.finish", 1).await;
    let fin = &crm.calls("telephony.externalcall.finish")[0];
    assert_eq!(fin["USER_ID"], "205", "{fin}");
    let hooks = |crm: &Crm| -> Vec<String> {
        crm.hooks()
            .iter()
            .map(|s| s.body["event"].as_str().unwrap().to_string())
            .collect()
    };
    until(|| hooks(&crm).len() >= 4, || format!("{:?}", hooks(&crm))).await;
    assert_eq!(
        hooks(&crm),
        [
            "call.started",
            "call.answered",
            "call.responsible_changed",
            "call.ended"
        ]
    );
    let v = call_log(&h, "").await;
    assert_eq!(v["items"][0]["transfers"][0]["to"], "205");
    assert_eq!(v["items"][0]["responsible"], "205");
    h.stop().await;
}

#[tokio::test]
async fn oauth_tokens_are_refreshed_and_rotated() {
    let (crm, addr) = Crm::start().await;
    let extra = format!("\n[crm]\n{}", app_sink("app", addr, 50.0, 50));
    let h = Harness::start_with("udp", &extra).await;
    let c = Call::inbound(&h, "+4917099999990", "+4930901820", "crm-oauth1").await;
    c.respond(486, "Busy Here").await;
    crm.wait_for("telephony.externalcall.finish", 1).await;
    let portal = |crm: &Crm| -> Vec<Value> {
        crm.seen()
            .into_iter()
            .filter(|s| !s.inner && s.method != "hook" && s.refused.is_none())
            .map(|s| s.body)
            .collect()
    };
    let first = portal(&crm);
    assert!(
        !first.is_empty() && first.iter().all(|b| b["auth"] == "acc-1"),
        "{first:?}"
    );

    // The portal expires the token: the sink refreshes with the rotated
    // refresh token and goes on.
    crm.expire_tokens();
    let c = Call::inbound(&h, "+4917099999991", "+4930901820", "crm-oauth2").await;
    c.respond(486, "Busy Here").await;
    crm.wait_for("telephony.externalcall.finish", 2).await;
    assert_eq!(*crm.refreshes.lock().unwrap(), ["ref-0", "ref-1"]);
    assert_eq!(portal(&crm).last().unwrap()["auth"], "acc-2");
    assert!(
        !crm.refused_with("expired_token").is_empty(),
        "the expired token was refused once"
    );
    let kept = h.server.store.crm_tokens("app").unwrap().unwrap();
    assert_eq!(
        (
            kept.access.as_str(),
            kept.refresh.as_str(),
            kept.member_id.as_str()
        ),
        ("acc-2", "ref-2", MEMBER_ID),
        "the rotated tokens are kept for the next start"
    );
    h.stop().await;
}

#[tokio::test]
async fn events_past_their_age_go_to_the_dead_letter_table() {
    let (crm, addr) = Crm::start().await;
    crm.mode.store(LIMIT, Ordering::Relaxed);
    let extra = sinks(addr, 50.0, 50).replace("[crm]\n", "[crm]\nmax_event_age_secs = 1\n");
    let h = Harness::start_with("udp", &extra).await;
    let c = Call::inbound(&h, "+4917012121212", "+4930901820", "crm-dead").await;
    c.respond(486, "Busy Here").await;
    let db = h.dir.path().join("data/sipscreen.db");
    let count = |sql: &str| {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap()
    };
    let dead = "SELECT count(*) FROM dead_letter WHERE sink = 'portal' \
                AND reason = 'expired: older than [crm] max_event_age_secs'";
    until(
        || count(dead) >= 2,
        || "events were not dead-lettered".into(),
    )
    .await;
    // Dead events are not sent: none is left for the portal to take.
    assert_eq!(
        count("SELECT count(*) FROM outbox WHERE sink = 'portal'"),
        0,
        "dead events left in the outbox"
    );
    assert_eq!(count(dead), 2);
    assert!(
        crm.refusals()
            .iter()
            .all(|r| first_command(r).1["PHONE_NUMBER"] == "+4917012121212"),
        "only this call's register was tried: {:?}",
        crm.refusals()
    );
    // Counted right after the move (the store is committed first).
    until(
        || {
            h.server
                .metrics
                .encode()
                .contains("sipscreen_crm_dead_letters_total{sink=\"portal\"} 2")
        },
        || h.server.metrics.encode(),
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_reinvite_naming_a_new_party_is_a_transfer() {
    let (crm, addr) = Crm::start().await;
    let h = Harness::start_with("udp", &sinks(addr, 50.0, 50)).await;
    let c = Call::inbound(&h, "+4917034343434", "+4930901820", "crm-reinv").await;
    c.respond(200, "OK").await;
    let pbx = h.pbx.local_addr().unwrap();
    let trunk = h.trunk.local_addr().unwrap();
    // Twice the same new party (the second is a refresh), then the BYE.
    for (n, cseq) in [(1, 10), (2, 11)] {
        let reinvite = format!(
            "INVITE sip:+4917034343434@{trunk} SIP/2.0\r\nVia: SIP/2.0/UDP {pbx};branch=z9hG4bK-reinv{n}\r\nRoute: <sip:{};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:+4930901820@x>;tag=callee-tag\r\nTo: <sip:+4917034343434@x>;tag=f-crm-reinv\r\nCall-ID: crm-reinv\r\nCSeq: {cseq} INVITE\r\nP-Asserted-Identity: <sip:208@pbx.example>\r\nContent-Length: 0\r\n\r\n",
            h.me()
        );
        h.pbx.send_to(reinvite.as_bytes(), h.sip_udp).await.unwrap();
        let (fwd, _) = recv(&h.trunk).await;
        assert!(fwd.starts_with("INVITE "), "{fwd}");
    }
    c.in_dialog("BYE", 2, "").await;
    crm.wait_for("telephony.externalcall.finish", 1).await;
    assert_eq!(
        crm.calls("telephony.externalcall.finish")[0]["USER_ID"],
        "208"
    );
    let v = call_log(&h, "").await;
    let transfers = v["items"][0]["transfers"].as_array().unwrap();
    assert_eq!(transfers.len(), 1, "{transfers:?}");
    assert_eq!(transfers[0]["to"], "208");
    h.stop().await;
}

/// A CRM that cannot be reached: the delivery error kept in the outbox
/// (and logged) says why — the cause, not only "error sending request" —
/// and never carries the secret in the sink's URL (a Bitrix24 inbound
/// webhook's token is part of its path).
#[tokio::test]
async fn an_unreachable_crm_is_explained_without_the_url_secret() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = closed.local_addr().unwrap();
    drop(closed);
    let cfg = format!(
        "\n[crm]\n[[crm.bitrix24]]\nname = \"portal\"\nrest_url = \"http://{down}/rest/\"\noauth_url = \"http://{down}/oauth/token/?key=s3cr3tOAUTH\"\n\
         client_id = \"app.1\"\nclient_secret = \"s3cr3tCLIENT\"\nrefresh_token = \"s3cr3tREFRESH\"\n\
         [[crm.webhook]]\nname = \"hook\"\nurl = \"http://{down}/hook?key=s3cr3tQUERYtoken\"\n"
    );
    let h = Harness::start_with("udp", &cfg).await;
    let c = Call::inbound(&h, "+4917033333333", "+4930901820", "crm-down").await;
    c.respond(486, "Busy Here").await;

    let db = h.dir.path().join("data").join("sipscreen.db");
    let rows = || -> Vec<(String, Option<String>)> {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut st = conn
            .prepare("SELECT sink, last_error FROM outbox ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let failed_sinks = |rows: &[(String, Option<String>)]| {
        rows.iter()
            .filter(|(_, e)| e.is_some())
            .map(|(s, _)| s.clone())
            .collect::<std::collections::HashSet<String>>()
            .len()
    };
    until(
        || failed_sinks(&rows()) == 2,
        || format!("no failed attempt for both sinks: {:?}", rows()),
    )
    .await;
    let errors = rows();
    for (sink, e) in errors.iter().filter(|(_, e)| e.is_some()) {
        let e = e.as_deref().unwrap();
        assert!(e.contains("Connection refused"), "{sink}: {e}");
        assert!(!e.contains("s3cr3t"), "{sink}: the URL's secret in {e}");
    }
    h.stop().await;
}

/// A payload in the outbox that is not a call event of its kind (corrupt,
/// or a kind this version does not know) goes to the dead-letter table
/// with the reason, on each sink; the events behind it are delivered.
#[tokio::test]
async fn a_payload_that_is_not_a_call_event_is_dead_lettered_with_its_reason() {
    use sipscreen::clock::now_ms;
    use sipscreen::store::NewEvent;
    let (crm, addr) = Crm::start().await;
    let h = Harness::start_with("udp", &sinks(addr, 50.0, 50)).await;
    let bad = |sink: &str, kind: &str, payload: &str| NewEvent {
        sink: sink.into(),
        call: "crm-bad".into(),
        kind: kind.into(),
        payload: payload.into(),
    };
    h.server
        .store
        .enqueue(
            &[
                bad("portal", "call.started", "{not json"),
                bad(
                    "hook",
                    "call.parked",
                    r#"{"call_id":"crm-bad","client":"anonymous","create":"lead","crm_create":true,"direction":"outbound","event":"call.parked","line":null,"offer":false,"responsible":null,"source":"CALL","start":"2023-11-14T22:15:00.000Z"}"#,
                ),
            ],
            now_ms(),
        )
        .unwrap();
    let c = Call::inbound(&h, "+4917045454545", "+4930901820", "crm-after-bad").await;
    c.respond(486, "Busy Here").await;
    crm.wait_for("telephony.externalcall.finish", 1).await;
    until(|| crm.hooks().len() >= 2, || format!("{:?}", crm.hooks())).await;
    assert_eq!(
        crm.calls("telephony.externalcall.register")[0]["PHONE_NUMBER"],
        "+4917045454545"
    );
    assert!(
        crm.hooks()
            .iter()
            .all(|s| s.body["client"] == "+4917045454545")
    );

    let conn = rusqlite::Connection::open(h.dir.path().join("data/sipscreen.db")).unwrap();
    let mut st = conn
        .prepare("SELECT sink, reason FROM dead_letter ORDER BY sink")
        .unwrap();
    let dead: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].0, "hook");
    assert!(
        dead[0]
            .1
            .starts_with("payload is not a call event: unknown variant `call.parked`"),
        "{dead:?}"
    );
    assert_eq!(dead[1].0, "portal");
    assert!(
        dead[1]
            .1
            .starts_with("payload is not a call event: key must be a string"),
        "{dead:?}"
    );
    h.stop().await;
}

/// The webhook body is a public contract: the JSON of each event kind,
/// byte for byte, as the tracker queues it in the outbox (and the webhook
/// posts it). Drives the real tracker with fixed timestamps into a real
/// SQLite store.
#[test]
fn the_json_of_each_event_kind_is_pinned() {
    use sipscreen::calls::tracker::{Tracker, TrackerConfig};
    use sipscreen::calls::{NewCall, RequestKind, SipEvent};
    use sipscreen::config::Verdict;
    use sipscreen::screening::{Client, CreateTag, Direction};
    use sipscreen::store::OutboxStore;
    use std::time::{SystemTime, UNIX_EPOCH};

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(sipscreen::store::sqlite::SqliteStore::open_dir(dir.path()).unwrap());
    let log = sipscreen::calls::log::CallLog::open(dir.path(), 1 << 20, 1).unwrap();
    let tracker = Tracker::new(
        log,
        store.clone(),
        Arc::new(sipscreen::metrics::Metrics::new()),
        TrackerConfig {
            max_idle: Duration::from_secs(3600),
            sinks: vec!["hook".into()],
            directory: None,
        },
    );
    let t = |s: u64| UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + s);
    let new = |call_id: &str, direction, client, line, create, responsible: Option<&str>| NewCall {
        call_id: call_id.into(),
        direction,
        verdict: Verdict::Log,
        client,
        line,
        create,
        source: "ADVERTISING".into(),
        reason: None,
        attest: sipscreen::screening::verstat::Attest::None,
        responsible: responsible.map(Into::into),
        change_responsible_on_transfer: true,
        update_directory_on_transfer: false,
        offer: create == CreateTag::Offer,
    };
    let id = |s: &str| Bytes::from(s.to_string());
    let at = |ms: u64| -> SystemTime { t(ms) };
    let events = vec![
        // Inbound, answered, transferred to 205, hung up 65.25 s later.
        SipEvent::Invite {
            sip_call_id: id("sip-1"),
            call: Box::new(new(
                "crm-1",
                Direction::Inbound,
                Client::Number(4917011111111),
                Some(4930901820),
                CreateTag::Offer,
                Some("101"),
            )),
            at: at(0),
        },
        SipEvent::InviteResponse {
            sip_call_id: id("sip-1"),
            code: 200,
            at: at(2_500),
        },
        SipEvent::Request {
            sip_call_id: id("sip-1"),
            kind: RequestKind::Refer,
            refer_to: Some("205".into()),
            at: at(10_000),
        },
        SipEvent::Request {
            sip_call_id: id("sip-1"),
            kind: RequestKind::Bye,
            refer_to: None,
            at: at(67_750),
        },
        // Outbound from no line to an anonymous party, nobody
        // responsible, busy.
        SipEvent::Invite {
            sip_call_id: id("sip-2"),
            call: Box::new(new(
                "crm-2",
                Direction::Outbound,
                Client::Anonymous,
                None,
                CreateTag::Lead,
                None,
            )),
            at: at(100_000),
        },
        SipEvent::InviteResponse {
            sip_call_id: id("sip-2"),
            code: 486,
            at: at(101_000),
        },
    ];
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    for e in events {
        tx.send(e).unwrap();
    }
    drop(tx);
    // The sender is gone: the tracker handles what is queued, flushes and
    // returns.
    tracker.run(rx, Arc::new(std::sync::atomic::AtomicBool::new(false)));

    let got: Vec<(String, String)> = store
        .head("hook", 64)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.payload))
        .collect();
    let common1 = r#""call_id":"crm-1","client":"+4917011111111","create":"offer","crm_create":false,"direction":"inbound""#;
    let tail1 = r#""line":"+4930901820","offer":true"#;
    let want = [
        ("call.started", format!(
            r#"{{{common1},"event":"call.started",{tail1},"responsible":"101","source":"ADVERTISING","start":"2023-11-14T22:13:20.000Z"}}"#
        )),
        ("call.answered", format!(
            r#"{{"answer":"2023-11-14T22:13:22.500Z",{common1},"event":"call.answered",{tail1},"responsible":"101","source":"ADVERTISING","start":"2023-11-14T22:13:20.000Z"}}"#
        )),
        ("call.responsible_changed", format!(
            r#"{{"at":"2023-11-14T22:13:30.000Z",{common1},"event":"call.responsible_changed",{tail1},"previous":"101","responsible":"205","source":"ADVERTISING","start":"2023-11-14T22:13:20.000Z"}}"#
        )),
        ("call.ended", format!(
            r#"{{"answered":true,{common1},"duration":65,"end":"2023-11-14T22:14:27.750Z","event":"call.ended",{tail1},"outcome":"completed","responsible":"205","source":"ADVERTISING","start":"2023-11-14T22:13:20.000Z","status":200}}"#
        )),
        ("call.started", r#"{"call_id":"crm-2","client":"anonymous","create":"lead","crm_create":true,"direction":"outbound","event":"call.started","line":null,"offer":false,"responsible":null,"source":"ADVERTISING","start":"2023-11-14T22:15:00.000Z"}"#.to_string()),
        ("call.ended", r#"{"answered":false,"call_id":"crm-2","client":"anonymous","create":"lead","crm_create":true,"direction":"outbound","duration":0,"end":"2023-11-14T22:15:01.000Z","event":"call.ended","line":null,"offer":false,"outcome":"failed","responsible":null,"source":"ADVERTISING","start":"2023-11-14T22:15:00.000Z","status":486}"#.to_string()),
    ];
    let want: Vec<(String, String)> = want.into_iter().map(|(k, p)| (k.to_string(), p)).collect();
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
}

/// The portal's operating-time limit (limits.md): once register has used
/// its time, the next one is refused with 429 OPERATION_TIME_LIMIT; the
/// sink pauses the method until the `operating_reset_at` the portal
/// announced, then sends it once: nothing lost, nothing reordered, no
/// hammering of the blocked method.
#[tokio::test]
async fn an_operation_time_limit_pauses_register_until_its_reset() {
    let (crm, addr) = Crm::start().await;
    crm.set_operating(
        "telephony.externalcall.register",
        1.0,
        1.5,
        Duration::from_secs(2),
    );
    let h = Harness::start_with("udp", &sinks(addr, 50.0, 50)).await;
    for (i, caller) in ["+4917055555550", "+4917055555551", "+4917055555552"]
        .iter()
        .enumerate()
    {
        let c = Call::inbound(&h, caller, "+4930901820", &format!("crm-op{i}")).await;
        c.respond(486, "Busy Here").await;
        if i < 2 {
            crm.wait_for("telephony.externalcall.finish", i + 1).await;
        }
    }
    crm.wait_for("telephony.externalcall.finish", 3).await;
    let refused = crm.refused_with("OPERATION_TIME_LIMIT");
    assert_eq!(refused.len(), 1, "one refusal, then the pause: {refused:?}");
    let phones: Vec<Value> = crm
        .calls("telephony.externalcall.register")
        .iter()
        .map(|r| r["PHONE_NUMBER"].clone())
        .collect();
    assert_eq!(
        phones,
        ["+4917055555550", "+4917055555551", "+4917055555552"]
    );
    let third = crm
        .seen()
        .into_iter()
        .filter(|s| {
            s.method == "telephony.externalcall.register"
                && s.refused.is_none()
                && s.body["PHONE_NUMBER"] == "+4917055555552"
        })
        .map(|s| s.at)
        .next()
        .unwrap();
    assert!(
        third.duration_since(refused[0].at) >= Duration::from_millis(300),
        "sent again only after the reset"
    );
    h.stop().await;
}
