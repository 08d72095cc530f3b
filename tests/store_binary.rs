//! The real binary with a real SQLite file: every acknowledged write
//! survives SIGKILL in the middle of a large import, the store stays
//! consistent (whole batches only, each with its audit rows), and the CLI
//! (`exceptions import/list/add/remove`, `screen`) works against it.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::binary::{BIN, EDIT, Serving, count, store_config};
/// Lines per import transaction (store::service::IMPORT_BATCH).
const BATCH: i64 = sipscreen::store::service::IMPORT_BATCH as i64;

fn import(admin: SocketAddr, body: String) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .post(format!("http://{admin}/api/v1/exceptions/import"))
        .bearer_auth(EDIT)
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .unwrap()
}

fn verdict(admin: SocketAddr, number: &str) -> String {
    let v: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("http://{admin}/api/v1/screen"))
        .bearer_auth("view-token")
        .json(&serde_json::json!({"number": number, "line": "+4930901820", "direction": "inbound"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["verdict"].as_str().unwrap().to_string()
}

#[test]
fn acknowledged_writes_survive_sigkill_mid_import() {
    let dir = tempfile::tempdir().unwrap();
    let config = store_config(dir.path(), "");
    let db = dir.path().join("data/sipscreen.db");
    let run = Serving::start(&config);
    let admin = run.admin();

    // Acknowledged: one import and one single add.
    let acked: String = (0..5000)
        .map(|i| format!("+4917100{i:05}; acked\n"))
        .collect();
    let r = import(admin, acked);
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let r = reqwest::blocking::Client::new()
        .post(format!("http://{}/api/v1/exceptions", admin))
        .bearer_auth(EDIT)
        .json(&serde_json::json!({"value": "+4917200000000", "comment": "single"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);

    // A large import, killed once its first batches are on disk.
    let big: String = (0..600_000)
        .map(|i| format!("+4917300{i:06}; big\n"))
        .collect();
    let uploader = std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::new()
            .post(format!("http://{admin}/api/v1/exceptions/import"))
            .bearer_auth(EDIT)
            .header("content-type", "text/plain")
            .body(big)
            .send();
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&db, "SELECT count(*) FROM entries WHERE comment = 'big'") == 0 {
        assert!(
            Instant::now() < deadline,
            "the big import never committed a batch"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(run); // SIGKILL
    let _ = uploader.join();

    // After the crash: everything acknowledged, whole batches only.
    assert_eq!(
        count(&db, "SELECT count(*) FROM entries WHERE comment = 'acked'"),
        5000
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM entries WHERE comment = 'single'"),
        1
    );
    let big = count(&db, "SELECT count(*) FROM entries WHERE comment = 'big'");
    assert!(
        big > 0 && big % BATCH == 0,
        "{big} rows of the killed import: not whole batches"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit WHERE comment = 'big' AND action = 'add'"
        ),
        big,
        "each committed entry has its audit row"
    );

    // The restarted sidecar serves all of it from the store.
    let run = Serving::start(&config);
    let admin = run.admin();
    assert_eq!(verdict(admin, "+491710004999"), "exception");
    assert_eq!(verdict(admin, "+4917200000000"), "exception");
    assert_eq!(verdict(admin, "+4917300000000"), "exception");
    let metrics = reqwest::blocking::get(format!("http://{}/metrics", admin))
        .unwrap()
        .text()
        .unwrap();
    let phones = 5001 + big;
    assert!(
        metrics.contains(&format!(
            "sipscreen_exception_entries{{type=\"phone\"}} {phones}"
        )),
        "{metrics}"
    );
}

fn cli(admin: SocketAddr, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(args).arg("--api").arg(format!("http://{admin}"));
    c.env_remove("SIPSCREEN_TOKEN");
    if let Some(t) = token {
        c.env("SIPSCREEN_TOKEN", t);
    }
    c.output().unwrap()
}

#[test]
fn cli_manages_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let config = store_config(dir.path(), "");
    let run = Serving::start(&config);
    let admin = run.admin();
    let file = dir.path().join("list.txt");
    std::fs::write(
        &file,
        "+4917400000001; from file\nnonsense\nboss@corp.example; mail\n",
    )
    .unwrap();

    let out = cli(
        admin,
        Some(EDIT),
        &["exceptions", "import", file.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "refused lines give exit 4: {stdout} {stderr}"
    );
    assert!(stdout.contains("3 line(s) read: 2 added"), "{stdout}");
    assert!(stderr.contains("line 2:"), "{stderr}");

    let out = cli(
        admin,
        Some("view-token"),
        &["exceptions", "list", "--type", "phone", "--json"],
    );
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["value"], "+4917400000001");
    let out = cli(admin, Some("view-token"), &["exceptions", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("TYPE"), "{table}");
    assert!(table.contains("boss@corp.example"), "{table}");

    let out = cli(
        admin,
        Some("view-token"),
        &["screen", "+4917400000001", "--line", "+4930901820"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict: exception"));

    let out = cli(
        admin,
        Some("view-token"),
        &["exceptions", "remove", "+4917400000001"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "view token may not remove"
    );
    let out = cli(admin, None, &["exceptions", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SIPSCREEN_TOKEN"));

    let out = cli(
        admin,
        Some(EDIT),
        &["exceptions", "remove", "+4917400000001"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(
        admin,
        Some(EDIT),
        &["exceptions", "remove", "+4917400000001"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not on the list"));
    let out = cli(
        admin,
        Some(EDIT),
        &["exceptions", "add", "0174 00000002", "--comment", "cli"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("+4917400000002: added"));

    // The contacts directory through the CLI.
    let csv = dir.path().join("contacts.csv");
    std::fs::write(
        &csv,
        "client,user_id,extension\n+4917400000009,42,242\nbad,1,2\n",
    )
    .unwrap();
    let out = cli(
        admin,
        Some(EDIT),
        &["contacts", "import", csv.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(4), "one bad row");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 added"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("row 3:"));
    let out = cli(admin, Some("view-token"), &["contacts", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("+4917400000009      42"));
    let out = cli(admin, Some(EDIT), &["contacts", "remove", "+4917400000009"]);
    assert!(out.status.success());

    // Nobody listening: a plain-words error and exit 3.
    drop(run);
    let out = cli(
        "127.0.0.1:9".parse().unwrap(),
        Some(EDIT),
        &["exceptions", "list"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the sipscreen API"));
}

#[test]
fn cli_adds_prefixes_allow_entries_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let config = store_config(dir.path(), "");
    let run = Serving::start(&config);
    let admin = run.admin();
    let ok = |args: &[&str]| {
        let out = cli(admin, Some(EDIT), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = ok(&["exceptions", "add", "+4918*", "--comment", "block"]);
    assert!(said.contains("+4918*: added"), "{said}");
    let said = ok(&["exceptions", "add", "0181*", "--allow"]);
    assert!(said.contains("+49181*: added"), "national prefix: {said}");
    assert_eq!(verdict(admin, "+491801234567"), "exception");
    assert_eq!(verdict(admin, "+491811234567"), "log");

    let big = "+491900000000..+491999999999";
    let out = cli(admin, Some(EDIT), &["exceptions", "add", big]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("large"), "{stderr}");
    let said = ok(&["exceptions", "add", big, "--allow-large-range"]);
    assert!(said.contains("+4919*: added"), "{said}");
    let ragged = "+4917500000005..+4917500000014";
    let said = ok(&["exceptions", "add", ragged]);
    assert!(said.contains("10 prefixes (10 added, 0 updated)"), "{said}");
    assert_eq!(verdict(admin, "+4917500000009"), "exception");

    let table = ok(&[
        "exceptions",
        "list",
        "--match",
        "prefix",
        "--action",
        "allow",
    ]);
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("TYPE   MATCH   ACTION"), "{table}");
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows[1].contains("prefix") && rows[1].contains("+49181*"),
        "{table}"
    );

    let said = ok(&["exceptions", "remove", ragged]);
    assert!(said.contains("10 prefixes"), "{said}");
    assert_eq!(verdict(admin, "+4917500000009"), "log");
}
