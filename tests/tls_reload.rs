//! The real binary reloads its TLS certificate on SIGHUP: new connections
//! get the new one, connections already open go on, and a bad new one
//! (key that does not fit, expired) refuses the reload with the file named
//! while the last good certificate keeps serving.

mod common;

use std::path::Path;

use common::binary::Serving;
use common::tls::{Ca, connect_from, connector, peer_cert};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(dir: &Path, crt: &Path, key: &Path, ca: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"
[sip]
udp = ["127.0.0.1:0"]
tcp = []
tls = ["127.0.0.1:0"]

[tls]
cert = "{}"
key = "{}"

[pbx]
target = "127.0.0.1:9"
sources = ["127.0.0.1/32"]

[[trunk]]
name = "carrier"
target = "127.0.0.2:5061"
transport = "tls"
tls_ca = "{}"
sources = ["127.0.0.2/32"]

[admin]
listen = "127.0.0.1:0"

[store]
data_dir = "{}/data"
"#,
        crt.display(),
        key.display(),
        ca.display(),
        dir.display()
    );
    let p = dir.join("sipscreen.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn sighup_swaps_the_certificate_and_a_bad_one_is_refused() {
    let ca = Ca::new("test ca");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue("first", &["127.0.0.1"], false);
    let (crt, key) = first.write(dir.path(), "sidecar");
    let ca_file = ca.write(dir.path(), "ca");
    let run = Serving::start(&config(dir.path(), &crt, &key, &ca_file));
    let tls = run.addr("tls=[", ']');
    let client = connector(&ca, None);
    let mut old = connect_from("127.0.0.2", tls, "127.0.0.1", &client)
        .await
        .unwrap();
    assert_eq!(peer_cert(&old), first.der);

    let second = ca.issue("second", &["127.0.0.1"], false);
    second.write(dir.path(), "sidecar");
    run.signal("-HUP");
    run.wait_for("config reloaded");
    let new = connect_from("127.0.0.2", tls, "127.0.0.1", &client)
        .await
        .unwrap();
    assert_eq!(
        peer_cert(&new),
        second.der,
        "a new connection gets the new certificate"
    );
    // The connection opened before goes on (a keep-alive is answered).
    old.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(common::WAIT, old.read_exact(&mut pong))
        .await
        .expect("pong on the old connection")
        .unwrap();
    assert_eq!(&pong, b"\r\n");

    // A key that belongs to another certificate.
    let third = ca.issue("third", &["127.0.0.1"], false);
    std::fs::write(&crt, &third.chain_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    run.signal("-HUP");
    let line = run.wait_for("config reload refused");
    assert!(
        line.contains(&format!(
            "[tls] key {}: does not fit [tls] cert",
            key.display()
        )),
        "{line}"
    );
    let still = connect_from("127.0.0.2", tls, "127.0.0.1", &client)
        .await
        .unwrap();
    assert_eq!(
        peer_cert(&still),
        second.der,
        "the last good certificate serves"
    );
    // check-config (what the systemd unit's reload runs first) refuses it
    // the same way.
    let out = std::process::Command::new(common::binary::BIN)
        .args(["check-config", "--config"])
        .arg(dir.path().join("sipscreen.toml"))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!(
            "[tls] key {}: does not fit [tls] cert",
            key.display()
        )),
        "{said}"
    );

    // An expired certificate with its own key.
    let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2001, 1, 1);
    p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let k = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&crt, p.self_signed(&k).unwrap().pem()).unwrap();
    std::fs::write(&key, k.serialize_pem()).unwrap();
    run.signal("-HUP");
    let line = run.wait_for("config reload refused");
    assert!(
        line.contains(&format!(
            "[tls] cert {}: certificate 1 expired at 2002-01-01",
            crt.display()
        )),
        "{line}"
    );
    let still = connect_from("127.0.0.2", tls, "127.0.0.1", &client)
        .await
        .unwrap();
    assert_eq!(peer_cert(&still), second.der);
}
