//! The proxy end to end over UDP: a fake trunk and a fake PBX talk to a
//! real sidecar on loopback. Every message the proxy emits is re-parsed by
//! rsip and checked to keep the original header lines byte for byte.

mod common;

use common::*;

/// Header lines the proxy may change or add; all others must pass intact.
fn touched(line: &str) -> bool {
    let name = line
        .split(':')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        name.as_str(),
        "via" | "v" | "max-forwards" | "record-route" | "route"
    ) || name.starts_with("x-crm-")
}

/// Checks the forwarded message against what was sent.
fn assert_faithful(sent: &str, got: &str) {
    rsip_parses(got.as_bytes());
    let got_lines = header_lines(got);
    for line in header_lines(sent).iter().filter(|l| !touched(l)) {
        assert!(
            got_lines.contains(line),
            "header line changed or lost: {line:?}\n--- got:\n{got}"
        );
    }
    let body = |m: &str| {
        m.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    };
    assert_eq!(body(sent), body(got), "body changed");
}

async fn inbound_call(h: &Harness, caller: &str, ruri: &str, call_id: &str, extra: &str) -> String {
    let (inv, got, from) = h.invite_from_trunk(caller, ruri, call_id, extra).await;
    assert_eq!(
        from, h.sip_udp,
        "forwarded from the sidecar's listening socket"
    );
    assert_faithful(&inv, &got);
    got
}

#[tokio::test]
async fn unlisted_caller_is_tagged_log_with_line_settings() {
    let h = Harness::start().await;
    let got = inbound_call(&h, "+4917099988877", "+4930901820", "c-unlisted", "").await;
    assert_eq!(
        header(&got, "X-CRM-Verdict").as_deref(),
        Some("log"),
        "{got}"
    );
    assert_eq!(header(&got, "X-CRM-Direction").as_deref(), Some("inbound"));
    assert_eq!(
        header(&got, "X-CRM-Client").as_deref(),
        Some("+4917099988877")
    );
    assert_eq!(header(&got, "X-CRM-Line").as_deref(), Some("+4930901820"));
    assert_eq!(header(&got, "X-CRM-Create").as_deref(), Some("offer"));
    assert_eq!(header(&got, "X-CRM-Source").as_deref(), Some("ADVERTISING"));
    assert_eq!(header(&got, "X-CRM-Responsible").as_deref(), Some("101"));
    let id = header(&got, "X-CRM-Call-Id").expect("call id");
    assert_eq!(id.len(), 32);
    // Own Via on top, the trunk's below it; Max-Forwards decremented.
    let vias = headers(&got, "Via");
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/UDP {};branch=z9hG4bKsS", h.me())),
        "{vias:?}"
    );
    assert!(vias[1].contains("branch=z9hG4bK-c-unlisted"), "{vias:?}");
    assert_eq!(header(&got, "Max-Forwards").as_deref(), Some("69"));
    assert_eq!(
        headers(&got, "Record-Route"),
        vec![format!("<sip:{};lr>", h.me())]
    );
    h.stop().await;
}

#[tokio::test]
async fn listed_caller_is_exception_without_create_or_source() {
    let h = Harness::start().await;
    let got = inbound_call(&h, "+4915112345678", "+4930901820", "c-listed", "").await;
    assert_eq!(
        header(&got, "X-CRM-Verdict").as_deref(),
        Some("exception"),
        "{got}"
    );
    assert_eq!(
        header(&got, "X-CRM-Client").as_deref(),
        Some("+4915112345678")
    );
    assert_eq!(header(&got, "X-CRM-Create"), None);
    assert_eq!(header(&got, "X-CRM-Source"), None);
    h.stop().await;
}

#[tokio::test]
async fn national_format_caller_is_normalised_with_the_region() {
    let h = Harness::start().await;
    // Listed as "030 7654321" in the file; calls in as 0307654321.
    let got = inbound_call(&h, "0307654321", "030901821", "c-national", "").await;
    assert_eq!(
        header(&got, "X-CRM-Client").as_deref(),
        Some("+49307654321"),
        "{got}"
    );
    assert_eq!(header(&got, "X-CRM-Verdict").as_deref(), Some("exception"));
    assert_eq!(header(&got, "X-CRM-Line").as_deref(), Some("+4930901821"));
    // And the same number as written in the list with 0049 and spaces.
    let got = inbound_call(&h, "+49301234567", "030901821", "c-national2", "").await;
    assert_eq!(
        header(&got, "X-CRM-Verdict").as_deref(),
        Some("exception"),
        "{got}"
    );
    h.stop().await;
}

#[tokio::test]
async fn anonymous_caller_gets_the_configured_verdict() {
    let h = Harness::start().await;
    let got = inbound_call(&h, "anonymous", "+4930901821", "c-anon", "").await;
    assert_eq!(
        header(&got, "X-CRM-Client").as_deref(),
        Some("anonymous"),
        "{got}"
    );
    assert_eq!(header(&got, "X-CRM-Verdict").as_deref(), Some("log"));
    // Line +4930901821 is simple CRM, creates for incoming: a deal.
    assert_eq!(header(&got, "X-CRM-Create").as_deref(), Some("deal"));
    assert_eq!(header(&got, "X-CRM-Source").as_deref(), Some("WEB"));
    h.stop().await;
}

#[tokio::test]
async fn trusted_pai_names_the_caller() {
    let h = Harness::start().await;
    let got = inbound_call(
        &h,
        "anonymous",
        "+4930901820",
        "c-pai",
        "P-Asserted-Identity: <sip:+4915112345678@carrier.example>\r\nPrivacy: id\r\n",
    )
    .await;
    assert_eq!(
        header(&got, "X-CRM-Client").as_deref(),
        Some("+4915112345678"),
        "{got}"
    );
    assert_eq!(header(&got, "X-CRM-Verdict").as_deref(), Some("exception"));
    h.stop().await;
}

#[tokio::test]
async fn spoofed_crm_headers_from_the_trunk_are_removed() {
    let h = Harness::start().await;
    let got = inbound_call(
        &h,
        "+4915112345678",
        "+4930901820",
        "c-spoof",
        "X-CRM-Verdict: log\r\nx-crm-responsible: 999\r\nX-Crm-Anything: yes\r\n",
    )
    .await;
    assert_eq!(
        headers(&got, "X-CRM-Verdict"),
        vec!["exception".to_string()],
        "{got}"
    );
    assert_eq!(headers(&got, "X-CRM-Responsible"), vec!["101".to_string()]);
    assert!(header(&got, "X-Crm-Anything").is_none(), "{got}");
    h.stop().await;
}

#[tokio::test]
async fn outbound_call_goes_to_the_trunk_without_tags() {
    let h = Harness::start().await;
    let pbx_addr = h.pbx.local_addr().unwrap();
    // PBX calls a listed client from line +4930901820.
    let inv = invite(
        h.sip_udp,
        pbx_addr,
        "+4915112345678",
        "+4930901820",
        "c-out",
        "X-CRM-Verdict: log\r\n",
    );
    h.pbx.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let (got, _) = recv(&h.trunk).await;
    assert_faithful(&inv, &got);
    assert!(
        header_lines(&got)
            .iter()
            .all(|l| !l.to_ascii_lowercase().starts_with("x-crm-")),
        "carrier must not see X-CRM-*:\n{got}"
    );
    // Counted by the proxy right after the send: the datagram may arrive
    // first, so wait for the count.
    let want = "sipscreen_calls_screened_total{direction=\"outbound\",verdict=\"exception\"} 1";
    let deadline = std::time::Instant::now() + WAIT;
    while !h.server.metrics.encode().contains(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "{want} not counted:\n{}",
            h.server.metrics.encode()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn responses_return_through_the_via_chain_and_the_dialog_through_record_route() {
    let h = Harness::start().await;
    let trunk_addr = h.trunk.local_addr().unwrap();
    let pbx_addr = h.pbx.local_addr().unwrap();
    let got = inbound_call(&h, "+4917011111111", "+4930901820", "c-dialog", "").await;

    // 180 and 200 from the PBX come back to the trunk with our Via gone.
    for (code, reason) in [(180, "Ringing"), (200, "OK")] {
        let resp = response_to(
            &got,
            code,
            reason,
            "pbx-tag",
            &format!("sip:agent@{pbx_addr}"),
        );
        h.pbx.send_to(resp.as_bytes(), h.sip_udp).await.unwrap();
        let (back, from) = recv(&h.trunk).await;
        assert_eq!(from, h.sip_udp);
        rsip_parses(back.as_bytes());
        assert!(
            back.starts_with(&format!("SIP/2.0 {code} {reason}\r\n")),
            "{back}"
        );
        let vias = headers(&back, "Via");
        assert_eq!(vias.len(), 1, "{back}");
        assert!(vias[0].contains("branch=z9hG4bK-c-dialog"), "{back}");
        assert_eq!(
            headers(&back, "Record-Route"),
            vec![format!("<sip:{};lr>", h.me())]
        );
    }

    // ACK and BYE from the trunk carry our Route: popped and sent to the
    // PBX's Contact.
    for (method, cseq) in [("ACK", "1 ACK"), ("BYE", "2 BYE")] {
        let req = format!(
            "{method} sip:agent@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {trunk_addr};branch=z9hG4bK-{method}\r\nRoute: <sip:{};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:+4917011111111@carrier.example>;tag=f-c-dialog\r\nTo: <sip:+4930901820@carrier.example>;tag=pbx-tag\r\nCall-ID: c-dialog\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n",
            h.me()
        );
        h.trunk.send_to(req.as_bytes(), h.sip_udp).await.unwrap();
        let (fwd, _) = recv(&h.pbx).await;
        rsip_parses(fwd.as_bytes());
        assert!(
            fwd.starts_with(&format!("{method} sip:agent@{pbx_addr} SIP/2.0\r\n")),
            "{fwd}"
        );
        assert!(
            headers(&fwd, "Route").is_empty(),
            "our Route is popped:\n{fwd}"
        );
        assert!(
            headers(&fwd, "Record-Route").is_empty(),
            "no Record-Route in-dialog:\n{fwd}"
        );
        assert!(header(&fwd, "X-CRM-Verdict").is_none());
    }

    // BYE from the PBX side goes to the trunk.
    let bye = format!(
        "BYE sip:+4917011111111@{trunk_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {pbx_addr};branch=z9hG4bK-pbxbye\r\nRoute: <sip:{};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:+4930901820@carrier.example>;tag=pbx-tag\r\nTo: <sip:+4917011111111@carrier.example>;tag=f-c-dialog\r\nCall-ID: c-dialog\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        h.me()
    );
    h.pbx.send_to(bye.as_bytes(), h.sip_udp).await.unwrap();
    let (fwd, _) = recv(&h.trunk).await;
    assert!(fwd.starts_with("BYE "), "{fwd}");
    h.stop().await;
}

#[tokio::test]
async fn cancel_takes_the_same_branch_as_its_invite() {
    let h = Harness::start().await;
    let trunk_addr = h.trunk.local_addr().unwrap();
    let got = inbound_call(&h, "+4917022222222", "+4930901820", "c-cancel", "").await;
    let cancel = format!(
        "CANCEL sip:+4930901820@{} SIP/2.0\r\nVia: SIP/2.0/UDP {trunk_addr};branch=z9hG4bK-c-cancel\r\nMax-Forwards: 70\r\nFrom: \"Caller\" <sip:+4917022222222@carrier.example>;tag=f-c-cancel\r\nTo: <sip:+4930901820@carrier.example>\r\nCall-ID: c-cancel\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        h.sip_udp
    );
    h.trunk.send_to(cancel.as_bytes(), h.sip_udp).await.unwrap();
    let (fwd, _) = recv(&h.pbx).await;
    assert!(fwd.starts_with("CANCEL "), "{fwd}");
    assert_eq!(
        headers(&fwd, "Via")[0],
        headers(&got, "Via")[0],
        "CANCEL must match the INVITE's branch"
    );
    assert!(
        header(&fwd, "X-CRM-Verdict").is_none(),
        "only INVITEs are tagged"
    );
    h.stop().await;
}

#[tokio::test]
async fn max_forwards_zero_gets_483() {
    let h = Harness::start().await;
    let inv = invite(
        h.sip_udp,
        h.trunk.local_addr().unwrap(),
        "+4930901820",
        "+4917033333333",
        "c-mf0",
        "",
    )
    .replace("Max-Forwards: 70", "Max-Forwards: 0");
    h.trunk.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let (got, _) = recv(&h.trunk).await;
    rsip_parses(got.as_bytes());
    assert!(got.starts_with("SIP/2.0 483 Too Many Hops\r\n"), "{got}");
    assert_eq!(header(&got, "Call-ID").as_deref(), Some("c-mf0"));
    assert!(header(&got, "To").unwrap().contains(";tag="), "{got}");
    h.nothing_more_at_pbx().await;
    h.stop().await;
}

#[tokio::test]
async fn unknown_source_is_refused_never_relayed() {
    let h = Harness::start().await;
    let inv = invite(
        h.sip_udp,
        h.stranger.local_addr().unwrap(),
        "+4930901820",
        "+4917044444444",
        "c-stranger",
        "",
    );
    h.stranger.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let (got, _) = recv(&h.stranger).await;
    assert!(got.starts_with("SIP/2.0 403 Forbidden\r\n"), "{got}");
    h.nothing_more_at_pbx().await;
    h.nothing_more_at_trunk().await;
    assert_eq!(h.server.metrics.sip_error_count("forbidden_source"), 1);
    h.stop().await;
}

#[tokio::test]
async fn forged_response_cannot_bounce_off_the_sidecar() {
    let h = Harness::start().await;
    // A response with our Via on top, from a stranger, aimed at the PBX.
    let forged = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKsS0000000000000000\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: forged\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        h.me(),
        h.pbx.local_addr().unwrap()
    );
    h.stranger
        .send_to(forged.as_bytes(), h.sip_udp)
        .await
        .unwrap();
    h.nothing_more_at_pbx().await;
    assert_eq!(
        h.server.metrics.sip_error_count("response_unknown_source"),
        1
    );
    h.stop().await;
}

#[tokio::test]
async fn message_over_the_configured_limit_gets_513() {
    let h = Harness::start_with("udp", "").await;
    // Lower the limit with a reload, then send a 3 KiB INVITE.
    let cfg = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace("[sip]\n", "[sip]\nmax_message_bytes = 2048\n");
    std::fs::write(&h.config_path, cfg).unwrap();
    h.server.reload().expect("valid reload");
    let pad = format!("X-Pad: {}\r\n", "a".repeat(3000));
    let inv = invite(
        h.sip_udp,
        h.trunk.local_addr().unwrap(),
        "+4930901820",
        "+4917055555555",
        "c-big2",
        &pad,
    );
    h.trunk.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let (got, _) = recv(&h.trunk).await;
    assert!(
        got.starts_with("SIP/2.0 513 Message Too Large\r\n"),
        "{got}"
    );
    h.nothing_more_at_pbx().await;
    h.stop().await;
}

#[tokio::test]
async fn garbage_and_malformed_requests_harm_no_other_call() {
    let h = Harness::start().await;
    let trunk = h.trunk.local_addr().unwrap();
    h.trunk
        .send_to(b"\x00\x01garbage\xff\r\n\r\n", h.sip_udp)
        .await
        .unwrap();
    let bad = invite(
        h.sip_udp,
        trunk,
        "+4930901820",
        "+4917066666666",
        "c-bad",
        "",
    )
    .replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS");
    h.trunk.send_to(bad.as_bytes(), h.sip_udp).await.unwrap();
    let (got, _) = recv(&h.trunk).await;
    assert!(got.starts_with("SIP/2.0 400 Bad Request\r\n"), "{got}");
    // A good call right after still goes through.
    let got = inbound_call(&h, "+4917077777777", "+4930901820", "c-good", "").await;
    assert_eq!(header(&got, "X-CRM-Verdict").as_deref(), Some("log"));
    h.stop().await;
}

#[tokio::test]
async fn invalid_reload_keeps_the_running_config() {
    let h = Harness::start().await;
    let good = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        good.replace("source = \"ADVERTISING\"", "source = ADVERTISING"),
    )
    .unwrap();
    let err = h
        .server
        .reload()
        .expect_err("invalid config refused")
        .to_string();
    assert!(
        err.contains("sipscreen.toml:") && err.contains(':'),
        "error names file, line, column: {err}"
    );
    let m = h.server.metrics.encode();
    assert!(
        m.contains("sipscreen_config_reloads_total{result=\"error\"} 1"),
        "{m}"
    );
    // The old config still serves.
    let got = inbound_call(
        &h,
        "+4917088888888",
        "+4930901820",
        "c-after-bad-reload",
        "",
    )
    .await;
    assert_eq!(
        header(&got, "X-CRM-Source").as_deref(),
        Some("ADVERTISING"),
        "{got}"
    );
    // A valid change takes effect, including a new exception list.
    std::fs::write(&h.config_path, good.replace("ADVERTISING", "RADIO")).unwrap();
    std::fs::write(
        h.dir.path().join("exceptions.txt"),
        "+4917088888888; now listed\n",
    )
    .unwrap();
    h.server.reload().expect("valid reload");
    let got = inbound_call(
        &h,
        "+4917088888888",
        "+4930901820",
        "c-after-good-reload",
        "",
    )
    .await;
    assert_eq!(
        header(&got, "X-CRM-Verdict").as_deref(),
        Some("exception"),
        "{got}"
    );
    let got = inbound_call(
        &h,
        "+4917000000001",
        "+4930901820",
        "c-after-good-reload2",
        "",
    )
    .await;
    assert_eq!(
        header(&got, "X-CRM-Source").as_deref(),
        Some("RADIO"),
        "{got}"
    );
    h.stop().await;
}

#[tokio::test]
async fn compact_and_folded_headers_are_understood_and_kept() {
    let h = Harness::start().await;
    let trunk = h.trunk.local_addr().unwrap();
    let inv = format!(
        "INVITE sip:+4930901820@{} SIP/2.0\r\nv: SIP/2.0/UDP {trunk};branch=z9hG4bK-compact\r\nf: <sip:+4915112345678@carrier.example>\r\n ;tag=folded\r\nt: <sip:+4930901820@carrier.example>\r\ni: c-compact\r\nCSeq: 1 INVITE\r\nSubject: kept\r\n as is\r\nl: 0\r\n\r\n",
        h.sip_udp
    );
    h.trunk.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let (got, _) = recv(&h.pbx).await;
    assert_eq!(
        header(&got, "X-CRM-Verdict").as_deref(),
        Some("exception"),
        "{got}"
    );
    assert_eq!(
        header(&got, "Max-Forwards").as_deref(),
        Some("70"),
        "inserted when absent"
    );
    assert!(
        got.contains("f: <sip:+4915112345678@carrier.example>\r\n ;tag=folded\r\n"),
        "{got}"
    );
    assert!(got.contains("Subject: kept\r\n as is\r\n"), "{got}");
    assert!(
        got.contains(&format!(
            "v: SIP/2.0/UDP {trunk};branch=z9hG4bK-compact\r\n"
        )),
        "{got}"
    );
    h.stop().await;
}

#[tokio::test]
async fn trailing_datagram_bytes_beyond_content_length_are_not_forwarded() {
    let h = Harness::start().await;
    let inv = invite(
        h.sip_udp,
        h.trunk.local_addr().unwrap(),
        "+4930901820",
        "+4917012121212",
        "c-trail",
        "",
    );
    let mut data = inv.clone().into_bytes();
    data.extend_from_slice(b"INVITE sip:junk SIP/2.0\r\n\r\n");
    h.trunk.send_to(&data, h.sip_udp).await.unwrap();
    let (got, _) = recv(&h.pbx).await;
    assert!(got.ends_with("m=audio 4000 RTP/AVP 0\r\n"), "{got}");
    h.stop().await;
}

/// With several receive threads on the UDP socket, bursts of calls are
/// screened completely: every INVITE reaches the PBX once, with its own
/// verdict, and the server still stops cleanly (its receivers exit).
#[tokio::test]
async fn several_udp_receivers_screen_bursts_of_calls() {
    let h = Harness::start_with_sip("udp_receivers = 4\n").await;
    let trunk = h.trunk.local_addr().unwrap();
    // Bursts small enough for the test PBX socket's default buffer.
    const BURSTS: usize = 8;
    const BURST: usize = 25;
    let mut seen = [false; BURSTS * BURST];
    for b in 0..BURSTS {
        for i in b * BURST..(b + 1) * BURST {
            // Even calls from a listed number, odd ones from unlisted numbers.
            let caller = if i.is_multiple_of(2) {
                "+4915112345678".to_string()
            } else {
                format!("+49170555{i:05}")
            };
            let inv = invite(
                h.sip_udp,
                trunk,
                "+4930901820",
                &caller,
                &format!("burst-{i}"),
                "",
            );
            h.trunk.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
        }
        for _ in 0..BURST {
            let (got, _) = recv(&h.pbx).await;
            let id = header(&got, "Call-ID").expect("Call-ID");
            let i: usize = id.strip_prefix("burst-").unwrap().parse().unwrap();
            assert!(!seen[i], "{id} forwarded twice");
            seen[i] = true;
            let want = if i.is_multiple_of(2) {
                "exception"
            } else {
                "log"
            };
            assert_eq!(
                header(&got, "X-CRM-Verdict").as_deref(),
                Some(want),
                "{got}"
            );
        }
    }
    assert!(seen.iter().all(|&s| s));
    // The fourth receiver runs (other tests' servers have one each).
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect();
    assert!(names.iter().any(|n| n.trim() == "sip-udp-3"), "{names:?}");
    nothing(&h.pbx, 200).await;
    h.stop().await;
}
