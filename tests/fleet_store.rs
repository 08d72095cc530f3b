//! The fleet's parts of the PostgreSQL store, with two or three "nodes"
//! (separate `PgStore`s, each its own pool and node name) on one real
//! server (tests/common/pg.rs): outbox leases, the shared portal
//! allowance, the change-log follower.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sipscreen::contacts::{Contact, Directory};
use sipscreen::metrics::Metrics;
use sipscreen::screening::exceptions::ExceptionSet;
use sipscreen::store::fleet::AllowanceStore;
use sipscreen::store::follow::{ChangeLog, Follower, StoreHealth};
use sipscreen::store::postgres::PgStore;
use sipscreen::store::service::Exceptions;
use sipscreen::store::{
    ActiveCall, CallStore, ContactStore, Kind, NewEntry, NewEvent, OutboxStore,
};

fn node(url: &str) -> Arc<PgStore> {
    Arc::new(PgStore::open(url, None, 4).unwrap())
}

fn ev(call: &str, kind: &str) -> NewEvent {
    NewEvent {
        sink: "portal".into(),
        call: call.into(),
        kind: kind.into(),
        payload: format!("{{\"call\":\"{call}\",\"kind\":\"{kind}\"}}"),
    }
}

fn calls_of(evs: &[sipscreen::store::OutEvent]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for e in evs {
        if !v.contains(&e.call) {
            v.push(e.call.clone());
        }
    }
    v
}

/// Two nodes claiming one outbox never hold the same call; a node that
/// dies (its leases never released) loses its calls when the lease runs
/// out, and the survivor gets their events, each call's in order.
#[test]
fn a_call_is_held_by_one_node_and_taken_over_after_its_lease() {
    let Some(c) = common::pg::cluster() else {
        return;
    };
    let url = c.database();
    let (a, b) = (node(&url), node(&url));
    for n in [&a, &b] {
        n.node().set_lease(Duration::from_secs(1));
    }
    a.enqueue(
        &[
            ev("c1", "call.started"),
            ev("c2", "call.started"),
            ev("c1", "call.ended"),
            ev("c3", "call.started"),
            ev("c2", "call.ended"),
        ],
        1,
    )
    .unwrap();
    // A takes the two oldest events: their calls c1 and c2, with every
    // event of theirs up to the limit, in order.
    let got_a = a.claim("portal", 0, 2).unwrap();
    assert_eq!(calls_of(&got_a), ["c1", "c2"]);
    let got_b = b.claim("portal", 0, 64).unwrap();
    let kinds: Vec<(String, String)> = got_b
        .iter()
        .map(|e| (e.call.clone(), e.kind.clone()))
        .collect();
    assert_eq!(kinds, [("c3".to_string(), "call.started".to_string())]);
    b.delivered(&[got_b[0].id]).unwrap();
    // A renews by claiming again; B still gets nothing of c1/c2.
    assert_eq!(calls_of(&a.claim("portal", 0, 64).unwrap()), ["c1", "c2"]);
    assert!(b.claim("portal", 0, 64).unwrap().is_empty());
    // A dies holding them: after the lease B gets c1 then c2, in order.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        let got = b.claim("portal", 0, 64).unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node's lease never ran out"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let seq: Vec<(String, String)> = taken
        .iter()
        .map(|e| (e.call.clone(), e.kind.clone()))
        .collect();
    assert_eq!(
        seq,
        [
            ("c1".to_string(), "call.started".to_string()),
            ("c2".to_string(), "call.started".to_string()),
            ("c1".to_string(), "call.ended".to_string()),
            ("c2".to_string(), "call.ended".to_string()),
        ]
    );
    // Released: a third node may take c1 at once.
    let c3 = node(&url);
    b.release("portal", &["c1".to_string()]).unwrap();
    assert_eq!(calls_of(&c3.claim("portal", 0, 64).unwrap()), ["c1"]);
}

/// Nodes claiming at the same moment split the calls between them: every
/// event goes to exactly one node.
#[test]
fn concurrent_claims_split_the_calls() {
    let Some(c) = common::pg::cluster() else {
        return;
    };
    let url = c.database();
    let nodes: Vec<Arc<PgStore>> = (0..3).map(|_| node(&url)).collect();
    let events: Vec<NewEvent> = (0..300)
        .map(|i| ev(&format!("c{i}"), "call.started"))
        .collect();
    nodes[0].enqueue(&events, 1).unwrap();
    let got: Vec<Vec<i64>> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|n| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let evs = n.claim("portal", 0, 16).unwrap();
                        if evs.is_empty() && n.outbox_depth("portal").unwrap_or(0) == 0 {
                            return mine;
                        }
                        let ids: Vec<i64> = evs.iter().map(|e| e.id).collect();
                        n.delivered(&ids).unwrap();
                        mine.extend(ids);
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<i64> = got.iter().flatten().copied().collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (n, all.len()),
        (300, 300),
        "each event claimed exactly once"
    );
}

use sipscreen::store::TokenStore as _;

/// The portal's allowance is one across nodes: with a burst of 5 at 10 a
/// second, 15 requests from three nodes go 5 at once, then 0.1 s apart.
#[test]
fn a_portal_allowance_is_shared_by_every_node() {
    let Some(c) = common::pg::cluster() else {
        return;
    };
    let url = c.database();
    let nodes: Vec<Arc<PgStore>> = (0..3).map(|_| node(&url)).collect();
    let t0 = Instant::now();
    let mut due = Vec::new();
    for i in 0..15 {
        let wait = nodes[i % 3]
            .take("bitrix24:https://p.example/rest", 10.0, 5)
            .unwrap();
        due.push(t0.elapsed() + wait);
    }
    let took = t0.elapsed();
    let at_once = due.iter().filter(|d| **d <= took).count();
    // 5 of the burst, plus what refilled while the 15 takes ran.
    assert!(
        at_once <= 5 + (took.as_secs_f64() * 10.0).ceil() as usize,
        "{at_once} requests could go at once after {took:?}: {due:?}"
    );
    // The 10 beyond the burst queue up 0.1 s apart across the nodes.
    let last = due.last().unwrap().as_secs_f64();
    assert!(
        (0.95..=1.05 + took.as_secs_f64()).contains(&last),
        "the 15th request is due after {last} s, not after about 1 s ({took:?} taking)"
    );
    // "Too many" from the portal: the allowance starts from empty.
    nodes[0].drain("bitrix24:https://p.example/rest").unwrap();
    assert!(
        nodes[1]
            .take("bitrix24:https://p.example/rest", 10.0, 5)
            .unwrap()
            > Duration::ZERO
    );
}

struct Node {
    store: Arc<PgStore>,
    list: Arc<Exceptions>,
    contacts: Arc<Directory>,
}

fn follower_node(url: &str) -> (Node, Follower) {
    let store = node(url);
    let pos = store.latest_change().unwrap();
    let metrics = Arc::new(Metrics::new());
    let list = Arc::new(Exceptions::new(
        store.clone(),
        Arc::new(ExceptionSet::new()),
        metrics.clone(),
    ));
    list.load().unwrap();
    let contacts = Arc::new(Directory::new());
    contacts.replace_all(store.all_contacts().unwrap());
    let f = Follower::new(
        store.clone(),
        list.clone(),
        contacts.clone(),
        store.clone(),
        Arc::new(StoreHealth::new(store.shown())),
        metrics,
        pos,
    );
    (
        Node {
            store,
            list,
            contacts,
        },
        f,
    )
}

fn phone(v: &str, allow: bool) -> NewEntry {
    NewEntry {
        kind: Kind::Phone,
        value: v.into(),
        given: v.into(),
        comment: String::new(),
        origin: "api".into(),
        expires_at: None,
        allow,
    }
}

fn listed(n: &Node, e164: u64) -> bool {
    n.list.set().match_phone(e164).is_some()
}

/// What one node writes another applies by sequence: adds, a flip to
/// allow, removals, contacts; applying its own writes again is harmless;
/// and a node whose position was pruned from the log reloads everything.
#[test]
fn a_follower_applies_every_change_and_reloads_past_a_pruned_log() {
    let Some(c) = common::pg::cluster() else {
        return;
    };
    let url = c.database();
    let (a, mut fa) = follower_node(&url);
    let (b, mut fb) = follower_node(&url);
    a.list
        .write(&[phone("+4930111", false), phone("+4930222", false)], "t")
        .unwrap();
    a.list.write(&[phone("+4930222", true)], "t").unwrap();
    a.list.remove("+4930111", "t").unwrap();
    a.store
        .upsert_contacts(
            &[Contact {
                client: "+4930333".into(),
                user_id: "7".into(),
                extension: "107".into(),
            }],
            "t",
            1,
        )
        .unwrap();
    let done = fb.catch_up().unwrap();
    assert!(done.applied >= 4 && !done.reloaded, "{done:?}");
    assert!(!listed(&b, 4930111));
    assert_eq!(
        b.list.set().match_phone(4930222),
        a.list.set().match_phone(4930222)
    );
    assert!(b.contacts.get(4930333).is_some());
    // Its own writes, applied again.
    fa.catch_up().unwrap();
    assert!(!listed(&a, 4930111) && listed(&a, 4930222));
    assert_eq!(fa.position(), fb.position());
    // B away; the log pruned past B's position; B comes back.
    a.list.write(&[phone("+4930444", false)], "t").unwrap();
    let now = sipscreen::clock::now_ms();
    assert!(a.store.prune_older(0, now + 1).unwrap() >= 1);
    let done = fb.catch_up().unwrap();
    assert!(done.reloaded, "{done:?}");
    assert!(listed(&b, 4930444) && listed(&b, 4930222) && !listed(&b, 4930111));
    assert_eq!(fb.position(), a.store.latest_change().unwrap());
}

/// A call a dead node left behind (its BYE never came) is taken over by one
/// node only, with the time it was last active, and stamped active so that
/// no other node takes it before it has been idle again.
#[test]
fn a_stale_call_is_taken_over_by_one_node() {
    let Some(c) = common::pg::cluster() else {
        return;
    };
    let url = c.database();
    let (a, b) = (node(&url), node(&url));
    let row = |id: &str, last_ms| ActiveCall {
        sip_call_id: id.as_bytes().to_vec(),
        call: format!("c-{id}"),
        state: "{}".into(),
        last_ms,
    };
    a.save_calls(&[], &[row("old", 1_000), row("live", 90_000)], &[], 90_000)
        .unwrap();
    let got = b.stale_calls(50_000, 200_000, 10).unwrap();
    assert_eq!(got, [row("old", 1_000)], "only the idle call, as it was");
    assert!(
        a.stale_calls(50_000, 200_000, 10).unwrap().is_empty(),
        "b holds it now"
    );
    let mut rows = a.active_calls().unwrap();
    rows.sort_by(|x, y| x.sip_call_id.cmp(&y.sip_call_id));
    assert_eq!(rows, [row("live", 90_000), row("old", 200_000)]);
    assert_eq!(
        b.stale_calls(250_000, 300_000, 1).unwrap().len(),
        1,
        "the limit"
    );
}
