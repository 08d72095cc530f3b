//! The whole per-INVITE pipeline without sockets: scan, classify the
//! source, normalise line and client, look the client up, build the tags,
//! apply the edit list. With 1M and 10M listed phones.
//!
//! cargo bench --bench pipeline
//!
//! Instructions per INVITE (valgrind): `SIPSCREEN_CALLGRIND=listed` (or
//! `unlisted`, `national`; `prefix`: 1M prefix rules added, the caller
//! inside one) makes the bench binary build the 1M-entry runtime, then
//! route one INVITE (first-use work), then 10,000 inside `callgrind_loop`,
//! and exit:
//!
//! ```text
//! cargo bench --bench pipeline --no-run
//! SIPSCREEN_CALLGRIND=listed valgrind --tool=callgrind --collect-atstart=no \
//!   --toggle-collect='*callgrind_loop*' target/release/deps/pipeline-HASH
//! ```
//!
//! and divide the `summary` Ir by 10,000.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use sipscreen::config::{self, TransportKind};
use sipscreen::proxy::Local;
use sipscreen::proxy::request::{self, Outcome};
use sipscreen::runtime::Runtime;
use sipscreen::screening::exceptions::{ExceptionSet, Item, Rule};
use sipscreen::sip::Message;

const CONFIG: &str = r#"
[pbx]
target = "127.0.0.1:5080"
sources = ["127.0.0.1/32"]
[[trunk]]
name = "carrier"
target = "127.0.0.2:5070"
sources = ["127.0.0.2/32"]
trust_pai = true
[[line]]
number = "+4930901820"
create = "offer"
source = "ADVERTISING"
queue = ["101", "102"]
"#;

/// A realistic carrier INVITE (about 900 bytes with SDP).
fn invite(caller: &str) -> Bytes {
    let body = "v=0\r\no=- 3912 3912 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 16384 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
    Bytes::from(format!(
        "INVITE sip:+4930901820@127.0.0.1:5060;user=phone SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK776asdhds;rport\r\n\
         Max-Forwards: 69\r\n\
         From: \"Caller\" <sip:{caller}@carrier.example;user=phone>;tag=1928301774\r\n\
         To: <sip:+4930901820@carrier.example;user=phone>\r\n\
         Call-ID: a84b4c76e66710@carrier.example\r\n\
         CSeq: 314159 INVITE\r\n\
         Contact: <sip:{caller}@127.0.0.2:5070>\r\n\
         P-Asserted-Identity: <sip:{caller}@carrier.example;user=phone>\r\n\
         Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n\
         Supported: timer, 100rel\r\n\
         User-Agent: carrier-sbc/4.2\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

fn runtime(entries: usize) -> (Runtime, Vec<u64>) {
    let loaded = config::from_toml(Path::new("bench.toml"), CONFIG.to_string()).expect("config");
    let set = Arc::new(ExceptionSet::new());
    // German mobile numbers +49 15x..17x, spread deterministically.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let phones: Vec<u64> = (0..entries)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            4_915_000_000_000 + x % 300_000_000_000
        })
        .collect();
    set.replace_all(phones.clone(), Vec::new());
    (Runtime::build(loaded, set).expect("runtime"), phones)
}

/// 1M prefix rules (9 digits, +49 15x..17x) beside the exact entries, in
/// one snapshot; the first rule's digits, for a caller inside it.
fn with_prefixes(rt: &Runtime, phones: &[u64], n: usize) -> u64 {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut items: Vec<Item> = phones.iter().map(|&p| Item::Phone(p)).collect();
    let mut first = 0;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let d = 491_500_000 + x % 30_000_000;
        if i == 0 {
            first = d;
        }
        items.push(Item::Rule(Rule::prefix(d, 9, false).expect("a prefix")));
    }
    rt.screener.exceptions().replace_items(items);
    first
}

/// Scans, classifies and routes one INVITE: what it is forwarded as.
fn route_once(rt: &Runtime, local: &Local, remote: SocketAddr, msg: &Bytes) -> Bytes {
    // Borrowed from the result, as `Proxy::on_message` does (no move of
    // the `Message` out of it).
    let scanned = Message::scan(msg.clone());
    let m = scanned.as_ref().expect("scans");
    let side = rt.routing.classify(remote.ip());
    match request::route(rt, local, m, remote, TransportKind::Udp, side) {
        Outcome::Forward { data, .. } => data,
        _ => panic!("not forwarded"),
    }
}

fn bench(c: &mut Criterion) {
    let local = Local::new(None, Some("127.0.0.1:5060".parse().unwrap()), None);
    let remote: SocketAddr = "127.0.0.2:5070".parse().unwrap();
    for entries in [1_000_000usize, 10_000_000] {
        let (rt, phones) = runtime(entries);
        let listed = invite(&format!("+{}", phones[entries / 2]));
        let unlisted = invite("+4917099988877");
        let national = invite("01709998887");
        let mut g = c.benchmark_group(format!("pipeline/{}M", entries / 1_000_000));
        for (name, msg) in [
            ("listed", &listed),
            ("unlisted", &unlisted),
            ("national", &national),
        ] {
            g.bench_function(name, |b| b.iter(|| route_once(&rt, &local, remote, msg)));
        }
        g.finish();
    }
    let (rt, phones) = runtime(1_000_000);
    let first = with_prefixes(&rt, &phones, 1_000_000);
    let in_prefix = invite(&format!("+{first}4242"));
    let unlisted = invite("+4917099988877");
    let mut g = c.benchmark_group("pipeline/1M+1M-prefixes");
    for (name, msg) in [("prefix", &in_prefix), ("unlisted", &unlisted)] {
        g.bench_function(name, |b| b.iter(|| route_once(&rt, &local, remote, msg)));
    }
    g.finish();
}

/// INVITEs routed under callgrind.
const CALLGRIND_INVITES: usize = 10_000;

/// Routes `CALLGRIND_INVITES` copies of `msg`; what callgrind counts.
#[inline(never)]
fn callgrind_loop(rt: &Runtime, local: &Local, remote: SocketAddr, msg: &Bytes) -> usize {
    let mut bytes = 0;
    for _ in 0..CALLGRIND_INVITES {
        bytes += std::hint::black_box(route_once(rt, local, remote, msg)).len();
    }
    bytes
}

fn callgrind(kind: &str) {
    let local = Local::new(None, Some("127.0.0.1:5060".parse().unwrap()), None);
    let remote: SocketAddr = "127.0.0.2:5070".parse().unwrap();
    let entries = 1_000_000;
    let (rt, phones) = runtime(entries);
    let msg = match kind {
        "listed" => invite(&format!("+{}", phones[entries / 2])),
        "unlisted" => invite("+4917099988877"),
        "national" => invite("01709998887"),
        "prefix" => invite(&format!("+{}4242", with_prefixes(&rt, &phones, entries))),
        other => panic!("SIPSCREEN_CALLGRIND={other:?}: use listed, unlisted, national or prefix"),
    };
    // One INVITE outside the count: first-use work (the phonenumber
    // metadata a national number builds once per process, its cache
    // entry) is not per INVITE.
    route_once(&rt, &local, remote, &msg);
    let bytes = callgrind_loop(&rt, &local, remote, &msg);
    eprintln!("callgrind {kind}: {CALLGRIND_INVITES} INVITEs, {bytes} bytes forwarded");
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}

fn main() {
    if let Ok(kind) = std::env::var("SIPSCREEN_CALLGRIND") {
        callgrind(&kind);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
