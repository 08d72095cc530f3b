//! What flood protection costs per message, without the kernel:
//! `FloodGuard::admit` for a banned source, for an unknown source under
//! its limit, and the proxy's whole `on_message` for a banned source's
//! datagram (runtime load, classify, admit, drop). 1 / time is the drops
//! per second one core can make.
//!
//! cargo bench --bench flood

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use sipscreen::clock::Clock;
use sipscreen::config::{self, FloodConfig, TransportKind};
use sipscreen::flood::{Admit, FloodGuard};
use sipscreen::metrics::Metrics;
use sipscreen::proxy::{Local, Proxy};
use sipscreen::runtime::Runtime;
use sipscreen::screening::exceptions::ExceptionSet;
use sipscreen::transport::{Handler, Inbound};

const CONFIG: &str = r#"
[sip]
udp = ["127.0.0.1:0"]
tcp = []
[pbx]
target = "127.0.0.1:5080"
sources = ["127.0.0.1/32"]
[[trunk]]
name = "carrier"
target = "127.0.0.2:5070"
sources = ["127.0.0.2/32"]
"#;

const OPTIONS: &str = "OPTIONS sip:probe@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-f\r\nMax-Forwards: 70\r\nFrom: <sip:scan@192.0.2.7>;tag=f\r\nTo: <sip:probe@127.0.0.1>\r\nCall-ID: flood\r\nCSeq: 1 OPTIONS\r\nUser-Agent: Flooder/1.0\r\nContent-Length: 0\r\n\r\n";

fn bench(c: &mut Criterion) {
    let cfg = FloodConfig::default();
    let banned: IpAddr = "192.0.2.7".parse().unwrap();
    let guard = FloodGuard::new(Arc::new(Metrics::new()), Clock::system());
    while guard.admit(&cfg, banned, false, true) != Admit::Drop {}
    let mut g = c.benchmark_group("flood");
    // What reading the time costs here (admit reads the coarse clock).
    g.bench_function("clock/now_ms", |b| b.iter(sipscreen::clock::now_ms));
    g.bench_function("clock/coarse_ms", |b| {
        b.iter(sipscreen::clock::coarse_now_ms)
    });
    g.bench_function("admit/banned", |b| {
        b.iter(|| guard.admit(&cfg, banned, false, true))
    });
    let open = FloodConfig {
        unknown_limit: u32::MAX,
        ..FloodConfig::default()
    };
    let quiet: IpAddr = "192.0.2.8".parse().unwrap();
    g.bench_function("admit/counted", |b| {
        b.iter(|| guard.admit(&open, quiet, false, true))
    });

    // The proxy's whole handler, for a banned source's datagram.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let loaded = config::from_toml(Path::new("bench.toml"), CONFIG.to_string()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let transports = rt
        .block_on(sipscreen::transport::bind(
            &loaded.config.sip,
            metrics.clone(),
        ))
        .unwrap();
    let sender = transports.sender();
    let runtime = Runtime::build(loaded, Arc::new(ExceptionSet::new())).unwrap();
    let local = Local::new(None, transports.udp_addrs().first().copied(), None);
    let proxy = Proxy::new(runtime, local, metrics);
    let remote = SocketAddr::new(banned, 5060);
    let msg = Bytes::from_static(OPTIONS.as_bytes());
    let inbound = |data: Bytes| Inbound {
        transport: TransportKind::Udp,
        local: "127.0.0.1:5060".parse().unwrap(),
        remote,
        data,
    };
    let _entered = rt.enter();
    for _ in 0..100 {
        proxy.on_message(inbound(msg.clone()), &sender);
    }
    assert!(!proxy.flood().bans().is_empty(), "the source is banned");
    g.bench_function("on_message/banned", |b| {
        b.iter(|| proxy.on_message(inbound(msg.clone()), &sender))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
