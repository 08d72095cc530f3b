//! What only the PostgreSQL store has: migrations under an advisory lock,
//! the change log and its notifications, the sync bridge from every kind
//! of caller thread, all-or-nothing batches, errors without secrets.
//! Against a real server (tests/common/pg.rs).

mod common;

use std::sync::Arc;

use sipscreen::contacts::Contact;
use sipscreen::store::postgres::{CHANNEL, PgStore, migrations};
use sipscreen::store::{ChangeOp, ContactStore, ExceptionStore, Kind, NewEntry, StoreError};

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

fn db() -> Option<(&'static common::pg::Cluster, String)> {
    let c = common::pg::cluster()?;
    Some((c, c.database()))
}

#[test]
fn nodes_opening_an_empty_database_together_make_one_schema() {
    let Some((c, url)) = db() else { return };
    let barrier = Arc::new(std::sync::Barrier::new(3));
    let opened: Vec<_> = (0..3)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::open(&url, None, 2).map(|_| ())
            })
        })
        .collect();
    for t in opened {
        t.join().unwrap().expect("every node opens");
    }
    let name = common::pg::db_name(&url);
    assert_eq!(
        c.query_one(
            name,
            "SELECT count(*)::text || ' ' || max(version)::text FROM schema_version"
        )
        .as_deref(),
        Some(format!("{} {}", migrations::VERSION, migrations::VERSION).as_str())
    );
    // Opening again changes nothing.
    let tables = "SELECT count(*)::text FROM pg_tables WHERE schemaname = 'public'";
    let before = c.query_one(name, tables);
    drop(PgStore::open(&url, None, 1).unwrap());
    assert_eq!(c.query_one(name, tables), before);
}

#[test]
fn a_database_from_a_later_release_is_refused_and_left_alone() {
    let Some((c, url)) = db() else { return };
    drop(PgStore::open(&url, None, 1).unwrap());
    let name = common::pg::db_name(&url);
    c.exec(name, "INSERT INTO schema_version VALUES (99, 0)");
    let e = PgStore::open(&url, None, 1).expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "schema version 99 is newer than this sipscreen knows ({})",
            migrations::VERSION
        )) && msg.contains(name),
        "{msg}"
    );
    assert_eq!(
        c.query_one(name, "SELECT max(version)::text FROM schema_version")
            .as_deref(),
        Some("99")
    );
    // The migration lock was released: another open is refused, not stuck.
    assert!(matches!(
        PgStore::open(&url, None, 1),
        Err(StoreError::PgTooNew { found: 99, .. })
    ));
}

#[test]
fn every_list_and_directory_write_leaves_change_rows_in_order() {
    let Some((_, url)) = db() else { return };
    let s = PgStore::open(&url, None, 2).unwrap();
    assert_eq!(s.change_bounds().unwrap(), (1, 0));
    let mut temp = phone("+4930901899", "t");
    temp.expires_at = Some(100);
    let mut allow = phone("+4930*", "area");
    allow.allow = true;
    s.upsert(&[phone("+4930901820", "a"), temp, allow], "alice", 1)
        .unwrap();
    // Unchanged: no change row.
    s.upsert(&[phone("+4930901820", "a")], "alice", 2).unwrap();
    s.upsert(&[phone("+4930901820", "b")], "alice", 3).unwrap();
    s.remove("+4930901820", "bob", 4).unwrap();
    s.remove("+4930901820", "bob", 5).unwrap();
    s.expire(150).unwrap();
    let k = Contact {
        client: "+4917000000001".into(),
        user_id: "7".into(),
        extension: "201".into(),
    };
    s.upsert_contacts(std::slice::from_ref(&k), "api", 6)
        .unwrap();
    s.remove_contact(&k.client).unwrap();
    let all = s.changes_since(0, 100).unwrap();
    let seqs: Vec<i64> = all.iter().map(|c| c.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let ops: Vec<ChangeOp> = all.into_iter().map(|c| c.op).collect();
    let up = |v: &str, allow, expires_at| ChangeOp::Upsert {
        kind: Kind::Phone,
        value: v.into(),
        allow,
        expires_at,
    };
    let rm = |v: &str, allow| ChangeOp::Remove {
        kind: Kind::Phone,
        value: v.into(),
        allow,
    };
    assert_eq!(
        ops,
        [
            up("+4930901820", false, None),
            up("+4930901899", false, Some(100)),
            up("+4930*", true, None),
            up("+4930901820", false, None),
            rm("+4930901820", false),
            rm("+4930901899", false),
            ChangeOp::ContactUpsert(k.clone()),
            ChangeOp::ContactRemove {
                client: k.client.clone()
            },
        ]
    );
    let (oldest, latest) = s.change_bounds().unwrap();
    assert_eq!((oldest, latest), (seqs[0], *seqs.last().unwrap()));
    assert_eq!(s.changes_since(seqs[5], 2).unwrap().len(), 2);
    assert_eq!(s.prune_changes(seqs[5]).unwrap(), 6);
    assert_eq!(s.change_bounds().unwrap(), (seqs[6], latest));
    assert_eq!(s.prune_changes(latest).unwrap(), 2);
    assert_eq!(s.change_bounds().unwrap(), (latest + 1, latest));
}

#[test]
fn a_write_notifies_its_last_sequence_number_at_commit() {
    let Some((_, url)) = db() else { return };
    let s = PgStore::open(&url, None, 2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, mut rx) = rt.block_on(async {
        let (client, mut conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = m {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .unwrap();
        (client, rx)
    });
    let batch: Vec<NewEntry> = (0..5)
        .map(|i| phone(&format!("+49309018{i:02}"), ""))
        .collect();
    s.upsert(&batch, "t", 1).unwrap();
    let latest = s.change_bounds().unwrap().1;
    let got = rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("notified")
            .unwrap()
    });
    assert_eq!(got, (CHANNEL.to_string(), latest.to_string()));
    // One notification per transaction, not per row.
    let more = rt.block_on(async {
        client.batch_execute("SELECT 1").await.unwrap();
        rx.try_recv().ok()
    });
    assert_eq!(more, None);
}

#[test]
fn a_failed_batch_writes_no_entries_audit_or_changes() {
    let Some((c, url)) = db() else { return };
    let s = PgStore::open(&url, None, 2).unwrap();
    // PostgreSQL refuses NUL in text: the last entry fails the batch.
    let batch = [phone("+4930901820", "ok"), phone("+4930901821", "bad\0")];
    let e = s.upsert(&batch, "t", 1).expect_err("refused");
    assert!(matches!(e, StoreError::Postgres(_)), "{e:?}");
    let name = common::pg::db_name(&url);
    for t in ["entries", "audit", "changes"] {
        assert_eq!(
            c.query_one(name, &format!("SELECT count(*)::text FROM {t}"))
                .as_deref(),
            Some("0"),
            "{t}"
        );
    }
    // The store works on.
    assert_eq!(s.upsert(&batch[..1], "t", 2).unwrap().added, 1);
}

#[test]
fn the_store_serves_blocking_tasks_plain_threads_and_is_dropped_anywhere() {
    let Some((_, url)) = db() else { return };
    let s = Arc::new(PgStore::open(&url, None, 2).unwrap());
    s.upsert(&[phone("+4930901820", "")], "t", 1).unwrap();
    let t = {
        let s = s.clone();
        std::thread::spawn(move || s.load_active(2).unwrap().len())
    };
    assert_eq!(t.join().unwrap(), 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = rt.block_on(async {
        let s2 = s.clone();
        let n = tokio::task::spawn_blocking(move || s2.load_active(2).unwrap().len())
            .await
            .unwrap();
        // Opened and dropped from async code (through spawn_blocking for
        // the open, the drop on the async thread itself).
        let u = url.clone();
        let other = tokio::task::spawn_blocking(move || PgStore::open(&u, None, 1).unwrap())
            .await
            .unwrap();
        drop(other);
        n
    });
    assert_eq!(n, 1);
    // A current-thread runtime's blocking pool too.
    let rt1 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s3 = s.clone();
    let n = rt1
        .block_on(async {
            tokio::task::spawn_blocking(move || {
                s3.list(&sipscreen::store::ListFilter {
                    limit: 5,
                    ..Default::default()
                })
                .unwrap()
                .len()
            })
            .await
        })
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn concurrent_writers_commit_sequence_numbers_in_order() {
    let Some((_, url)) = db() else { return };
    let s = Arc::new(PgStore::open(&url, None, 8).unwrap());
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    s.upsert(&[phone(&format!("+4930{w}{i:04}"), "")], "t", 1)
                        .unwrap();
                }
            })
        })
        .collect();
    // A reader following by sequence while they write never finds a
    // number below one it has seen: nothing is skipped.
    let mut last = 0;
    let mut seen = 0;
    while seen < 120 {
        for c in s.changes_since(last, 1000).unwrap() {
            assert_eq!(c.seq, last + 1, "gap after {last}");
            last = c.seq;
            seen += 1;
        }
        if writers.iter().all(|w| w.is_finished()) && s.change_bounds().unwrap().1 == last {
            break;
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(seen, 120);
}

#[test]
fn an_unreachable_server_is_unavailable_and_the_password_never_shown() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://alice:s3cret-pw@127.0.0.1:{port}/x");
    let e = PgStore::open(&url, None, 1).expect_err("refused");
    assert!(e.is_unavailable(), "{e:?}");
    let msg = format!("{e} {e:?}");
    assert!(!msg.contains("s3cret-pw"), "{msg}");
    assert!(msg.contains("connect"), "{msg}");
}

#[test]
fn migrate_copies_every_table_of_a_sqlite_store_in_order() {
    use sipscreen::store::sqlite::SqliteStore;
    use sipscreen::store::{
        ActiveCall, CallStore, CrmTokens, NewEvent, OutboxStore, TokenStore, migrate,
    };
    let Some((_, url)) = db() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ev = |call: &str, kind: &str| NewEvent {
        sink: "portal".into(),
        call: call.into(),
        kind: kind.into(),
        payload: format!("{{\"k\":\"{kind}\\n\\\\\"}}"),
    };
    let tokens = CrmTokens {
        access: "acc".into(),
        refresh: "ref".into(),
        expires_at: 9,
        member_id: "m".into(),
        application_token: "at".into(),
        domain: "d.example".into(),
    };
    let active = ActiveCall {
        sip_call_id: b"abc\x00\xff@host".to_vec(),
        call: "crm-a".into(),
        state: "{\"s\":1}".into(),
        last_ms: 5,
    };
    {
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        let mut tab = phone("+4930901820", "tab\there");
        tab.expires_at = Some(10_000);
        s.upsert(&[tab, phone("+4930901821", "")], "alice", 1)
            .unwrap();
        s.remove("+4930901821", "bob", 2).unwrap();
        s.set_meta("file", "abc").unwrap();
        s.save_calls(
            &[ev("crm-a", "call.started"), ev("crm-a", "call.answered")],
            std::slice::from_ref(&active),
            &[],
            3,
        )
        .unwrap();
        s.enqueue(&[ev("crm-b", "call.started"), ev("crm-b", "call.ended")], 4)
            .unwrap();
        let head = s.head("portal", 10).unwrap();
        s.retry_later(head[0].id, 99, "refused").unwrap();
        s.dead(&[head[3].id], "gone", 5).unwrap();
        s.set_crm_call("portal", "crm-a", "ext.1").unwrap();
        s.set_crm_finished("portal", "crm-a", 6).unwrap();
        s.set_crm_tokens("portal", &tokens, 7).unwrap();
        s.set_crm_answer("portal", "crm-a", "{\"lead\":1}", 8)
            .unwrap();
        s.upsert_contacts(
            &[Contact {
                client: "+4917000000001".into(),
                user_id: "7".into(),
                extension: "".into(),
            }],
            "api",
            9,
        )
        .unwrap();
    }
    let pg = PgStore::open(&url, None, 2).unwrap();
    let copied = migrate::sqlite_to_postgres(dir.path(), &pg, false).unwrap();
    assert_eq!(
        copied.to_string(),
        "1 entries, 3 audit rows, 1 contacts, 1 meta keys, 3 undelivered CRM events, \
         1 dead letters, 1 CRM call ids, 1 CRM tokens, 1 CRM answers, 1 calls in progress"
    );
    let e = &pg
        .list(&sipscreen::store::ListFilter {
            limit: 5,
            ..Default::default()
        })
        .unwrap()[0];
    assert_eq!(
        (e.comment.as_str(), e.created_by.as_str(), e.expires_at),
        ("tab\there", "alice", Some(10_000))
    );
    let acts: Vec<String> = pg
        .audit(None, None, 10)
        .unwrap()
        .into_iter()
        .map(|a| format!("{} {}", a.action, a.actor))
        .collect();
    assert_eq!(acts, ["remove bob", "add alice", "add alice"]);
    let head = pg.head("portal", 10).unwrap();
    let got: Vec<(String, String, i64, i64)> = head
        .iter()
        .map(|e| (e.call.clone(), e.kind.clone(), e.attempts, e.next_at))
        .collect();
    assert_eq!(
        got,
        [
            ("crm-a".into(), "call.started".into(), 1, 99),
            ("crm-a".into(), "call.answered".into(), 0, 3),
            ("crm-b".into(), "call.started".into(), 0, 4),
        ]
    );
    assert_eq!(head[0].payload, "{\"k\":\"call.started\\n\\\\\"}");
    assert_eq!(pg.active_calls().unwrap(), [active]);
    assert_eq!(
        pg.crm_call("portal", "crm-a").unwrap().as_deref(),
        Some("ext.1")
    );
    assert!(pg.crm_finished("portal", "crm-a").unwrap());
    assert_eq!(pg.crm_tokens("portal").unwrap(), Some(tokens));
    assert_eq!(pg.crm_answers(&["crm-a".into()]).unwrap().len(), 1);
    assert_eq!(pg.meta("file").unwrap().as_deref(), Some("abc"));
    assert_eq!(pg.all_contacts().unwrap().len(), 1);
    // Refused the second time; nothing doubled.
    let e = migrate::sqlite_to_postgres(dir.path(), &pg, false).unwrap_err();
    assert!(e.to_string().contains("already holds 1 entries"), "{e}");
    assert_eq!(pg.outbox_stats().unwrap().0, 3);
}

/// The store figures (a benchmark, not a timed test): 1M entries
/// imported in IMPORT_BATCH-line transactions (each with its audit and
/// change rows), then `load_active` of all of them.
///
/// cargo test --test pg_store -- --ignored --nocapture one_million
#[test]
#[ignore]
fn one_million_entries_import_and_load() {
    let Some((c, url)) = db() else { return };
    let s = PgStore::open(&url, None, 4).unwrap();
    const N: usize = 1_000_000;
    let batch = sipscreen::store::service::IMPORT_BATCH;
    let all: Vec<NewEntry> = (0..N)
        .map(|i| phone(&format!("+4915{:09}", i * 7), "bench entry"))
        .collect();
    let t = std::time::Instant::now();
    for chunk in all.chunks(batch) {
        assert_eq!(s.upsert(chunk, "bench", 1).unwrap().added, chunk.len());
    }
    let import = t.elapsed();
    let t = std::time::Instant::now();
    let items = s.load_active(2).unwrap();
    let load = t.elapsed();
    assert_eq!(items.len(), N);
    let name = common::pg::db_name(&url);
    assert_eq!(
        c.query_one(name, "SELECT count(*)::text FROM changes")
            .as_deref(),
        Some("1000000")
    );
    // Unchanged lines cost a read, not a write.
    let t = std::time::Instant::now();
    for chunk in all.chunks(batch) {
        assert_eq!(s.upsert(chunk, "bench", 2).unwrap().unchanged, chunk.len());
    }
    let again = t.elapsed();
    println!(
        "postgres store, {N} entries: import {:.2} s ({:.0} lines/s, {} per transaction), \
         load_active {:.2} s, re-import unchanged {:.2} s",
        import.as_secs_f64(),
        N as f64 / import.as_secs_f64(),
        batch,
        load.as_secs_f64(),
        again.as_secs_f64()
    );
}

/// A store call made on an async thread (start-up code, a test) blocks
/// that thread as SQLite's does, and never panics "runtime within runtime".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_multi_thread_runtime_worker_does_not_panic() {
    let Some((_, url)) = db() else { return };
    let u = url.clone();
    let s = tokio::task::spawn_blocking(move || PgStore::open(&u, None, 1).unwrap())
        .await
        .unwrap();
    s.upsert(&[phone("+4930901820", "")], "t", 1).unwrap();
    assert_eq!(s.load_active(2).unwrap().len(), 1);
    // Opened on the worker itself, too.
    let t = PgStore::open(&url, None, 1).unwrap();
    assert_eq!(t.meta("x").unwrap(), None);
}

#[tokio::test]
async fn a_call_on_a_current_thread_runtime_does_not_panic() {
    let Some((_, url)) = db() else { return };
    let s = PgStore::open(&url, None, 1).unwrap();
    s.set_meta("k", "v").unwrap();
    assert_eq!(s.meta("k").unwrap().as_deref(), Some("v"));
}
