//! The responsible person: the contacts directory (API, CSV/JSON import),
//! `X-CRM-Responsible` for known and unknown clients, `forward = "ruri"`
//! rewriting the Request-URI to the responsible's extension, and a REFER
//! updating the directory on lines that ask for it.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const LINES: &str = "\n[[line]]\nnumber = \"+4930901830\"\nqueue = [\"300\"]\nforward_to_responsible = true\nforward = \"ruri\"\nchange_responsible_on_transfer = true\nupdate_directory_on_transfer = true\n";

async fn api(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(
            method,
            format!("http://{}/api/v1{path}", h.server.admin.unwrap()),
        )
        .bearer_auth(token)
}

async fn call(h: &Harness, caller: &str, line: &str, id: &str) -> String {
    h.invite_from_trunk(caller, line, id, "").await.1
}

#[tokio::test]
async fn directory_api_and_responsible_forwarding() {
    let h = Harness::start_with("udp", LINES).await;
    // CSV with a header, a national-form client and two bad rows.
    let csv = "client,user_id,extension\n+4917012340001,17,201\n0170 12340002,18,202\nnot-a-number,19,203\n+4917012340003,,204\n";
    let r = api(&h, reqwest::Method::POST, "/contacts", "edit-token")
        .await
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["added"].as_u64(), v["updated"].as_u64()),
        (Some(2), Some(0)),
        "{v}"
    );
    let rows: Vec<u64> = v["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [4, 5]);
    // JSON updates one.
    let r = api(&h, reqwest::Method::POST, "/contacts", "edit-token")
        .await
        .json(&json!([{"client": "+4917012340002", "user_id": "28", "extension": "222"}]))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["updated"], 1, "{v}");
    // A view token may list, not change.
    let r = api(&h, reqwest::Method::POST, "/contacts", "view-token")
        .await
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let list: Value = api(&h, reqwest::Method::GET, "/contacts", "view-token")
        .await
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(list["items"][1]["user_id"], "28");

    // Header-only forwarding line (+4930901820): known client -> their user.
    let got = call(&h, "+4917012340001", "+4930901820", "resp-known").await;
    assert_eq!(
        header(&got, "X-CRM-Responsible").as_deref(),
        Some("17"),
        "{got}"
    );
    assert!(
        got.starts_with("INVITE sip:+4930901820@"),
        "R-URI untouched on a header line:\n{got}"
    );
    // Unknown client: the first member of the line's queue.
    let got = call(&h, "+4917099990000", "+4930901820", "resp-unknown").await;
    assert_eq!(header(&got, "X-CRM-Responsible").as_deref(), Some("101"));

    // forward = "ruri": the PBX is asked for the responsible's extension.
    let got = call(&h, "+4917012340002", "+4930901830", "resp-ruri").await;
    assert!(got.starts_with("INVITE sip:222@"), "{got}");
    assert_eq!(header(&got, "X-CRM-Responsible").as_deref(), Some("28"));
    rsip_parses(got.as_bytes());
    let got = call(&h, "+4917099990001", "+4930901830", "resp-ruri-unknown").await;
    assert!(
        got.starts_with("INVITE sip:+4930901830@"),
        "unknown client: R-URI kept\n{got}"
    );
    assert_eq!(header(&got, "X-CRM-Responsible").as_deref(), Some("300"));

    // Removing the contact takes effect at once.
    let r = api(
        &h,
        reqwest::Method::DELETE,
        "/contacts/%2B4917012340001",
        "edit-token",
    )
    .await
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let got = call(&h, "+4917012340001", "+4930901820", "resp-removed").await;
    assert_eq!(header(&got, "X-CRM-Responsible").as_deref(), Some("101"));
    let r = api(
        &h,
        reqwest::Method::DELETE,
        "/contacts/%2B4917012340001",
        "edit-token",
    )
    .await
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    h.stop().await;
}

#[tokio::test]
async fn a_transfer_updates_the_directory_where_the_line_says_so() {
    let h = Harness::start_with("udp", LINES).await;
    let got = call(&h, "+4917055550000", "+4930901830", "xfer").await;
    assert_eq!(header(&got, "X-CRM-Responsible").as_deref(), Some("300"));
    let pbx = h.pbx.local_addr().unwrap();
    let ok = response_to(&got, 200, "OK", "pbx-tag", &format!("sip:agent@{pbx}"));
    h.pbx.send_to(ok.as_bytes(), h.sip_udp).await.unwrap();
    recv(&h.trunk).await;
    // The agent transfers to 207 (a REFER from the PBX side).
    let refer = format!(
        "REFER sip:+4917055550000@{} SIP/2.0\r\nVia: SIP/2.0/UDP {pbx};branch=z9hG4bK-refer1\r\nRoute: <sip:{};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:+4930901830@x>;tag=pbx-tag\r\nTo: <sip:+4917055550000@x>;tag=f-xfer\r\nCall-ID: xfer\r\nCSeq: 5 REFER\r\nRefer-To: <sip:207@pbx.example>\r\nContent-Length: 0\r\n\r\n",
        h.trunk.local_addr().unwrap(),
        h.me()
    );
    h.pbx.send_to(refer.as_bytes(), h.sip_udp).await.unwrap();
    recv(&h.trunk).await;
    // The next call from this client goes to 207.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut n = 0;
    loop {
        n += 1;
        let got = call(
            &h,
            "+4917055550000",
            "+4930901830",
            &format!("xfer-next{n}"),
        )
        .await;
        if got.starts_with("INVITE sip:207@") {
            assert_eq!(header(&got, "X-CRM-Responsible").as_deref(), Some("207"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "directory not updated:\n{got}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    h.stop().await;
}

/// `POST /api/v1/screen` answers what a live call gets: the same tags
/// (X-CRM-Responsible from the directory included) and, on a
/// `forward = "ruri"` line, the extension the PBX is asked for.
#[tokio::test]
async fn the_screen_api_answers_what_a_live_call_gets() {
    let h = Harness::start_with("udp", LINES).await;
    let r = api(&h, reqwest::Method::POST, "/contacts", "edit-token")
        .await
        .json(&json!([{"client": "+4917012340007", "user_id": "57", "extension": "257"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for (line, id) in [("+4930901820", "agree-hdr"), ("+4930901830", "agree-ruri")] {
        for caller in ["+4917012340007", "+4917099990002"] {
            let got = call(&h, caller, line, &format!("{id}{caller}")).await;
            let v: Value = api(&h, reqwest::Method::POST, "/screen", "view-token")
                .await
                .json(&json!({"number": caller, "line": line, "direction": "inbound"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let live: Vec<(String, String)> = header_lines(&got)
                .into_iter()
                .filter(|l| l.starts_with("X-CRM-") && !l.starts_with("X-CRM-Call-Id"))
                .map(|l| {
                    let (k, v) = l.split_once(": ").unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect();
            let api_tags: Vec<(String, String)> = v["tags"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, x)| (k.clone(), x.as_str().unwrap().to_string()))
                .collect();
            let mut sorted = live.clone();
            sorted.sort();
            assert_eq!(api_tags, sorted, "{caller} on {line}: {v}\n{got}");
            assert_eq!(
                v["responsible"].as_str(),
                header(&got, "X-CRM-Responsible").as_deref(),
                "{v}"
            );
            let ruri_user = got
                .strip_prefix("INVITE sip:")
                .and_then(|r| r.split('@').next())
                .unwrap();
            let forward = v["forward_to"].as_str().unwrap_or(line);
            assert_eq!(forward, ruri_user, "{v}\n{got}");
        }
    }
    h.stop().await;
}
