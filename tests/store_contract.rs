//! The store contract, run against both backends: the SQLite file and a
//! real PostgreSQL server (tests/common/pg.rs). Every trait method the
//! SQLite unit tests cover has its case here, written once over
//! `Arc<dyn Store>`.

mod common;

use std::sync::Arc;

use sipscreen::contacts::Contact;
use sipscreen::screening::exceptions::{Item, Rule};
use sipscreen::store::{
    ActiveCall, CrmTokens, Kind, ListFilter, NewEntry, NewEvent, Pattern, Store,
};

/// Opens a store; `reopen` opens the same data again.
struct Backend {
    open: Box<dyn Fn() -> Arc<dyn Store>>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn store(&self) -> Arc<dyn Store> {
        (self.open)()
    }
}

fn sqlite() -> Option<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    Some(Backend {
        open: Box::new(move || {
            Arc::new(sipscreen::store::sqlite::SqliteStore::open_dir(&path).unwrap())
        }),
        _dir: Some(dir),
    })
}

fn postgres() -> Option<Backend> {
    let url = common::pg::cluster()?.database();
    Some(Backend {
        open: Box::new(move || {
            Arc::new(sipscreen::store::postgres::PgStore::open(&url, None, 4).unwrap())
        }),
        _dir: None,
    })
}

/// Each case as `sqlite::case` and `postgres::case`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $case() { if let Some(b) = super::sqlite() { super::$case(&b) } })*
        }
        mod postgres {
            $(#[test] fn $case() { if let Some(b) = super::postgres() { super::$case(&b) } })*
        }
    };
}

contract!(
    upsert_counts_adds_updates_and_audits_them,
    a_batch_naming_a_value_twice_adds_then_updates_it,
    list_filters_and_pages_newest_first,
    list_filters_by_kind_value_pattern_and_action,
    remove_and_expire_leave_audit_rows,
    reopening_finds_everything_committed,
    changing_the_action_is_an_update_and_audited,
    the_outbox_keeps_order_retries_and_dead_letters,
    crm_calls_and_finishes,
    calls_and_their_events_are_written_together_and_survive_a_reopen,
    contacts_upsert_list_page_and_remove,
    tokens_answers_and_depth,
    values_in_code_point_order_page_by_prefix,
);

fn phone(v: &str, comment: &str) -> NewEntry {
    NewEntry {
        kind: Kind::Phone,
        value: v.to_string(),
        given: v.to_string(),
        comment: comment.to_string(),
        origin: "api".to_string(),
        expires_at: None,
        allow: false,
    }
}

fn email(v: &str) -> NewEntry {
    NewEntry {
        kind: Kind::Email,
        ..phone(v, "")
    }
}

fn all(limit: usize) -> ListFilter {
    ListFilter {
        limit,
        ..Default::default()
    }
}

fn sorted(mut items: Vec<Item>) -> Vec<Item> {
    items.sort_by_key(|i| format!("{i:?}"));
    items
}

fn upsert_counts_adds_updates_and_audits_them(b: &Backend) {
    let s = b.store();
    let r = s
        .upsert(
            &[phone("+4930901820", "a"), phone("+4930901821", "b")],
            "alice",
            1,
        )
        .unwrap();
    assert_eq!((r.added, r.updated, r.unchanged), (2, 0, 0));
    let r = s
        .upsert(
            &[phone("+4930901820", "a"), phone("+4930901821", "c")],
            "bob",
            2,
        )
        .unwrap();
    assert_eq!((r.added, r.updated, r.unchanged), (0, 1, 1));
    let audit = s.audit(Some("+4930901821"), None, 10).unwrap();
    let got: Vec<(&str, &str, &str, i64)> = audit
        .iter()
        .map(|a| {
            (
                a.action.as_str(),
                a.actor.as_str(),
                a.comment.as_str(),
                a.at,
            )
        })
        .collect();
    assert_eq!(got, [("update", "bob", "c", 2), ("add", "alice", "b", 1)]);
    assert_eq!(
        sorted(s.load_active(3).unwrap()),
        [Item::Phone(4930901820), Item::Phone(4930901821)]
    );
    let e = &s.list(&all(10)).unwrap()[0];
    assert_eq!(
        (
            e.value.as_str(),
            e.comment.as_str(),
            e.created_by.as_str(),
            e.created_at,
            e.updated_at
        ),
        ("+4930901821", "c", "alice", 1, Some(2))
    );
    // The audit pages below a cursor.
    let page = s.audit(None, Some(audit[0].id), 10).unwrap();
    assert!(page.iter().all(|a| a.id < audit[0].id));
    assert_eq!(page.len(), 2);
}

fn a_batch_naming_a_value_twice_adds_then_updates_it(b: &Backend) {
    let s = b.store();
    let r = s
        .upsert(
            &[
                phone("+4930901820", "first"),
                phone("+4930901821", "x"),
                phone("+4930901820", "second"),
                phone("+4930901820", "second"),
            ],
            "t",
            1,
        )
        .unwrap();
    assert_eq!((r.added, r.updated, r.unchanged), (2, 1, 1));
    let e = s
        .list(&ListFilter {
            value: Some("+4930901820".into()),
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(e[0].comment, "second");
    let acts: Vec<String> = s
        .audit(Some("+4930901820"), None, 10)
        .unwrap()
        .into_iter()
        .map(|a| format!("{} {}", a.action, a.comment))
        .collect();
    assert_eq!(acts, ["update second", "add first"]);
}

fn list_filters_and_pages_newest_first(b: &Backend) {
    let s = b.store();
    let many: Vec<NewEntry> = (0..25)
        .map(|i| {
            phone(
                &format!("+49309018{i:02}"),
                if i % 2 == 0 { "Even one" } else { "odd" },
            )
        })
        .collect();
    s.upsert(&many, "t", 1).unwrap();
    let page = |before| {
        s.list(&ListFilter {
            comment: Some("EVEN".into()),
            before,
            limit: 5,
            ..Default::default()
        })
        .unwrap()
    };
    let first = page(None);
    assert_eq!(first[0].value, "+4930901824");
    assert_eq!(first.len(), 5);
    let second = page(Some(first[4].id));
    assert_eq!(second[0].value, "+4930901814");
    let pre = s
        .list(&ListFilter {
            prefix: Some("+493090181".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(pre.len(), 10);
    assert_eq!(s.list(&all(3)).unwrap().len(), 3);
}

fn list_filters_by_kind_value_pattern_and_action(b: &Backend) {
    let s = b.store();
    let mut allow = phone("+4930*", "area");
    allow.allow = true;
    s.upsert(
        &[
            phone("+4930901820", ""),
            email("boss@example.com"),
            email("@spam.example"),
            allow,
        ],
        "t",
        1,
    )
    .unwrap();
    let values = |f: ListFilter| -> Vec<String> {
        s.list(&ListFilter { limit: 10, ..f })
            .unwrap()
            .into_iter()
            .map(|e| e.value)
            .collect()
    };
    assert_eq!(
        values(ListFilter {
            kind: Some(Kind::Email),
            ..Default::default()
        }),
        ["@spam.example", "boss@example.com"]
    );
    assert_eq!(
        values(ListFilter {
            pattern: Some(Pattern::Domain),
            ..Default::default()
        }),
        ["@spam.example"]
    );
    assert_eq!(
        values(ListFilter {
            allow: Some(true),
            ..Default::default()
        }),
        ["+4930*"]
    );
    assert_eq!(
        values(ListFilter {
            value: Some("boss@example.com".into()),
            ..Default::default()
        }),
        ["boss@example.com"]
    );
    assert_eq!(
        sorted(s.load_active(2).unwrap()),
        sorted(vec![
            Item::Phone(4930901820),
            Item::email("boss@example.com", false),
            Item::email("@spam.example", false),
            Item::Rule(Rule::parse_value("+4930*", true).unwrap()),
        ])
    );
}

fn remove_and_expire_leave_audit_rows(b: &Backend) {
    let s = b.store();
    let mut temp = phone("+4930901899", "temp");
    temp.expires_at = Some(100);
    let mut later = phone("+4930901898", "later");
    later.expires_at = Some(500);
    s.upsert(&[phone("+4930901820", "x"), temp, later], "t", 1)
        .unwrap();
    assert_eq!(s.next_expiry().unwrap(), Some(100));
    assert_eq!(
        sorted(s.load_active(150).unwrap()),
        [Item::Phone(4930901820), Item::Phone(4930901898)]
    );
    assert!(s.expire(99).unwrap().is_empty());
    let gone = s.expire(100).unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].value, "+4930901899");
    assert_eq!(s.next_expiry().unwrap(), Some(500));
    assert_eq!(
        s.remove("+4930901820", "t", 200).unwrap().unwrap().comment,
        "x"
    );
    assert!(s.remove("+4930901820", "t", 201).unwrap().is_none());
    let actions: Vec<(String, String)> = s
        .audit(None, None, 10)
        .unwrap()
        .into_iter()
        .map(|a| (a.action, a.actor))
        .collect();
    let want = [
        ("remove", "t"),
        ("expire", "expiry"),
        ("add", "t"),
        ("add", "t"),
        ("add", "t"),
    ];
    assert_eq!(actions, want.map(|(a, b)| (a.to_string(), b.to_string())));
}

fn reopening_finds_everything_committed(b: &Backend) {
    {
        let s = b.store();
        s.upsert(&[phone("+4930901820", "x")], "t", 1).unwrap();
        s.set_meta("file", "abc").unwrap();
        s.set_meta("file", "abd").unwrap();
    }
    let s = b.store();
    assert_eq!(s.load_active(2).unwrap(), [Item::Phone(4930901820)]);
    assert_eq!(s.meta("file").unwrap().as_deref(), Some("abd"));
    assert_eq!(s.meta("none").unwrap(), None);
}

fn changing_the_action_is_an_update_and_audited(b: &Backend) {
    let s = b.store();
    let mut e = phone("+4930901*", "area");
    s.upsert(std::slice::from_ref(&e), "t", 1).unwrap();
    e.allow = true;
    let r = s.upsert(std::slice::from_ref(&e), "t", 2).unwrap();
    assert_eq!((r.added, r.updated), (0, 1));
    let got = s.list(&all(5)).unwrap();
    assert_eq!((got[0].pattern, got[0].allow), (Pattern::Prefix, true));
    let audit = s.audit(Some("+4930901*"), None, 5).unwrap();
    let acts: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.entry_action.as_str()))
        .collect();
    assert_eq!(acts, [("update", "allow"), ("add", "block")]);
    let blocks = s
        .list(&ListFilter {
            allow: Some(false),
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    assert!(blocks.is_empty());
}

fn ev(sink: &str, call: &str, kind: &str) -> NewEvent {
    NewEvent {
        sink: sink.into(),
        call: call.into(),
        kind: kind.into(),
        payload: format!("{{\"call\":\"{call}\"}}"),
    }
}

fn the_outbox_keeps_order_retries_and_dead_letters(b: &Backend) {
    let s = b.store();
    assert_eq!(s.outbox_stats().unwrap(), (0, None));
    s.enqueue(
        &[ev("b", "c1", "call.started"), ev("b", "c1", "call.ended")],
        2_000,
    )
    .unwrap();
    s.enqueue(&[ev("a", "c2", "call.started")], 3_000).unwrap();
    s.enqueue(&[], 4_000).unwrap();
    let head = s.head("b", 10).unwrap();
    let kinds: Vec<&str> = head.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["call.started", "call.ended"]);
    assert_eq!(head[0].payload, "{\"call\":\"c1\"}");
    assert_eq!(
        (head[0].created_at, head[0].next_at, head[0].attempts),
        (2_000, 2_000, 0)
    );
    assert_eq!(s.head("b", 1).unwrap().len(), 1);
    assert_eq!(s.outbox_stats().unwrap(), (3, Some(2_000)));
    s.retry_later(head[0].id, 9_000, "refused").unwrap();
    let again = s.head("b", 10).unwrap();
    assert_eq!((again[0].attempts, again[0].next_at), (1, 9_000));
    assert_eq!(s.outbox_retrying().unwrap(), 1);
    s.delivered(&[head[0].id]).unwrap();
    assert_eq!(s.outbox_retrying().unwrap(), 0);
    s.dead(&[head[1].id], "gone", 10_000).unwrap();
    assert!(s.head("b", 10).unwrap().is_empty());
    assert_eq!(s.outbox_stats().unwrap(), (1, Some(3_000)));
    // After the outbox emptied, new events still queue and dead-letter.
    let a = s.head("a", 10).unwrap();
    s.delivered(&[a[0].id]).unwrap();
    s.enqueue(&[ev("a", "c3", "call.started")], 11_000).unwrap();
    let c3 = s.head("a", 10).unwrap();
    assert_eq!(c3[0].call, "c3");
    s.dead(&[c3[0].id], "refused", 12_000).unwrap();
    assert_eq!(s.outbox_stats().unwrap(), (0, None));
}

fn crm_calls_and_finishes(b: &Backend) {
    let s = b.store();
    assert_eq!(s.crm_call("portal", "c1").unwrap(), None);
    assert!(!s.crm_finished("portal", "c1").unwrap());
    s.set_crm_call("portal", "c1", "ext.1").unwrap();
    s.set_crm_call("portal", "c1", "ext.2").unwrap();
    assert_eq!(
        s.crm_call("portal", "c1").unwrap().as_deref(),
        Some("ext.2")
    );
    assert_eq!(s.crm_call("other", "c1").unwrap(), None);
    assert!(!s.crm_finished("portal", "c1").unwrap());
    s.set_crm_finished("portal", "c1", 5).unwrap();
    assert!(s.crm_finished("portal", "c1").unwrap());
}

fn call(k: &str, state: &str) -> ActiveCall {
    ActiveCall {
        sip_call_id: k.as_bytes().to_vec(),
        call: format!("crm-{k}"),
        state: state.to_string(),
        last_ms: 7,
    }
}

fn calls_and_their_events_are_written_together_and_survive_a_reopen(b: &Backend) {
    {
        let s = b.store();
        s.save_calls(&[], &[], &[], 0).unwrap();
        s.save_calls(
            &[
                ev("portal", "crm-a", "call.started"),
                ev("portal", "crm-b", "call.started"),
            ],
            &[call("a", "{\"x\":1}"), call("b", "{}"), call("c", "{}")],
            &[],
            1,
        )
        .unwrap();
        s.save_calls(
            &[ev("portal", "crm-b", "call.ended")],
            &[call("a", "{\"x\":2}")],
            &["b".as_bytes().into()],
            2,
        )
        .unwrap();
    }
    let s = b.store();
    assert_eq!(
        s.active_calls().unwrap(),
        [call("a", "{\"x\":2}"), call("c", "{}")]
    );
    let kinds: Vec<String> = s
        .head("portal", 10)
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.call, e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            "crm-a call.started",
            "crm-b call.started",
            "crm-b call.ended"
        ]
    );
}

fn contact(client: &str, user: &str) -> Contact {
    Contact {
        client: client.into(),
        user_id: user.into(),
        extension: format!("x{user}"),
    }
}

fn contacts_upsert_list_page_and_remove(b: &Backend) {
    let s = b.store();
    let r = s
        .upsert_contacts(
            &[
                contact("+4917000000003", "7"),
                contact("+4917000000001", "7"),
                contact("+4917000000002", "8"),
            ],
            "api",
            1,
        )
        .unwrap();
    assert_eq!(r, (3, 0));
    let r = s
        .upsert_contacts(
            &[
                contact("+4917000000002", "7"),
                contact("+4917000000004", "9"),
            ],
            "api",
            2,
        )
        .unwrap();
    assert_eq!(r, (1, 1));
    let clients = |user, after, limit| -> Vec<String> {
        s.list_contacts(user, after, limit)
            .unwrap()
            .into_iter()
            .map(|c| c.client)
            .collect()
    };
    assert_eq!(
        clients(Some("7"), None, 10),
        ["+4917000000001", "+4917000000002", "+4917000000003"]
    );
    assert_eq!(clients(None, Some("+4917000000002"), 1), ["+4917000000003"]);
    assert!(s.remove_contact("+4917000000001").unwrap());
    assert!(!s.remove_contact("+4917000000001").unwrap());
    let mut every = s.all_contacts().unwrap();
    every.sort_by(|a, b| a.client.cmp(&b.client));
    assert_eq!(
        every,
        [
            contact("+4917000000002", "7"),
            contact("+4917000000003", "7"),
            contact("+4917000000004", "9")
        ]
    );
}

fn tokens_answers_and_depth(b: &Backend) {
    let s = b.store();
    assert!(s.crm_tokens("portal").unwrap().is_none());
    let mut t = CrmTokens {
        access: "a".into(),
        refresh: "r".into(),
        expires_at: 9,
        member_id: "m".into(),
        application_token: "at".into(),
        domain: "d".into(),
    };
    s.set_crm_tokens("portal", &t, 1).unwrap();
    t.access = "a2".into();
    s.set_crm_tokens("portal", &t, 2).unwrap();
    assert_eq!(s.crm_tokens("portal").unwrap(), Some(t));
    s.set_crm_answer("portal", "c1", "{\"lead\":1}", 1).unwrap();
    s.set_crm_answer("portal", "c1", "{\"lead\":2}", 2).unwrap();
    s.set_crm_answer("other", "c1", "{}", 2).unwrap();
    s.set_crm_answer("portal", "c2", "{\"lead\":3}", 2).unwrap();
    let mut got = s
        .crm_answers(&["c2".to_string(), "c1".to_string(), "c9".to_string()])
        .unwrap();
    got.sort();
    let want = [
        ("c1", "other", "{}"),
        ("c1", "portal", "{\"lead\":2}"),
        ("c2", "portal", "{\"lead\":3}"),
    ];
    assert_eq!(
        got,
        want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    );
    s.enqueue(&[ev("portal", "c1", "call.started"), ev("x", "c1", "k")], 1)
        .unwrap();
    assert_eq!(s.outbox_depth("portal").unwrap(), 1);
    assert_eq!(s.outbox_depth("none").unwrap(), 0);
}

/// A prefix selects by code point (SQLite's order), whatever the server's
/// locale: `A@` is not under `a`; the listing is newest first.
fn values_in_code_point_order_page_by_prefix(b: &Backend) {
    let s = b.store();
    s.upsert(
        &[
            email("a.b@example.com"),
            email("ab@example.com"),
            email("a-b@example.com"),
            email("A@example.com"),
        ],
        "t",
        1,
    )
    .unwrap();
    let got: Vec<String> = s
        .list(&ListFilter {
            prefix: Some("a".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|e| e.value)
        .collect();
    assert_eq!(
        got,
        ["a-b@example.com", "ab@example.com", "a.b@example.com"]
    );
}
