//! The admin API over real HTTP against the real server (in-process, real
//! sockets, a real SQLite file in a temp data directory): roles, filters,
//! paging, import with bad lines, CRM record add, delete, audit, screening
//! (numbers and e-mails), error answers, expiry, and that a change is seen
//! by live SIP screening.

mod common;

use common::api::{Api, EDIT, VIEW};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn values(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn tokens_and_roles() {
    let h = Harness::start().await;
    let api = Api::new(&h);
    let (s, v) = api
        .call(api.http.get(format!("{}/exceptions", api.base)))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"].as_str().unwrap().contains("Bearer"), "{v}");
    assert_eq!(
        api.get("wrong", "/exceptions").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(api.get(VIEW, "/exceptions").await.0, StatusCode::OK);
    let (s, v) = api
        .post(VIEW, "/exceptions", json!({"value": "+4917000000001"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(
        api.delete(VIEW, "+4915112345678").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.import(VIEW, "+4917000000001\n").await.0,
        StatusCode::FORBIDDEN
    );
    // Nothing was written by the refused requests.
    assert_eq!(api.verdict("+4917000000001").await, "log");
    // /metrics stays open by default.
    let m = reqwest::get(format!("http://{}/metrics", h.server.admin.unwrap()))
        .await
        .unwrap();
    assert_eq!(m.status(), StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let h = Harness::start_with_admin("protect_metrics = true\n").await;
    let url = format!("http://{}/metrics", h.server.admin.unwrap());
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let ok = http.get(&url).bearer_auth(VIEW).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(
        ok.text()
            .await
            .unwrap()
            .contains("sipscreen_exception_entries")
    );
    h.stop().await;
}

#[tokio::test]
async fn add_is_durable_visible_to_live_calls_and_audited() {
    let h = Harness::start().await;
    let api = Api::new(&h);
    let caller = "+4917011122233";
    assert_eq!(api.verdict(caller).await, "log");
    let (s, v) = api
        .post(
            EDIT,
            "/exceptions",
            json!({"value": "0170 111 222 33", "comment": "Supplier"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["values"],
        json!([caller]),
        "national form stored as E.164"
    );
    assert_eq!(v["added"], 1);

    // A live call right after the answer is screened against it.
    let (_, got, _) = h
        .invite_from_trunk(caller, "+4930901820", "api-live", "")
        .await;
    assert_eq!(
        header(&got, "X-CRM-Verdict").as_deref(),
        Some("exception"),
        "{got}"
    );

    // Same value again with a new comment: an update, not a second entry.
    let (s, v) = api
        .post(
            EDIT,
            "/exceptions",
            json!({"value": caller, "comment": "Main supplier"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["added"].as_u64(), v["updated"].as_u64()),
        (Some(0), Some(1))
    );

    let (_, list) = api
        .get(VIEW, &format!("/exceptions?value={}", "%2B4917011122233"))
        .await;
    let e = &list["items"][0];
    assert_eq!(e["comment"], "Main supplier");
    assert_eq!(e["given"], "0170 111 222 33");
    assert_eq!(e["created_by"], "ops");
    assert_eq!(e["origin"], "api");

    let (s, gone) = api.delete(EDIT, "%2B4917011122233").await;
    assert_eq!(s, StatusCode::OK, "{gone}");
    assert_eq!(api.verdict(caller).await, "log");
    let (s, v) = api.delete(EDIT, "%2B4917011122233").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not on the list"));

    let (_, audit) = api.get(VIEW, "/audit?value=%2B4917011122233").await;
    let trail: Vec<(String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().into(),
                a["actor"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        trail,
        [
            ("remove".into(), "ops".into()),
            ("update".into(), "ops".into()),
            ("add".into(), "ops".into())
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_crm_record_adds_all_its_phones_and_emails_at_once() {
    let h = Harness::start().await;
    let api = Api::new(&h);
    let (s, v) = api
        .post(
            EDIT,
            "/exceptions",
            json!({"entity": "lead:123", "phones": ["+4917044455566", "030 5550001"],
                   "emails": ["Anna@Partner.example"], "comment": "partner firm"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["added"], 3);
    let (_, list) = api.get(VIEW, "/exceptions?q=PARTNER").await;
    let mut got = values(&list);
    got.sort();
    assert_eq!(
        got,
        ["+4917044455566", "+49305550001", "anna@partner.example"]
    );
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["origin"] == "lead:123")
    );
    assert_eq!(api.verdict("+49305550001").await, "exception");

    // One bad value: nothing is written, the answer names it.
    let (s, v) = api
        .post(
            EDIT,
            "/exceptions",
            json!({"entity": "deal:9", "phones": ["+4917000000002", "call me"]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("\"call me\""), "{v}");
    assert_eq!(api.verdict("+4917000000002").await, "log");
    let (s, v) = api
        .post(
            EDIT,
            "/exceptions",
            json!({"entity": "lead", "phones": ["+4917000000002"]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("lead:ID"), "{v}");
    h.stop().await;
}

#[tokio::test]
async fn import_counts_reports_bad_lines_and_updates_comments() {
    let h = Harness::start().await;
    let api = Api::new(&h);
    let text = "# partners\n+4917010000001; first\n\nnot a number; oops\n+4917010000002\nx@@y.example\n0049 170 10000003 ; third\r\nsales@Partner.example; mail\n";
    let (s, v) = api.import(EDIT, text).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["lines"].as_u64(),
            v["added"].as_u64(),
            v["refused"].as_u64()
        ),
        (Some(8), Some(4), Some(2))
    );
    let refused: Vec<(u64, &str)> = v["refused_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["text"].as_str().unwrap()))
        .collect();
    assert_eq!(refused, [(4, "not a number; oops"), (6, "x@@y.example")]);
    assert!(
        v["refused_lines"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not a phone number")
    );

    let (s, v) = api
        .import(EDIT, "+4917010000001; renamed\n+4917010000002\n")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["added"].as_u64(),
            v["updated"].as_u64(),
            v["unchanged"].as_u64()
        ),
        (Some(0), Some(1), Some(1))
    );
    let (_, l) = api.get(VIEW, "/exceptions?value=%2B4917010000001").await;
    assert_eq!(l["items"][0]["comment"], "renamed");
    assert_eq!(l["items"][0]["origin"], "import");
    assert_eq!(api.verdict("+4917010000003").await, "exception");

    // Wrong content type.
    let (s, v) = api
        .call(
            api.http
                .post(format!("{}/exceptions/import", api.base))
                .bearer_auth(EDIT)
                .json(&json!(["+4917010000009"])),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");
    h.stop().await;
}

#[tokio::test]
async fn filters_and_cursor_paging_newest_first() {
    let h = Harness::start().await;
    let api = Api::new(&h);
    let mut text = String::new();
    for i in 0..30 {
        let tag = if i % 3 == 0 { "VIP client" } else { "other" };
        text.push_str(&format!("+491701000{i:04}; {tag}\n"));
    }
    text.push_str("ops@vendor.example; vendor\n");
    assert_eq!(api.import(EDIT, &text).await.0, StatusCode::OK);

    let (_, p1) = api.get(VIEW, "/exceptions?q=vip&limit=4").await;
    assert_eq!(
        values(&p1),
        [
            "+4917010000027",
            "+4917010000024",
            "+4917010000021",
            "+4917010000018"
        ]
    );
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, p2) = api
        .get(VIEW, &format!("/exceptions?q=vip&limit=4&cursor={cursor}"))
        .await;
    assert_eq!(values(&p2)[0], "+4917010000015");
    let (_, last) = api.get(VIEW, "/exceptions?q=vip&limit=100").await;
    assert_eq!(values(&last).len(), 10);
    assert!(last["next_cursor"].is_null());

    let (_, mails) = api.get(VIEW, "/exceptions?type=email").await;
    assert_eq!(values(&mails), ["ops@vendor.example", "boss@example.com"]);
    let (_, pre) = api
        .get(VIEW, "/exceptions?prefix=491701000002&limit=100")
        .await;
    assert_eq!(values(&pre).len(), 10, "{pre}");
    let (_, exact) = api.get(VIEW, "/exceptions?value=0170%2010000005").await;
    assert_eq!(values(&exact), ["+4917010000005"]);

    let (s, v) = api.get(VIEW, "/exceptions?type=fax").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("phone or email"));
    let (s, _) = api.get(VIEW, "/exceptions?cursor=abc").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api.get(VIEW, "/exceptions?limit=100000").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // One paging rule for every list.
    for list in ["/exceptions", "/audit", "/contacts", "/calls"] {
        for bad in ["limit=0", "limit=1001"] {
            let (s, v) = api.get(VIEW, &format!("{list}?{bad}")).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{list}?{bad}: {v}");
            assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");
        }
        let (s, v) = api.get(VIEW, &format!("{list}?limit=1000")).await;
        assert_eq!(s, StatusCode::OK, "{list}: {v}");
        assert!(
            v["items"].is_array() && v.get("next_cursor").is_some(),
            "{v}"
        );
    }
    let (s, v) = api.get(VIEW, "/calls?cursor=no-such-call").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("cursor"), "{v}");
    h.stop().await;
}

#[tokio::test]
async fn screening_numbers_and_emails() {
    let h = Harness::start().await;
    let api = Api::new(&h);
    let (s, v) = api
        .post(
            VIEW,
            "/screen",
            json!({"number": "01709998887", "line": "+4930901820", "direction": "inbound"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["verdict"], "log");
    assert_eq!(v["client"], "+491709998887");
    assert_eq!(v["create"], "offer");
    assert_eq!(v["tags"]["X-CRM-Source"], "ADVERTISING");
    assert_eq!(v["tags"]["X-CRM-Responsible"], "101");
    assert!(v["tags"].get("X-CRM-Call-Id").is_none());

    let (_, v) = api
        .post(
            VIEW,
            "/screen",
            json!({"number": "030 7654321", "line": "+4930901820", "direction": "outbound"}),
        )
        .await;
    assert_eq!(v["verdict"], "exception");
    assert_eq!(v["direction"], "outbound");
    assert_eq!(v["create"], "none");

    let (_, v) = api
        .post(
            VIEW,
            "/screen",
            json!({"number": "", "line": "+4930901820", "direction": "inbound"}),
        )
        .await;
    assert_eq!(v["client"], "anonymous");

    let (s, v) = api
        .post(
            VIEW,
            "/screen",
            json!({"number": "1", "line": "2", "direction": "sideways"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("inbound or outbound"));

    let (_, v) = api
        .post(VIEW, "/screen/email", json!({"from": "Boss@Example.com"}))
        .await;
    assert_eq!(v["verdict"], "exception");
    let (_, v) = api
        .post(
            VIEW,
            "/screen/email",
            json!({"from": "boss@example.com", "reply": true}),
        )
        .await;
    assert_eq!(v["verdict"], "log", "a reply always goes to the CRM");
    let (_, v) = api
        .post(VIEW, "/screen/email", json!({"from": "new@example.com"}))
        .await;
    assert_eq!(v["verdict"], "log");
    let (s, _) = api
        .post(VIEW, "/screen/email", json!({"from": "nobody"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    h.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let h = Harness::start_with_admin("import_max_bytes = 64\njson_max_bytes = 256\n").await;
    let api = Api::new(&h);
    let (s, v) = api
        .call(
            api.http
                .post(format!("{}/exceptions", api.base))
                .bearer_auth(EDIT)
                .header("content-type", "application/json")
                .body("{\"value\": \"+49170\",,}"),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().contains("line 1 column"),
        "{v}"
    );
    let (s, v) = api
        .post(EDIT, "/exceptions", json!({"valeu": "+4917000000001"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("valeu"), "{v}");
    let (s, _) = api
        .post(EDIT, "/exceptions", json!({"value": "x".repeat(400)}))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, v) = api.import(EDIT, &"+4917000000001\n".repeat(10)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (s, v) = api.get(VIEW, "/nothing-here").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].is_string());
    let (s, v) = api
        .post(
            EDIT,
            "/exceptions",
            json!({"value": "+4917000000001", "expires_at": "yesterday"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("RFC 3339"), "{v}");
    h.stop().await;
}

/// `ttl_seconds` sets the entry's expiry from the server's clock; that it
/// then leaves at that time (set, store, audit) is tested on a paused
/// clock in `store::service` (`an_entry_expires_at_its_time_and_not_before`).
#[tokio::test]
async fn a_ttl_becomes_the_entrys_expiry() {
    let h = Harness::start().await;
    let api = Api::new(&h);
    let before = sipscreen::clock::now_ms();
    let (s, v) = api
        .post(
            EDIT,
            "/exceptions",
            json!({"value": "+4917077700000", "ttl_seconds": 3600, "comment": "trial"}),
        )
        .await;
    let after = sipscreen::clock::now_ms();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(api.verdict("+4917077700000").await, "exception");
    let (_, l) = api.get(VIEW, "/exceptions?value=%2B4917077700000").await;
    let at =
        sipscreen::clock::parse_rfc3339(l["items"][0]["expires_at"].as_str().unwrap()).unwrap();
    assert!(
        (before + 3_600_000..=after + 3_600_000).contains(&at),
        "expires_at {at} not an hour after {before}..{after}: {l}"
    );
    h.stop().await;
}
