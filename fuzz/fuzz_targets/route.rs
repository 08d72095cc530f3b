//! The whole request / response path on a runtime built from a small
//! fixed config: the input is scanned and routed as a request or response
//! from the trunk and from the PBX, over UDP and TCP. Never panics; a
//! forwarded message scans and validates again.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sipscreen::config::{self, TransportKind};
use sipscreen::proxy::Local;
use sipscreen::proxy::request::{self, Outcome};
use sipscreen::proxy::response;
use sipscreen::runtime::{Runtime, Side};
use sipscreen::screening::exceptions::ExceptionSet;
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

struct World {
    rt: Runtime,
    local: Local,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let loaded = config::from_toml(Path::new("fuzz.toml"), CONFIG.to_string()).expect("config");
    let set = Arc::new(ExceptionSet::new());
    set.replace_all(vec![4915112345678], vec!["boss@example.com".to_string()]);
    World {
        rt: Runtime::build(loaded, set).expect("runtime"),
        local: Local::new(
            None,
            Some("127.0.0.1:5060".parse().unwrap()),
            Some("127.0.0.1:5060".parse().unwrap()),
        ),
    }
});

fn check_forwarded(data: Bytes) {
    let again = Message::scan(data.clone())
        .unwrap_or_else(|e| panic!("forwarded message does not scan ({e:?}): {data:?}"));
    if let Err(inv) = again.validate() {
        panic!("forwarded message does not validate ({inv:?}): {data:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let w = &*WORLD;
    let Ok(m) = Message::scan(Bytes::copy_from_slice(data)) else {
        return;
    };
    let trunk: SocketAddr = "127.0.0.2:5070".parse().unwrap();
    let pbx: SocketAddr = "127.0.0.1:5080".parse().unwrap();
    for (remote, transport) in [
        (trunk, TransportKind::Udp),
        (pbx, TransportKind::Udp),
        (trunk, TransportKind::Tcp),
    ] {
        let side = w.rt.routing.classify(remote.ip());
        assert_ne!(side, Side::Unknown);
        let out = if m.is_request() {
            request::route(&w.rt, &w.local, &m, remote, transport, side)
        } else {
            response::route(&w.rt, &w.local, &m, side)
        };
        if let Outcome::Forward { data, .. } = out {
            check_forwarded(data);
        }
    }
});
