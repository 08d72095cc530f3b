//! The real binary: `check-config` names file, line and column and exits
//! 2; `serve` survives a SIGHUP with a broken config (the old one keeps
//! serving), picks up a good one, and stops cleanly on SIGTERM.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

mod common;

use common::binary::{BIN, Serving};

fn write_config(dir: &std::path::Path, pbx: SocketAddr, source: &str) -> std::path::PathBuf {
    let data = dir.join("data").display().to_string();
    let text = format!(
        r#"[sip]
udp = ["127.0.0.1:0"]
tcp = []

[pbx]
target = "{pbx}"
sources = ["127.0.0.1/32"]

[[trunk]]
name = "carrier"
target = "127.0.0.2:5070"
sources = ["127.0.0.2/32"]

[admin]
listen = "127.0.0.1:0"

[store]
data_dir = "{data}"

[defaults]
source = "{source}"
"#
    );
    let path = dir.join("sipscreen.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "127.0.0.1:5080".parse().unwrap(), "CALL");
    let ok = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(": ok:"));

    let text = std::fs::read_to_string(&path).unwrap().replace(
        "sources = [\"127.0.0.2/32\"]",
        "sources = [\"127.0.0.2/33\"]",
    );
    std::fs::write(&path, text).unwrap();
    let bad = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.starts_with(&format!(
            "{}:12:12: invalid IP address syntax",
            path.display()
        )),
        "{err}"
    );

    let missing = Command::new(BIN)
        .args(["check-config", "--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/x.toml: cannot read"));
}

#[test]
fn shipped_default_config_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(BIN)
        .current_dir(root)
        .args(["check-config", "--config", "config/sipscreen.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends an INVITE from the trunk address and returns X-CRM-Source as the PBX sees it.
fn call_source(trunk: &UdpSocket, pbx: &UdpSocket, sip: SocketAddr, n: u32) -> String {
    let me = trunk.local_addr().unwrap();
    let inv = format!(
        "INVITE sip:+4930901820@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-cli{n}\r\nMax-Forwards: 70\r\nFrom: <sip:+4917012345678@x>;tag=a{n}\r\nTo: <sip:+4930901820@x>\r\nCall-ID: cli-{n}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    trunk.send_to(inv.as_bytes(), sip).unwrap();
    let mut buf = [0u8; 4096];
    let (len, _) = pbx.recv_from(&mut buf).expect("INVITE reaches the PBX");
    let got = String::from_utf8_lossy(&buf[..len]).to_string();
    got.lines()
        .find_map(|l| l.strip_prefix("X-CRM-Source: "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no source tag:\n{got}"))
}

#[test]
fn sighup_with_a_bad_config_keeps_serving_then_sigterm_stops() {
    let dir = tempfile::tempdir().unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    pbx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let trunk = UdpSocket::bind("127.0.0.2:0").unwrap();
    let path = write_config(dir.path(), pbx.local_addr().unwrap(), "FIRST");
    let mut run = Serving::start(&path);
    let udp = run.addr("udp=[", ']');
    assert_eq!(call_source(&trunk, &pbx, udp, 1), "FIRST");

    std::fs::write(&path, "[pbx\nbroken").unwrap();
    run.signal("-HUP");
    let refused = run.wait_for("config reload refused");
    assert!(refused.contains("sipscreen.toml:1:"), "{refused}");
    assert_eq!(
        call_source(&trunk, &pbx, udp, 2),
        "FIRST",
        "old config keeps serving"
    );

    write_config(dir.path(), pbx.local_addr().unwrap(), "SECOND");
    run.signal("-HUP");
    run.wait_for("config reloaded");
    assert_eq!(call_source(&trunk, &pbx, udp, 3), "SECOND");

    run.signal("-TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = run.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

/// A CRM sink that cannot be built (its secret's environment variable is
/// unset) is refused by `check-config` (what systemd's ExecStartPre and
/// ExecReload run) and stops `serve` before it says it is ready: exit code
/// 2, the reason named, no "sipscreen ready" line an operator or a
/// supervisor could take for a start. With the variable set, both pass.
#[test]
fn a_sink_that_cannot_be_built_is_refused_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "127.0.0.1:5080".parse().unwrap(), "CALL");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        "\n[crm]\n[[crm.webhook]]\nname = \"hook\"\nurl = \"http://127.0.0.1:9/hook\"\nsecret_env = \"SIPSCREEN_TEST_UNSET_SECRET\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let check = |set: bool| {
        let mut c = Command::new(BIN);
        c.args(["check-config", "--config"]).arg(&path);
        if set {
            c.env("SIPSCREEN_TEST_UNSET_SECRET", "s3cret");
        } else {
            c.env_remove("SIPSCREEN_TEST_UNSET_SECRET");
        }
        c.output().unwrap()
    };
    let refused = check(false);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sipscreen.toml: [crm]: sink \"hook\": environment variable SIPSCREEN_TEST_UNSET_SECRET is not set"),
        "{err}"
    );
    let ok = check(true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(", 1 CRM sink(s)"));

    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("SIPSCREEN_TEST_UNSET_SECRET")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains("SIPSCREEN_TEST_UNSET_SECRET is not set"),
        "{log}"
    );
    assert!(!log.contains("sipscreen ready"), "{log}");
}
