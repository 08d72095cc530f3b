//! Bitrix24 as an installed application, end to end: the real binary
//! against the strict test portal (tests/common/crm.rs). Connect by code
//! through the CLI (events wait in the outbox until then, `/readyz`, the
//! metric and `crm status` say so), the install handler (tokens from the
//! install POST, foreign calls refused), the portal's external lines
//! following the config across a reload, a backlog delivered after an
//! outage during which the access token expired.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::binary::{BIN, Serving, count, wait_until};
use common::crm::*;
use common::{BASE_CONFIG, EXCEPTIONS, Peers, invite, response_to};

impl Peers {
    /// An inbound call to `line` that the PBX answers busy.
    fn busy_call(&self, sip: SocketAddr, id: &str, caller: &str, line: &str) {
        let inv = invite(sip, self.trunk.local_addr().unwrap(), line, caller, id, "");
        self.trunk.send_to(inv.as_bytes(), sip).unwrap();
        let at_pbx = recv_starting(&self.pbx, "INVITE");
        let r = response_to(&at_pbx, 486, "Busy Here", "callee-tag", "");
        self.pbx.send_to(r.as_bytes(), sip).unwrap();
        recv_starting(&self.trunk, "SIP/2.0 486");
    }
}

fn recv_starting(s: &UdpSocket, start: &str) -> String {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = s.recv_from(&mut buf).expect("a datagram within the wait");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.starts_with(start) {
            return m;
        }
    }
}

/// The base config with one Bitrix24 application sink at `crm` (`extra`
/// appended to the sink's table) and `lines_extra` in the first line.
fn write_config(dir: &Path, p: &Peers, crm: SocketAddr, extra: &str, first_line: &str) -> PathBuf {
    std::fs::write(dir.join("exceptions.txt"), EXCEPTIONS).unwrap();
    let text = BASE_CONFIG
        .replace("tcp = [\"127.0.0.1:0\"]", "tcp = []")
        .replace("{PBX}", &p.pbx.local_addr().unwrap().to_string())
        .replace("{PBX_TRANSPORT}", "udp")
        .replace("{TRUNK}", &p.trunk.local_addr().unwrap().to_string())
        .replace("{DIR}", dir.to_str().unwrap())
        .replace(
            "[[line]]\nnumber = \"+4930901820\"\ncreate = \"offer\"\n",
            &format!("[[line]]\nnumber = \"+4930901820\"\n{first_line}"),
        )
        + &format!(
            "\n[crm]\n[[crm.bitrix24]]\nname = \"portal\"\nrest_url = \"http://{crm}/rest/\"\noauth_url = \"http://{crm}/oauth/token/\"\n\
             client_id = \"{CLIENT_ID}\"\nclient_secret_env = \"TEST_B24_SECRET\"\ndefault_user = \"1\"\nrate_per_sec = 20.0\nburst = 20\n{extra}"
        );
    let path = dir.join("sipscreen.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A portal that has given out no token yet, the peers, and the config
/// of a sidecar between them.
struct Setup {
    crm: Crm,
    crm_addr: SocketAddr,
    peers: Peers,
    config: PathBuf,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new(extra: &str, first_line: &str) -> Setup {
        let (crm, crm_addr) = Crm::start().await;
        crm.revoke_all();
        let dir = tempfile::tempdir().unwrap();
        let peers = Peers::new();
        let config = write_config(dir.path(), &peers, crm_addr, extra, first_line);
        Setup {
            db: dir.path().join("data/sipscreen.db"),
            crm,
            crm_addr,
            peers,
            config,
            _dir: dir,
        }
    }
}

fn start(config: &Path) -> Serving {
    // The secret comes from the environment, as deploy/README.md says.
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("TEST_B24_SECRET", CLIENT_SECRET) };
    Serving::start(config)
}

fn sip(run: &Serving) -> SocketAddr {
    run.addr("udp=[", ']')
}

/// `sipscreen ARGS` against the running sidecar's API with the edit
/// token; (exit code, stdout, stderr).
fn cli(run: &Serving, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("SIPSCREEN_API", format!("http://{}", run.admin()))
        .env("SIPSCREEN_TOKEN", "edit-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn get(url: String) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// Every log line so far (drained).
fn logs(run: &Serving) -> Vec<String> {
    let mut v = run.early.clone();
    v.extend(run.logs.try_iter());
    v
}

/// The `auth` of every request the portal accepted (a batch's commands
/// go with their batch's).
fn outer_auths(crm: &Crm) -> Vec<String> {
    crm.seen()
        .into_iter()
        .filter(|s| !s.inner && s.refused.is_none() && s.method != "hook")
        .map(|s| s.body["auth"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Nothing the portal or the OAuth server gave out appears in `text`.
fn assert_no_tokens(text: &str) {
    for t in [
        "acc-",
        "ref-",
        "inst-acc",
        "inst-ref",
        "code-abc",
        CLIENT_SECRET,
    ] {
        assert!(!text.contains(t), "a secret ({t}…) in: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_by_code_delivers_what_waited_and_syncs_the_lines() {
    let Setup {
        crm,
        crm_addr,
        peers,
        config,
        db,
        _dir,
    } = Setup::new("", "create = \"offer\"\nname = \"Sales\"\n").await;
    let run = start(&config);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the store holds tokens: owner only");

    // Not connected: the call goes through, its events wait.
    peers.busy_call(sip(&run), "app-1", "+4917011111111", "+4930901820");
    wait_until("two events queued", || {
        count(&db, "SELECT count(*) FROM outbox") == 2
    });
    let ready = get(format!("http://{}/readyz", run.admin())).await;
    assert!(
        ready.starts_with("ready\n") && ready.contains("crm sink \"portal\": not connected"),
        "{ready}"
    );
    let metrics = get(format!("http://{}/metrics", run.admin())).await;
    assert!(
        metrics.contains("sipscreen_crm_connected{sink=\"portal\"} 0"),
        "{metrics}"
    );
    let (code, out, err) = cli(&run, &["crm", "status"], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("portal: NOT CONNECTED, 2 event(s) queued"),
        "{out}"
    );
    assert_eq!(
        count(&db, "SELECT max(attempts) FROM outbox"),
        0,
        "no attempt counted while not connected"
    );
    assert!(crm.seen().is_empty(), "nothing sent: {:?}", crm.seen());

    // A code the portal never issued is refused, with its reason.
    let (code, _, err) = cli(
        &run,
        &[
            "crm", "bitrix24", "connect", "--sink", "portal", "--code", "forged",
        ],
        "",
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid_grant"), "{err}");

    // The operator pastes the redirect's address.
    crm.add_code("code-abc");
    let (code, out, err) = cli(
        &run,
        &["crm", "bitrix24", "connect", "--sink", "portal"],
        "https://handler.example/?code=code-abc&domain=portal.example&state=\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "http://{crm_addr}/oauth/authorize/?client_id={CLIENT_ID}"
        )),
        "{err}"
    );
    assert!(
        out.contains(&format!("portal: connected to member_id {MEMBER_ID}")),
        "{out}"
    );
    assert_eq!(
        *crm.grants.lock().unwrap(),
        ["authorization_code", "authorization_code"]
    );

    // What waited goes out, to lines the portal now has.
    crm.wait_for("telephony.externalcall.finish", 1).await;
    let reg = &crm.calls("telephony.externalcall.register")[0];
    assert_eq!(reg["LINE_NUMBER"], "+4930901820");
    assert_eq!(reg["USER_ID"], "101");
    let auths = outer_auths(&crm);
    assert!(
        !auths.is_empty() && auths.iter().all(|a| a.starts_with("acc-code-")),
        "{auths:?}"
    );
    wait_until("lines synced", || crm.lines.lock().unwrap().len() == 2);
    let lines = crm.lines.lock().unwrap().clone();
    assert_eq!(lines["+4930901820"], ("Sales".to_string(), "N".to_string()));
    assert_eq!(
        lines["+4930901821"],
        ("+4930901821".to_string(), "Y".to_string())
    );
    wait_until("outbox empty", || {
        count(&db, "SELECT count(*) FROM outbox") == 0
    });
    let (_, out, _) = cli(&run, &["crm", "status"], "");
    assert!(
        out.contains("portal: connected (member_id member-0123"),
        "{out}"
    );
    assert!(out.contains("added [+4930901820, +4930901821]"), "{out}");
    let metrics = get(format!("http://{}/metrics", run.admin())).await;
    assert!(
        metrics.contains("sipscreen_crm_connected{sink=\"portal\"} 1"),
        "{metrics}"
    );
    let status = get(format!("http://{}/api/v1/crm", run.admin())).await;
    assert_no_tokens(&status);
    assert_no_tokens(&metrics);

    // Reload: the first line's name and auto-create change in the portal.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().replace(
            "create = \"offer\"\nname = \"Sales\"\n",
            "name = \"Support\"\n",
        ),
    )
    .unwrap();
    run.signal("-HUP");
    wait_until("line updated", || {
        crm.lines.lock().unwrap()["+4930901820"] == ("Support".to_string(), "Y".to_string())
    });
    wait_until("status shows the update", || {
        cli(&run, &["crm", "status"], "")
            .1
            .contains("updated [+4930901820]")
    });
    assert_eq!(crm.calls("telephony.externalline.add").len(), 2);
    assert_eq!(crm.calls("telephony.externalline.update").len(), 1);

    // A restart keeps the connection (tokens from the store).
    drop(run);
    let run = start(&config);
    peers.busy_call(sip(&run), "app-2", "+4917011111112", "+4930901821");
    crm.wait_for("telephony.externalcall.finish", 2).await;
    assert_eq!(crm.grants.lock().unwrap().len(), 2, "no new grant needed");
    assert_no_tokens(&logs(&run).join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_post_connects_and_a_backlog_survives_an_outage_and_token_expiry() {
    let Setup {
        crm,
        peers,
        config,
        db,
        _dir,
        ..
    } = Setup::new(
        "install_listen = \"127.0.0.1:0\"
",
        "create = \"offer\"
",
    )
    .await;
    let run = start(&config);
    let line = run
        .early
        .iter()
        .find(|l| l.contains("Bitrix24 install handler listening"))
        .unwrap_or_else(|| panic!("no install line in {:#?}", run.early));
    let install: SocketAddr = line
        .split("install=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let post = |form: String| async move {
        reqwest::Client::new()
            .post(format!("http://{install}/install"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let event = |access: &str, refresh: &str, member: &str, app_token: &str| {
        format!(
            "event=ONAPPINSTALL&data%5BVERSION%5D=1&auth%5Baccess_token%5D={access}&auth%5Brefresh_token%5D={refresh}\
             &auth%5Bexpires_in%5D=3600&auth%5Bdomain%5D=portal.example&auth%5Bmember_id%5D={member}\
             &auth%5Bapplication_token%5D={app_token}"
        )
    };
    // Incomplete: 400, still not connected.
    assert_eq!(post("event=ONAPPINSTALL".into()).await, 400);
    let (a, r) = crm.issue();
    assert_eq!(post(event(&a, &r, MEMBER_ID, "apptok-1")).await, 200);
    peers.busy_call(sip(&run), "inst-1", "+4917022222221", "+4930901820");
    crm.wait_for("telephony.externalcall.finish", 1).await;
    assert!(outer_auths(&crm).iter().all(|x| *x == a));

    // Later calls must come from the same portal and application.
    let (a2, r2) = crm.issue();
    assert_eq!(
        post(event(&a2, &r2, "another-member", "apptok-1")).await,
        403
    );
    assert_eq!(post(event(&a2, &r2, MEMBER_ID, "wrong")).await, 403);
    assert_eq!(
        post(format!(
            "AUTH_ID={a2}&REFRESH_ID={r2}&AUTH_EXPIRES=3600&member_id={MEMBER_ID}&DOMAIN=portal.example"
        ))
        .await,
        403,
        "the install form without the application_token, once one is stored"
    );
    assert_eq!(post(event(&a2, &r2, MEMBER_ID, "apptok-1")).await, 200);

    // An outage; meanwhile the access token expires. Nothing is lost, the
    // order holds, one refresh.
    crm.mode.store(LIMIT, std::sync::atomic::Ordering::Relaxed);
    for i in 0..5 {
        peers.busy_call(
            sip(&run),
            &format!("out-{i}"),
            &format!("+49170333333{i:02}"),
            "+4930901821",
        );
    }
    wait_until("the backlog queued and refused", || {
        count(&db, "SELECT count(*) FROM outbox") == 10 && !crm.refusals().is_empty()
    });
    crm.expire_tokens();
    crm.mode.store(OK, std::sync::atomic::Ordering::Relaxed);
    crm.wait_for("telephony.externalcall.finish", 6).await;
    wait_until("outbox empty", || {
        count(&db, "SELECT count(*) FROM outbox") == 0
    });
    assert_eq!(*crm.refreshes.lock().unwrap(), [r2]);
    let regs: Vec<String> = crm
        .calls("telephony.externalcall.register")
        .iter()
        .map(|b| b["PHONE_NUMBER"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = std::iter::once("+4917022222221".to_string())
        .chain((0..5).map(|i| format!("+49170333333{i:02}")))
        .collect();
    assert_eq!(regs, want, "in the order the calls came");
    assert!(
        crm.calls("telephony.externalcall.register")[1..]
            .iter()
            .all(|r| r["USER_ID"] == "1"),
        "no queue on that line: the sink's default_user"
    );
    let calls = crm.calls.lock().unwrap().clone();
    assert!(calls.values().all(|c| c.finished), "{calls:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letter"), 0);
    assert_no_tokens(&logs(&run).join("\n"));
}

/// `GET /api/v1/contacts` (view token): client -> (user, extension).
async fn directory(run: &Serving) -> std::collections::HashMap<String, (String, String)> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/api/v1/contacts?limit=1000", run.admin()))
        .bearer_auth("view-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (s("client"), (s("user_id"), s("extension")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_comes_from_the_crm_and_unknown_callers_are_looked_up() {
    use serde_json::json;
    let Setup {
        crm,
        peers,
        config,
        _dir,
        ..
    } = Setup::new("directory_every_secs = 1\n", "create = \"offer\"\n").await;
    let old = "2026-01-01T00:00:00+00:00";
    let contacts: Vec<_> = (0..120)
        .map(|i| json!({"ID": i + 1, "PHONE": [{"VALUE": format!("+4917060000{i:03}"), "VALUE_TYPE": "WORK"}], "ASSIGNED_BY_ID": "7", "DATE_MODIFY": old}))
        .collect();
    {
        let mut r = crm.records.lock().unwrap();
        r.insert("crm.contact.list".into(), contacts);
        r.insert(
            "crm.company.list".into(),
            vec![json!({"ID": 1, "PHONE": [{"VALUE": "030 1234567"}], "ASSIGNED_BY_ID": "8", "DATE_MODIFY": old})],
        );
        r.insert(
            "crm.lead.list".into(),
            vec![json!({"ID": 1, "PHONE": [{"VALUE": "+49 170 7000 0001"}], "ASSIGNED_BY_ID": "9", "DATE_MODIFY": old})],
        );
    }
    *crm.users.lock().unwrap() = vec![
        json!({"ID": "7", "UF_PHONE_INNER": "207"}),
        json!({"ID": "8", "UF_PHONE_INNER": ""}),
        json!({"ID": "9", "UF_PHONE_INNER": "209"}),
    ];
    crm.search.lock().unwrap().insert(
        "+4917080000001".into(),
        json!([{"CRM_ENTITY_TYPE": "CONTACT", "CRM_ENTITY_ID": 5, "ASSIGNED_BY_ID": 11,
                "ASSIGNED_BY": {"ID": "11", "USER_PHONE_INNER": "211"}}]),
    );
    let run = start(&config);
    crm.add_code("code-abc");
    let (code, _, err) = cli(
        &run,
        &[
            "crm", "bitrix24", "connect", "--sink", "portal", "--code", "code-abc",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");

    // Everything, in few requests: one batch per list (users, contacts,
    // companies, leads), 120 contacts in pages of 50.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut dir = directory(&run).await;
    while dir.len() < 122 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} contacts",
            dir.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        dir = directory(&run).await;
    }
    assert_eq!(dir["+4917060000005"], ("7".into(), "207".into()));
    assert_eq!(dir["+49301234567"], ("8".into(), String::new()));
    assert_eq!(dir["+4917070000001"], ("9".into(), "209".into()));
    let first_batches = crm
        .seen()
        .iter()
        .filter(|s| s.method == "batch" && !s.inner && s.refused.is_none())
        .count();
    assert!(
        first_batches <= 5,
        "{first_batches} batch requests for the first sync"
    );

    // What changed comes with the next incremental sync.
    {
        let mut r = crm.records.lock().unwrap();
        let c = &mut r.get_mut("crm.contact.list").unwrap()[5];
        c["ASSIGNED_BY_ID"] = json!("9");
        c["DATE_MODIFY"] = json!("2099-01-01T00:00:00+00:00");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while directory(&run).await["+4917060000005"].0 != "9" {
        assert!(std::time::Instant::now() < deadline, "not updated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        crm.calls("crm.contact.list")
            .iter()
            .any(|c| c.get("filter[>DATE_MODIFY]").is_some()),
        "incremental by DATE_MODIFY"
    );

    // A caller the directory does not know: looked up after the call, so
    // the next call from them goes to their responsible.
    let sip = sip(&run);
    // (The directory routes on lines with forward_to_responsible.)
    peers.busy_call(sip, "look-1", "+4917080000001", "+4930901820");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !directory(&run).await.contains_key("+4917080000001") {
        assert!(std::time::Instant::now() < deadline, "not looked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        directory(&run).await["+4917080000001"],
        ("11".into(), "211".into())
    );
    peers.busy_call(sip, "look-2", "+4917080000001", "+4930901820");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let regs = crm.calls("telephony.externalcall.register");
        if regs.len() >= 2 {
            assert_eq!(regs[0]["USER_ID"], "101", "unknown: the line's queue");
            assert_eq!(regs[1]["USER_ID"], "11", "known now: the responsible");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{regs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        crm.calls("telephony.externalcall.searchcrmentities").len(),
        1
    );
}
