//! Prefixes, ranges, allow entries, STIR/SHAKEN verstat and e-mail domains
//! against the real server (in-process, real sockets, a real SQLite file):
//! import and API, the verdict and `X-CRM-Reason` / `X-CRM-Attest` on live
//! INVITEs, 608 for a rejected verification, untrusted trunks, the call
//! log and the attestation metrics.

mod common;

use std::time::{Duration, Instant};

use common::api::{Api, EDIT, VIEW};
use common::*;
use reqwest::StatusCode;
use serde_json::json;
use tokio::net::UdpSocket;

/// Lines with `on_verstat_failed`, and a trunk whose identity (and so its
/// verstat) is not believed.
const EXTRA: &str = r#"
[[line]]
number = "+4969000001"
on_verstat_failed = "exception"

[[line]]
number = "+4969000002"
on_verstat_failed = "reject"

[[trunk]]
name = "plain"
target = "127.0.0.4:5999"
sources = ["127.0.0.4/32"]
"#;

/// (verdict, reason, attest) the API gives an inbound call.
async fn screen(
    api: &Api,
    number: &str,
    line: &str,
    verstat: Option<&str>,
) -> (String, String, String) {
    let mut q = json!({"number": number, "line": line, "direction": "inbound"});
    if let Some(v) = verstat {
        q["verstat"] = json!(v);
    }
    let (s, v) = api.post(VIEW, "/screen", q).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let str_of = |k: &str| v[k].as_str().unwrap_or("").to_string();
    (str_of("verdict"), str_of("reason"), str_of("attest"))
}

const IMPORT: &str = "\
# a block of numbers with our office inside it
+4930901*; spam block
!+49309018*; our office
+493090189000..+493090189999; their call centre
!+4930901899; the one good agent there
@newsletter.example; marketing
@*.ads.example; every ad subdomain
!ceo@newsletter.example; the boss writes from there too
+493000000000..+493999999999; too large without the mark
+494000000000..+494099999999 large; marked: the whole area
";

#[tokio::test]
async fn import_ranges_allows_and_domains_then_screen_by_the_longest_entry() {
    let h = Harness::start_with("udp", EXTRA).await;
    let api = Api::new(&h);
    let (s, r) = api.import(EDIT, IMPORT).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    // Eight entries: each range is one prefix.
    assert_eq!(r["added"], 8, "{r}");
    assert_eq!(r["refused"], 1, "{r}");
    let refused = &r["refused_lines"][0];
    assert_eq!(refused["line"], 9);
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("max_range_numbers"),
        "{refused}"
    );

    let line = "+4930901820";
    let cases = [
        ("+4930901700", "exception", "prefix:+4930901"),
        ("+4930901812", "log", "allow:+49309018"),
        ("+4930901895", "exception", "prefix:+493090189"),
        ("+493090189123", "exception", "prefix:+493090189"),
        ("+4930901899", "log", "allow:+4930901899"),
        ("+494012345678", "exception", "prefix:+4940"),
        ("+4915112345678", "exception", "listed"),
        ("+4931000000", "log", ""),
    ];
    for (number, verdict, reason) in cases {
        let got = screen(&api, number, line, None).await;
        assert_eq!(
            (got.0.as_str(), got.1.as_str()),
            (verdict, reason),
            "{number}"
        );
    }
    // The range is stored as its one prefix, +493090189*.
    let (_, v) = api
        .get(VIEW, "/exceptions?match=prefix&action=block&limit=50")
        .await;
    let prefixes: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    for p in ["+4930901*", "+493090189*", "+4940*"] {
        assert!(prefixes.contains(&p), "{p} in {prefixes:?}");
    }
    let (_, v) = api.get(VIEW, "/exceptions?action=allow").await;
    let allows: Vec<(&str, &str)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["value"].as_str().unwrap(), e["match"].as_str().unwrap()))
        .collect();
    assert_eq!(
        allows,
        [
            ("ceo@newsletter.example", "exact"),
            ("+4930901899", "exact"),
            ("+49309018*", "prefix")
        ]
    );

    // E-mails: the address, its domain, then the parents' `@*.` entries.
    let email = |from: &'static str| {
        let api = &api;
        async move {
            let (_, v) = api.post(VIEW, "/screen/email", json!({"from": from})).await;
            (
                v["verdict"].as_str().unwrap().to_string(),
                v["reason"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    assert_eq!(
        email("promo@newsletter.example").await,
        ("exception".into(), "domain:@newsletter.example".into())
    );
    assert_eq!(
        email("CEO@newsletter.example").await,
        ("log".into(), "allow:ceo@newsletter.example".into())
    );
    assert_eq!(
        email("x@eu.ads.example").await,
        ("exception".into(), "domain:@*.ads.example".into())
    );
    assert_eq!(email("x@ads.example").await, ("log".into(), "".into()));
    assert_eq!(
        email("boss@example.com").await,
        ("exception".into(), "listed".into())
    );

    // A live INVITE carries the reason.
    let (_, got, _) = h.invite_from_trunk("+4930901700", line, "deep-1", "").await;
    assert_eq!(
        header(&got, "X-CRM-Verdict").as_deref(),
        Some("exception"),
        "{got}"
    );
    assert_eq!(
        header(&got, "X-CRM-Reason").as_deref(),
        Some("prefix:+4930901")
    );
    assert_eq!(header(&got, "X-CRM-Attest").as_deref(), Some("none"));
    let (_, got, _) = h.invite_from_trunk("+4930901812", line, "deep-2", "").await;
    assert_eq!(header(&got, "X-CRM-Verdict").as_deref(), Some("log"));
    assert_eq!(
        header(&got, "X-CRM-Reason").as_deref(),
        Some("allow:+49309018")
    );
    assert_eq!(header(&got, "X-CRM-Create").as_deref(), Some("offer"));

    // Removing the allow prefix: the shorter block decides again.
    let (s, v) = api.delete(EDIT, "%2B49309018*").await;
    assert_eq!(
        (s, v["match"].as_str()),
        (StatusCode::OK, Some("prefix")),
        "{v}"
    );
    assert_eq!(
        screen(&api, "+4930901812", line, None).await.1,
        "prefix:+4930901"
    );
    // A range is removed as its prefixes.
    let (s, v) = api.delete(EDIT, "%2B493090189000..%2B493090189999").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["removed"][0]["value"], "+493090189*");
    assert_eq!(v["removed"][0]["given"], "+493090189000..+493090189999");
    assert_eq!(
        screen(&api, "+493090189123", line, None).await.1,
        "prefix:+4930901"
    );
    h.stop().await;
}

#[tokio::test]
async fn api_entries_take_an_action_and_large_ranges_need_the_flag() {
    let h = Harness::start().await;
    let api = Api::new(&h);
    let (s, v) = api
        .post(
            EDIT,
            "/exceptions",
            json!({"value": "+4917*", "comment": "mobiles"}),
        )
        .await;
    assert_eq!(
        (s, &v["values"]),
        (StatusCode::CREATED, &json!(["+4917*"])),
        "{v}"
    );
    let (s, v) = api
        .post(
            EDIT,
            "/exceptions",
            json!({"value": "0170 1112223", "action": "allow"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let line = "+4930901820";
    assert_eq!(
        screen(&api, "+491701112223", line, None).await.1,
        "allow:+491701112223"
    );
    assert_eq!(
        screen(&api, "+491701112224", line, None).await.1,
        "prefix:+4917"
    );
    // The same value as a block: an update that flips the action.
    let (s, v) = api
        .post(EDIT, "/exceptions", json!({"value": "+491701112223"}))
        .await;
    assert_eq!((s, &v["updated"]), (StatusCode::OK, &json!(1)), "{v}");
    assert_eq!(screen(&api, "+491701112223", line, None).await.1, "listed");
    let (_, audit) = api.get(VIEW, "/audit?value=%2B491701112223").await;
    assert_eq!(audit["items"][0]["entry_action"], "block");
    assert_eq!(audit["items"][1]["entry_action"], "allow");

    let big = "+493000000000..+493999999999";
    let (s, v) = api.post(EDIT, "/exceptions", json!({"value": big})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("large"), "{v}");
    let (s, v) = api
        .post(EDIT, "/exceptions", json!({"value": big, "large": true}))
        .await;
    assert_eq!(
        (s, &v["values"]),
        (StatusCode::CREATED, &json!(["+493*"])),
        "{v}"
    );
    let (s, v) = api
        .post(
            EDIT,
            "/exceptions",
            json!({"value": "+4930..+49", "action": "allow"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = api
        .post(
            EDIT,
            "/exceptions",
            json!({"value": "+4930*", "action": "permit"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("block or allow"),
        "{v}"
    );
    let (s, v) = api
        .post(EDIT, "/exceptions", json!({"value": "!+4930*"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("\"action\": \"allow\""),
        "{v}"
    );
    h.stop().await;
}

/// The `P-Asserted-Identity` of a caller with a `verstat`.
fn pai(caller: &str, verstat: &str) -> String {
    format!("P-Asserted-Identity: <sip:{caller};verstat={verstat}@carrier.example;user=phone>\r\n")
}

/// Polls `/metrics` until `line` is in it.
async fn metric_reaches(h: &Harness, line: &str) -> bool {
    let url = format!("http://{}/metrics", h.server.admin.unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if text.lines().any(|l| l == line) {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("{text}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET query` until the call log has the call `sip_call_id`; the
/// page's items.
async fn logged(api: &Api, query: &str, sip_call_id: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, v) = api.get(VIEW, query).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if items.iter().any(|r| r["sip_call_id"] == sip_call_id) {
            return items;
        }
        assert!(Instant::now() < deadline, "{sip_call_id} never logged: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn verstat_from_a_trusted_trunk_decides_per_line_and_is_ignored_from_others() {
    let h = Harness::start_with("udp", EXTRA).await;
    let caller = "+12155550112";
    // Passed with a level: the tag says it, the call is ordinary.
    let (_, got, _) = h
        .invite_from_trunk(
            caller,
            "+4969000002",
            "vs-1",
            &pai(caller, "TN-Validation-Passed-B"),
        )
        .await;
    assert_eq!(header(&got, "X-CRM-Attest").as_deref(), Some("B"), "{got}");
    assert_eq!(header(&got, "X-CRM-Verdict").as_deref(), Some("log"));
    // Failed on an `exception` line: forwarded, never to the CRM.
    let (_, got, _) = h
        .invite_from_trunk(
            caller,
            "+4969000001",
            "vs-2",
            &pai(caller, "TN-Validation-Failed"),
        )
        .await;
    assert_eq!(header(&got, "X-CRM-Verdict").as_deref(), Some("exception"));
    assert_eq!(header(&got, "X-CRM-Reason").as_deref(), Some("verstat"));
    assert_eq!(header(&got, "X-CRM-Attest").as_deref(), Some("failed"));
    // Failed on the default line (`ignore`): a log call tagged failed; the
    // verstat on From counts when there is no P-Asserted-Identity.
    let from_verstat = invite(
        h.sip_udp,
        h.trunk.local_addr().unwrap(),
        "+4930901820",
        &format!("{caller};verstat=TN-Validation-Failed"),
        "vs-3",
        "",
    );
    h.trunk
        .send_to(from_verstat.as_bytes(), h.sip_udp)
        .await
        .unwrap();
    let (got, _) = recv(&h.pbx).await;
    assert_eq!(
        header(&got, "X-CRM-Verdict").as_deref(),
        Some("log"),
        "{got}"
    );
    assert_eq!(header(&got, "X-CRM-Attest").as_deref(), Some("failed"));
    assert_eq!(header(&got, "X-CRM-Client").as_deref(), Some(caller));

    // Failed on a `reject` line: 608 Rejected to the trunk, nothing to the PBX.
    let inv = invite(
        h.sip_udp,
        h.trunk.local_addr().unwrap(),
        "+4969000002",
        caller,
        "vs-4",
        &pai(caller, "TN-Validation-Failed-A"),
    );
    h.trunk.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let (answer, _) = recv(&h.trunk).await;
    assert!(answer.starts_with("SIP/2.0 608 Rejected\r\n"), "{answer}");
    assert_eq!(header(&answer, "Call-ID").as_deref(), Some("vs-4"));
    h.nothing_more_at_pbx().await;

    // The same INVITE from a trunk without trust_pai: its verstat is not
    // read, the call goes through untagged by it.
    let plain = UdpSocket::bind("127.0.0.4:0")
        .await
        .expect("bind 127.0.0.4");
    let inv = invite(
        h.sip_udp,
        plain.local_addr().unwrap(),
        "+4969000002",
        caller,
        "vs-5",
        &pai(caller, "TN-Validation-Failed"),
    );
    plain.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let (got, _) = recv(&h.pbx).await;
    assert_eq!(
        header(&got, "X-CRM-Attest").as_deref(),
        Some("none"),
        "{got}"
    );
    assert_eq!(header(&got, "X-CRM-Verdict").as_deref(), Some("log"));

    for (attest, verdict) in [
        ("B", "log"),
        ("failed", "exception"),
        ("failed", "log"),
        ("failed", "rejected"),
        ("none", "log"),
    ] {
        let line = format!(
            "sipscreen_calls_attested_total{{attest=\"{attest}\",verdict=\"{verdict}\"}} 1"
        );
        assert!(metric_reaches(&h, &line).await, "{line}");
    }
    assert!(
        metric_reaches(
            &h,
            "sipscreen_sip_errors_total{reason=\"verstat_failed\"} 1"
        )
        .await
    );

    // The call log keeps reason and attestation: the PBX refuses vs-2.
    let (_, got, _) = h
        .invite_from_trunk(
            caller,
            "+4969000001",
            "vs-6",
            &pai(caller, "TN-Validation-Failed"),
        )
        .await;
    let busy = response_to(&got, 486, "Busy Here", "pbx-6", "");
    h.pbx.send_to(busy.as_bytes(), h.sip_udp).await.unwrap();
    let api = Api::new(&h);
    let items = logged(&api, "/calls?verdict=exception", "vs-6").await;
    let record = items
        .into_iter()
        .find(|r| r["sip_call_id"] == "vs-6")
        .unwrap();
    assert_eq!(
        (record["reason"].as_str(), record["attest"].as_str()),
        (Some("verstat"), Some("failed")),
        "{record}"
    );
    h.stop().await;
}

/// A call refused with 608 for its failed verification is in the call log
/// (the file and `/api/v1/calls`) with its verdict, reason, attestation and
/// status, once however often its INVITE is retransmitted, and queues no
/// CRM event; a forwarded call beside it does (the webhook is down, so
/// queued events stay in the outbox to be counted).
#[tokio::test]
async fn a_call_rejected_for_its_verification_is_logged_without_crm_events() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = closed.local_addr().unwrap();
    drop(closed);
    let extra =
        format!("{EXTRA}\n[crm]\n[[crm.webhook]]\nname = \"hook\"\nurl = \"http://{down}/hook\"\n");
    let h = Harness::start_with("udp", &extra).await;
    let caller = "+12155550113";
    let inv = invite(
        h.sip_udp,
        h.trunk.local_addr().unwrap(),
        "+4969000002",
        caller,
        "rej-1",
        &pai(caller, "TN-Validation-Failed-A"),
    );
    // The INVITE and a retransmission of it: 608 to each.
    for _ in 0..2 {
        h.trunk.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
        let (answer, _) = recv(&h.trunk).await;
        assert!(answer.starts_with("SIP/2.0 608 Rejected\r\n"), "{answer}");
    }
    h.nothing_more_at_pbx().await;
    // A forwarded call after it, refused by the PBX: a `log` call.
    let (_, got, _) = h
        .invite_from_trunk(caller, "+4930901820", "fwd-1", "")
        .await;
    let busy = response_to(&got, 486, "Busy Here", "pbx-1", "");
    h.pbx.send_to(busy.as_bytes(), h.sip_udp).await.unwrap();

    // The tracker handles events in order: once the later call is in the
    // log, so is whatever the rejected one gave.
    let api = Api::new(&h);
    let items = logged(&api, "/calls", "fwd-1").await;
    let rejected: Vec<&serde_json::Value> = items
        .iter()
        .filter(|r| r["sip_call_id"] == "rej-1")
        .collect();
    assert_eq!(rejected.len(), 1, "one record for rej-1: {items:?}");
    let r = rejected[0];
    let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    assert_eq!(
        (
            field("verdict"),
            field("reason"),
            field("attest"),
            field("outcome"),
            field("direction"),
            field("line"),
            field("client"),
        ),
        (
            "exception".to_string(),
            "verstat".to_string(),
            "failed".to_string(),
            "failed".to_string(),
            "inbound".to_string(),
            "+4969000002".to_string(),
            caller.to_string(),
        ),
        "{r}"
    );
    assert_eq!(r["status"], 608, "{r}");
    assert_eq!(r["duration"], 0, "{r}");
    assert!(r["answer"].is_null(), "{r}");
    let call_id = field("call_id");
    assert!(
        call_id.len() == 32 && call_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{r}"
    );
    // The API filters find it as they find any failed exception call.
    let (_, v) = api
        .get(VIEW, "/calls?verdict=exception&outcome=failed")
        .await;
    let listed = v["items"].as_array().cloned().unwrap_or_default();
    assert!(listed.iter().any(|x| x["sip_call_id"] == "rej-1"), "{v}");

    // The file has the one line the API read.
    let log = std::fs::read_to_string(h.dir.path().join("data/calls.jsonl")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("\"rej-1\"")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("\"status\":608"), "{}", lines[0]);

    // CRM events: the forwarded call's are queued, the rejected one's not.
    let fwd = items
        .iter()
        .find(|r| r["sip_call_id"] == "fwd-1")
        .and_then(|r| r["call_id"].as_str())
        .unwrap()
        .to_string();
    let db = h.dir.path().join("data/sipscreen.db");
    let queued = |call: &str| -> i64 {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row(
            "SELECT count(*) FROM outbox WHERE call = ?1",
            [call],
            |row| row.get(0),
        )
        .unwrap()
    };
    assert_eq!(queued(&fwd), 2, "call.started and call.ended of fwd-1");
    assert_eq!(queued(&call_id), 0, "no CRM event for the rejected call");
    h.stop().await;
}
