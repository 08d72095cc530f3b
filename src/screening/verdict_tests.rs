//! Verdicts and the exact tag bytes.

use std::path::Path;

use super::*;
use crate::config::from_toml;
use crate::screening::exceptions::Item;

const CONFIG: &str = r#"
[pbx]
target = "127.0.0.1:5080"
sources = ["127.0.0.1/32"]

[[trunk]]
name = "carrier"
target = "127.0.0.2:5070"
sources = ["127.0.0.2/32"]

[[trunk]]
name = "backup"
target = "127.0.0.3:5070"
sources = ["127.0.0.3/32"]

[screening]
default_region = "DE"
anonymous = "exception"

[defaults]
source = "CALL"
trunk = "carrier"

[[line]]
number = "+4930901820"
create = "offer"
source = "ADVERTISING"
queue = ["101", "102"]
trunk = "backup"

[[line]]
number = "+4940123456"
create_for = "incoming"
crm_mode = "simple"

[[line]]
number = "+33142685300"
region = "FR"
create = "off"

[[line]]
number = "+4969000001"
on_verstat_failed = "exception"

[[line]]
number = "+4969000002"
on_verstat_failed = "reject"
"#;

fn screener() -> Screener {
    let loaded = from_toml(Path::new("t.toml"), CONFIG.to_string()).unwrap();
    let set = Arc::new(ExceptionSet::new());
    set.replace_all(vec![4915112345678], vec![]);
    Screener::build(&loaded, set).unwrap()
}

fn tags(s: &Screening<'_>) -> String {
    let mut out = Vec::new();
    s.write_tags(Some("c1"), s.responsible(), &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn listed_caller_is_an_exception() {
    let sc = screener();
    let s = sc.screen(Direction::Inbound, b"+4930901820", Some(b"0151 12345678"));
    assert_eq!(s.verdict, Verdict::Exception);
    assert_eq!(s.client, Client::Number(4915112345678));
    assert_eq!(s.create(), CreateTag::None);
    assert_eq!(
        tags(&s),
        "X-CRM-Verdict: exception\r\nX-CRM-Direction: inbound\r\nX-CRM-Client: +4915112345678\r\n\
         X-CRM-Line: +4930901820\r\nX-CRM-Responsible: 101\r\nX-CRM-Call-Id: c1\r\n\
         X-CRM-Reason: listed\r\nX-CRM-Attest: none\r\n"
    );
}

#[test]
fn unlisted_caller_is_logged_with_the_line_settings() {
    let sc = screener();
    let s = sc.screen(Direction::Inbound, b"+4930901820", Some(b"+4915199999999"));
    assert_eq!(s.verdict, Verdict::Log);
    assert_eq!(
        tags(&s),
        "X-CRM-Verdict: log\r\nX-CRM-Direction: inbound\r\nX-CRM-Client: +4915199999999\r\n\
         X-CRM-Line: +4930901820\r\nX-CRM-Create: offer\r\nX-CRM-Source: ADVERTISING\r\n\
         X-CRM-Responsible: 101\r\nX-CRM-Call-Id: c1\r\nX-CRM-Attest: none\r\n"
    );
}

#[test]
fn anonymous_callers_get_the_configured_verdict() {
    let sc = screener();
    for user in [
        None,
        Some(&b"Anonymous"[..]),
        Some(b"RESTRICTED"),
        Some(b"withheld"),
        Some(b"abc"),
        Some(b""),
    ] {
        let s = sc.screen(Direction::Inbound, b"+4999999999", user);
        assert_eq!(s.client, Client::Anonymous, "{user:?}");
        assert_eq!(s.verdict, Verdict::Exception);
        assert_eq!(
            tags(&s),
            "X-CRM-Verdict: exception\r\nX-CRM-Direction: inbound\r\nX-CRM-Client: anonymous\r\n\
             X-CRM-Line: +4999999999\r\nX-CRM-Call-Id: c1\r\n\
             X-CRM-Reason: anonymous\r\nX-CRM-Attest: none\r\n"
        );
    }
}

#[test]
fn create_follows_direction_and_mode() {
    let sc = screener();
    let caller = Some(&b"+4915199999999"[..]);
    // Defaults: auto, all, classic.
    assert_eq!(
        sc.screen(Direction::Outbound, b"+4911111111", caller)
            .create(),
        CreateTag::Lead
    );
    // incoming only, simple CRM.
    assert_eq!(
        sc.screen(Direction::Inbound, b"+4940123456", caller)
            .create(),
        CreateTag::Deal
    );
    assert_eq!(
        sc.screen(Direction::Outbound, b"+4940123456", caller)
            .create(),
        CreateTag::None
    );
    let s = sc.screen(Direction::Outbound, b"+4940123456", caller);
    assert!(tags(&s).contains("X-CRM-Create: none\r\nX-CRM-Source: CALL\r\n"));
    assert_eq!(
        sc.screen(Direction::Inbound, b"+33142685300", caller)
            .create(),
        CreateTag::None
    );
}

#[test]
fn client_uses_the_line_region_and_line_may_be_no_number() {
    let sc = screener();
    let s = sc.screen(Direction::Inbound, b"+33142685300", Some(b"01 42 68 53 01"));
    assert_eq!(s.client, Client::Number(33142685301));
    let s = sc.screen(Direction::Outbound, b"alice", Some(b"+4915199999999;npdi"));
    assert_eq!(s.line, None);
    assert_eq!(s.settings, sc.lines().defaults());
    let t = tags(&s);
    assert!(!t.contains("X-CRM-Line"), "{t}");
    assert!(
        t.contains("X-CRM-Direction: outbound\r\nX-CRM-Client: +4915199999999\r\n"),
        "{t}"
    );
}

#[test]
fn trunks_resolve_per_line() {
    let sc = screener();
    assert_eq!(sc.line_trunk(Some(4930901820)), Some("backup"));
    assert_eq!(sc.line_trunk(Some(4940123456)), Some("carrier"));
    assert_eq!(sc.line_trunk(None), Some("carrier"));
}

#[test]
fn call_id_cannot_inject_headers() {
    let sc = screener();
    let s = sc.screen(Direction::Inbound, b"+4930901820", None);
    let mut out = Vec::new();
    s.write_tags(Some("a\r\nX-Evil: 1"), None, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("X-CRM-Call-Id: aX-Evil: 1\r\n"), "{text}");
}

#[test]
fn bad_line_is_a_located_config_error() {
    let text = format!("{CONFIG}\n[[line]]\nnumber = \"+4930 901820\"\n");
    let loaded = from_toml(Path::new("t.toml"), text).unwrap();
    let err = Screener::build(&loaded, Arc::new(ExceptionSet::new()))
        .err()
        .unwrap();
    assert_eq!(err.errors()[0].line, 50, "{err}");
    assert!(err.to_string().contains("configured twice"), "{err}");
}

#[test]
fn listed_after_build_is_seen_without_rebuild() {
    let sc = screener();
    sc.exceptions().insert_phone(4915199999999);
    let s = sc.screen(Direction::Inbound, b"+4930901820", Some(b"+4915199999999"));
    assert_eq!(s.verdict, Verdict::Exception);
}

fn reason(s: &Screening<'_>) -> Option<String> {
    s.reason.map(|r| r.to_string())
}

#[test]
fn the_longest_entry_decides_and_says_so() {
    let sc = screener();
    let rule = |v: &str, allow| Item::Rule(Rule::parse_value(v, allow).unwrap());
    sc.exceptions().insert_items(&[
        rule("+4930901*", false),
        rule("+49309018*", true),
        Item::number(4930901811, false).unwrap(),
        Item::number(4930901700, true).unwrap(),
    ]);
    let at = |caller: &[u8]| sc.screen(Direction::Inbound, b"+4930901820", Some(caller));
    let s = at(b"+4930901799");
    assert_eq!(
        (s.verdict, reason(&s).as_deref()),
        (Verdict::Exception, Some("prefix:+4930901"))
    );
    assert!(
        tags(&s).contains("X-CRM-Reason: prefix:+4930901\r\n"),
        "{}",
        tags(&s)
    );
    let s = at(b"+4930901812");
    assert_eq!(
        (s.verdict, reason(&s).as_deref()),
        (Verdict::Log, Some("allow:+49309018"))
    );
    assert_eq!(
        s.create(),
        CreateTag::Offer,
        "an allowed caller is an ordinary log call"
    );
    let s = at(b"+4930901811");
    assert_eq!(
        (s.verdict, reason(&s).as_deref()),
        (Verdict::Exception, Some("listed")),
        "an exact entry is the longest"
    );
    let s = at(b"+4930901700");
    assert_eq!(
        (s.verdict, reason(&s).as_deref()),
        (Verdict::Log, Some("allow:+4930901700"))
    );
    let s = at(b"+4930801700");
    assert_eq!((s.verdict, reason(&s)), (Verdict::Log, None));
    assert!(!tags(&s).contains("X-CRM-Reason"));
}

#[test]
fn a_failed_verification_does_what_the_line_says() {
    let sc = screener();
    let caller = Some(&b"+12155550112"[..]);
    let v = |line: &[u8], a| sc.screen_verified(Direction::Inbound, line, caller, a);
    // The defaults ignore it; the tag still tells.
    let s = v(b"+4930901820", Attest::Failed);
    assert_eq!(
        (s.verdict, s.reject, reason(&s)),
        (Verdict::Log, false, None)
    );
    assert!(
        tags(&s).ends_with("X-CRM-Attest: failed\r\n"),
        "{}",
        tags(&s)
    );
    let s = v(b"+4969000001", Attest::Failed);
    assert_eq!(
        (s.verdict, s.reject, reason(&s).as_deref()),
        (Verdict::Exception, false, Some("verstat"))
    );
    let s = v(b"+4969000002", Attest::Failed);
    assert_eq!(
        (s.verdict, s.reject, reason(&s).as_deref()),
        (Verdict::Exception, true, Some("verstat"))
    );
    // A passed call on a rejecting line is an ordinary call.
    for a in [Attest::A, Attest::B, Attest::C, Attest::None] {
        let s = v(b"+4969000002", a);
        assert_eq!((s.verdict, s.reject), (Verdict::Log, false), "{a:?}");
        assert!(tags(&s).ends_with(&format!("X-CRM-Attest: {}\r\n", a.as_str())));
    }
    // A listed caller stays `listed` on an exception line.
    sc.exceptions().insert_phone(12155550112);
    let s = v(b"+4969000001", Attest::Failed);
    assert_eq!(reason(&s).as_deref(), Some("listed"));
    // Outbound calls carry no verification.
    let s = sc.screen_verified(Direction::Outbound, b"+4969000002", caller, Attest::Failed);
    assert_eq!((s.attest, s.reject), (Attest::None, false));
    assert!(!tags(&s).contains("X-CRM-Attest"));
}

#[test]
fn reasons_read_back() {
    for r in [
        "listed",
        "prefix:+4930901",
        "allow:+49309018",
        "verstat",
        "anonymous",
    ] {
        assert_eq!(Reason::parse(r).unwrap().to_string(), r);
    }
    for bad in ["", "prefix:", "prefix:4930", "allow:+", "other:+49"] {
        assert_eq!(Reason::parse(bad), None, "{bad}");
    }
}

#[test]
fn e_mails_match_address_domain_and_parents_replies_pass() {
    let sc = screener();
    sc.exceptions().insert_items(&[
        Item::email("@newsletter.example", false),
        Item::email("@*.ads.example", false),
        Item::email("ceo@newsletter.example", true),
    ]);
    assert_eq!(
        sc.screen_email("promo@newsletter.example", false),
        Verdict::Exception
    );
    assert_eq!(
        sc.screen_email("promo@newsletter.example", true),
        Verdict::Log,
        "a reply always passes"
    );
    assert_eq!(
        sc.screen_email("CEO@newsletter.example", false),
        Verdict::Log
    );
    assert_eq!(
        sc.screen_email("x@eu.ads.example", false),
        Verdict::Exception
    );
    assert_eq!(sc.screen_email("x@ads.example", false), Verdict::Log);
}

/// The tags as `write_tags` wrote them before the constants were merged
/// and the room reserved: one header line at a time.
fn tags_as_before(s: &Screening<'_>, call_id: Option<&str>, responsible: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    header(&mut out, b"X-CRM-Verdict: ", s.verdict.as_str().as_bytes());
    header(
        &mut out,
        b"X-CRM-Direction: ",
        s.direction.as_str().as_bytes(),
    );
    out.extend_from_slice(b"X-CRM-Client: ");
    match s.client {
        Client::Number(n) => write_e164(n, &mut out),
        Client::Anonymous => out.extend_from_slice(b"anonymous"),
    }
    out.extend_from_slice(b"\r\n");
    if let Some(n) = s.line {
        out.extend_from_slice(b"X-CRM-Line: ");
        write_e164(n, &mut out);
        out.extend_from_slice(b"\r\n");
    }
    if s.verdict == Verdict::Log {
        header(&mut out, b"X-CRM-Create: ", s.create().as_str().as_bytes());
        if !s.settings.source.is_empty() {
            header(&mut out, b"X-CRM-Source: ", s.settings.source.as_bytes());
        }
    }
    let clean = |v: &[u8]| -> Vec<u8> {
        v.iter()
            .copied()
            .filter(|b| !b.is_ascii_control())
            .collect()
    };
    if let Some(r) = responsible {
        header(&mut out, b"X-CRM-Responsible: ", &clean(r.as_bytes()));
    }
    if let Some(id) = call_id {
        header(&mut out, b"X-CRM-Call-Id: ", &clean(id.as_bytes()));
    }
    if let Some(r) = s.reason {
        out.extend_from_slice(b"X-CRM-Reason: ");
        r.write(&mut out);
        out.extend_from_slice(b"\r\n");
    }
    if s.direction == Direction::Inbound {
        header(&mut out, b"X-CRM-Attest: ", s.attest.as_str().as_bytes());
    }
    out
}

/// Every combination of verdict, direction, client, line, reason and
/// attestation on every configured line (and the defaults) writes what
/// the header-by-header writer wrote.
#[test]
fn tags_are_written_as_before() {
    let sc = screener();
    let lines: [&[u8]; 7] = [
        b"+4930901820",
        b"+4940123456",
        b"+33142685300",
        b"+4969000001",
        b"+4969000002",
        b"+4911111111",
        b"x",
    ];
    let reasons = [
        None,
        Some(Reason::Listed),
        Some(Reason::Verstat),
        Some(Reason::Anonymous),
        Some(Reason::Prefix(Rule::prefix(4930, 4, false).unwrap())),
        Some(Reason::Allow(Rule::prefix(49301, 5, true).unwrap())),
    ];
    let mut n = 0;
    for line in lines {
        for direction in [Direction::Inbound, Direction::Outbound] {
            let base = sc.screen(direction, line, Some(b"+4915112345678"));
            for verdict in [Verdict::Log, Verdict::Exception] {
                for client in [Client::Number(4915112345678), Client::Anonymous] {
                    for reason in reasons {
                        for attest in Attest::ALL {
                            let mut s = base;
                            s.verdict = verdict;
                            s.client = client;
                            s.reason = reason;
                            s.attest = attest;
                            for (id, who) in [
                                (None, None),
                                (Some("c1"), Some("101")),
                                (Some("a\r\nX-Evil: 1"), Some("\u{7f}x\ty")),
                            ] {
                                let mut out = b"prefix".to_vec();
                                s.write_tags(id, who, &mut out);
                                assert_eq!(&out[..6], b"prefix");
                                assert_eq!(
                                    String::from_utf8_lossy(&out[6..]),
                                    String::from_utf8_lossy(&tags_as_before(&s, id, who))
                                );
                                n += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(n > 1000);
}
