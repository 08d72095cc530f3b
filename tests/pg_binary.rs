//! The real binary on a real PostgreSQL server (`[store] kind =
//! "postgres"`): the API basics, data kept across a restart and an
//! acknowledged write across SIGKILL, a clear error when the URL variable
//! is unset, and `sipscreen store migrate` from a SQLite file the binary
//! wrote.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::binary::{BIN, EDIT, Serving, VIEW, store_config};

/// The variable the configs name for the URL.
const VAR: &str = "SIPSCREEN_TEST_PG_URL";

fn pg_config(dir: &Path) -> PathBuf {
    store_config(
        dir,
        &format!("kind = \"postgres\"\nurl_env = \"{VAR}\"\npool_size = 4"),
    )
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

fn add(admin: SocketAddr, value: &str, comment: &str) -> u16 {
    http()
        .post(format!("http://{admin}/api/v1/exceptions"))
        .bearer_auth(EDIT)
        .json(&serde_json::json!({"value": value, "comment": comment}))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn import(admin: SocketAddr, body: String) -> serde_json::Value {
    let r = http()
        .post(format!("http://{admin}/api/v1/exceptions/import"))
        .bearer_auth(EDIT)
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn verdict(admin: SocketAddr, number: &str) -> String {
    let v: serde_json::Value = http()
        .post(format!("http://{admin}/api/v1/screen"))
        .bearer_auth(VIEW)
        .json(&serde_json::json!({"number": number, "line": "+4930901820", "direction": "inbound"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["verdict"].as_str().unwrap().to_string()
}

fn list(admin: SocketAddr, query: &str) -> serde_json::Value {
    http()
        .get(format!("http://{admin}/api/v1/exceptions?{query}"))
        .bearer_auth(VIEW)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn the_sidecar_on_postgres_serves_the_api_and_keeps_what_it_acknowledged() {
    let Some(cluster) = common::pg::cluster() else {
        return;
    };
    let url = cluster.database();
    let db = common::pg::db_name(&url).to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = pg_config(dir.path());
    let env = [(VAR, url.as_str())];
    let run = Serving::start_env(Path::new(BIN), &config, &env);
    let shown = run
        .early
        .iter()
        .find(|l| l.contains("store open"))
        .cloned()
        .unwrap_or_default();
    assert!(
        shown.contains(&format!("postgres 127.0.0.1:{}/{db}", cluster.port)),
        "{shown}"
    );
    let admin = run.admin();

    assert_eq!(add(admin, "+4930901899", "api"), 201);
    let body: String = (0..3000)
        .map(|i| format!("+4917100{i:05}; bulk\n"))
        .collect();
    let r = import(admin, body);
    assert_eq!(r["added"], 3000, "{r}");
    assert_eq!(verdict(admin, "+4930901899"), "exception");
    assert_eq!(verdict(admin, "+491710002999"), "exception");
    assert_eq!(verdict(admin, "+491790000000"), "log");
    let rows = list(admin, "prefix=%2B4930&limit=10");
    assert_eq!(rows["items"].as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows["items"][0]["comment"], "api");
    let r = http()
        .delete(format!("http://{admin}/api/v1/exceptions/%2B4930901899"))
        .bearer_auth(EDIT)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(verdict(admin, "+4930901899"), "log");
    // In the database, with audit and change rows.
    let n = |sql: &str| cluster.query_one(&db, sql).unwrap();
    assert_eq!(n("SELECT count(*)::text FROM entries"), "3000");
    assert_eq!(n("SELECT count(*)::text FROM audit"), "3002");
    assert_eq!(n("SELECT count(*)::text FROM changes"), "3002");

    // Acknowledged, then SIGKILL at once.
    assert_eq!(add(admin, "+4930901898", "last"), 201);
    drop(run);
    let run = Serving::start_env(Path::new(BIN), &config, &env);
    let admin = run.admin();
    assert_eq!(verdict(admin, "+4930901898"), "exception");
    assert_eq!(verdict(admin, "+491710000000"), "exception");
    assert_eq!(verdict(admin, "+4930901899"), "log");
    let metrics = reqwest::blocking::get(format!("http://{admin}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("sipscreen_exception_entries{type=\"phone\"} 3001"),
        "{metrics}"
    );
}

#[test]
fn an_unset_url_variable_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = pg_config(dir.path());
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove(VAR)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("environment variable {VAR} is not set")),
        "{stderr}"
    );
    // check-config names the file, line and column of a bad kind.
    let bad = store_config(dir.path(), "kind = \"oracle\"");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:23:8", bad.display())) && stderr.contains("oracle"),
        "{stderr}"
    );
}

fn migrate(args: &[&str], url: Option<&str>) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(["store", "migrate"]).args(args);
    match url {
        Some(u) => c.env(VAR, u),
        None => c.env_remove(VAR),
    };
    c.output().unwrap()
}

#[test]
fn store_migrate_copies_a_sqlite_deployment_into_postgres() {
    let Some(cluster) = common::pg::cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A single machine on SQLite, written through the binary's API.
    let sqlite = store_config(dir.path(), "");
    {
        let run = Serving::start(&sqlite);
        let admin = run.admin();
        assert_eq!(add(admin, "+4930901899", "vip"), 201);
        assert_eq!(add(admin, "boss@corp.example", "mail"), 201);
        import(
            admin,
            "+4917100000001; one\n+4917100000002; two\n".to_string(),
        );
        let r = http()
            .post(format!("http://{admin}/api/v1/contacts"))
            .bearer_auth(EDIT)
            .header("content-type", "text/csv")
            .body("client,user_id,extension\n+4917400000009,42,242\n")
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        run.signal("-TERM");
    }
    let url = cluster.database();
    let db = common::pg::db_name(&url).to_string();
    let data = dir.path().join("data");
    let from = format!("sqlite:{}", data.display());
    let args = ["--from", &from, "--to", "postgres", "--url-env", VAR];

    let out = migrate(&args, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{VAR} is not set")));

    let out = migrate(&args, Some(&url));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("4 entries, 4 audit rows, 1 contacts"),
        "{stdout}"
    );
    assert!(!stdout.contains("postgres://"), "{stdout}");
    let n = |sql: &str| cluster.query_one(&db, sql).unwrap();
    assert_eq!(n("SELECT count(*)::text FROM entries"), "4");
    assert_eq!(
        n("SELECT count(*)::text FROM changes WHERE what = 'entry'"),
        "4"
    );
    assert_eq!(
        n("SELECT count(*)::text FROM changes WHERE what = 'contact'"),
        "1"
    );
    assert_eq!(
        n("SELECT comment || ' ' || created_by FROM entries WHERE value = '+4930901899'"),
        "vip ops"
    );

    // A second run finds the entries and refuses, writing nothing.
    let out = migrate(&args, Some(&url));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already holds 4 entries") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(n("SELECT count(*)::text FROM audit"), "4");
    let mut forced = args.to_vec();
    forced.push("--force");
    let out = migrate(&forced, Some(&url));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(n("SELECT count(*)::text FROM entries"), "4");

    // The url_env default comes from the config.
    let pg = pg_config(dir.path());
    let out = migrate(
        &[
            "--from",
            &from,
            "--to",
            "postgres",
            "--force",
            "--config",
            pg.to_str().unwrap(),
        ],
        Some(&url),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The sidecar on PostgreSQL serves the migrated list and directory.
    let run = Serving::start_env(Path::new(BIN), &pg, &[(VAR, url.as_str())]);
    let admin = run.admin();
    assert_eq!(verdict(admin, "+4930901899"), "exception");
    assert_eq!(verdict(admin, "+4917100000002"), "exception");
    let contacts: serde_json::Value = http()
        .get(format!("http://{admin}/api/v1/contacts"))
        .bearer_auth(VIEW)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        contacts.to_string().contains("+4917400000009"),
        "{contacts}"
    );

    // Bad arguments: exit 2.
    let out = migrate(
        &["--from", "mysql:x", "--to", "postgres", "--url-env", VAR],
        Some(&url),
    );
    assert_eq!(out.status.code(), Some(2));
}
