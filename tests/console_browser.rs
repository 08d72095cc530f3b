//! The web console in a real browser: Debian's Chromium, headless, driven
//! through chromedriver (WebDriver, from Rust with fantoccini) against the
//! real `sipscreen` binary with real SIP on loopback. Signs in with each
//! role, adds lines with a bad one (and sees it refused with its number),
//! filters, removes with the confirmation, watches a call placed with real SIPp
//! (trunk UAC from 127.0.0.2, PBX UAS) through the proxy appear on the Calls page with its verdict within a second,
//! checks that a view session has no edit controls and that its direct
//! POSTs (with and without the CSRF token) and an edit session's POST
//! without one are 403, that signing out kills the cookie, and that a
//! German browser gets German. Takes the screenshots (into docs/screenshots
//! with SIPSCREEN_UPDATE_SCREENSHOTS=1).

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::Serving;
use common::tools;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const EDIT: &str = "edit-token";
const VIEW: &str = "view-token";

fn sha(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// chromedriver as a child process, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver(path: &Path) -> Driver {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn browser(driver: &Driver, chromium: &Path, accept_language: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", format!("--accept-lang={accept_language}"),
                     format!("--lang={accept_language}")],
            "prefs": {"intl.accept_languages": accept_language},
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Polls `cond` until it holds or `within` passes.
async fn until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The element's text, waiting up to 5 s for it (a click that submits a
/// form returns before the next page is there).
async fn text(c: &Client, css: &str) -> String {
    match c
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e.text().await.unwrap(),
        Err(e) => panic!(
            "{css}: {e}\npage {}:\n{}",
            c.current_url().await.unwrap(),
            c.source().await.unwrap()
        ),
    }
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.unwrap().len()
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// Clicks what loads a new page and waits until the new page is there
/// (the old document is marked first, so its leftovers do not count).
async fn click(c: &Client, css: &str) {
    c.execute("window.__oldPage = true;", vec![]).await.unwrap();
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
    until(Duration::from_secs(10), "the next page", || async {
        c.execute(
            "return !window.__oldPage && document.readyState === 'complete';",
            vec![],
        )
        .await
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
    })
    .await;
}

/// Where the screenshots go: the README's `docs/screenshots` with
/// `SIPSCREEN_UPDATE_SCREENSHOTS=1`, else cargo's temporary directory for
/// tests (a test run leaves the checkout as it was).
fn shots() -> PathBuf {
    let d = if std::env::var_os("SIPSCREEN_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    };
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// The status of a POST the page itself sends (`fetch`, the session's
/// cookie), with `csrf` from the page's own form when `with_csrf`.
async fn post_from_page(c: &Client, path: &str, with_csrf: bool, fields: Value) -> u64 {
    let script = r#"
        const [path, withCsrf, fields, done] = arguments;
        const body = new URLSearchParams(fields);
        const f = document.querySelector('input[name=csrf]');
        if (withCsrf) { body.set('csrf', f ? f.value : ''); }
        fetch(path, {method: 'POST', body, credentials: 'same-origin'})
            .then(r => done(r.status), e => done(String(e)));
    "#;
    let v = c
        .execute_async(script, vec![json!(path), json!(with_csrf), fields])
        .await
        .unwrap();
    v.as_u64().unwrap_or_else(|| panic!("fetch failed: {v}"))
}

/// A free UDP port on `ip` (bound, read, released for SIPp to take).
fn free_udp(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Real SIPp, as tests/interop/run.sh drives it: the trunk (a UAC from
/// 127.0.0.2, tests/interop/sipp/trunk_uac.xml) calls through the sidecar
/// to the PBX (a UAS on 127.0.0.1, pbx_uas.xml, which checks the X-CRM-*
/// tags against `expect`). Returns when the trunk's SIPp has exited
/// successfully (the call is over: answered, BYE'd).
async fn sipp_call(
    sipp: &Path,
    dir: &Path,
    sip: SocketAddr,
    pbx: u16,
    trunk: u16,
    caller: &str,
    expect: &str,
) {
    let scen = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sipp");
    let csv = dir.join(format!("call-{caller}.csv"));
    std::fs::write(
        &csv,
        format!(
            "SEQUENTIAL\n{caller};+4930901820;{expect};X-Interop-Case: console;No-TN-Validation\n"
        ),
    )
    .unwrap();
    let common = [
        "-nostdin",
        "-trace_err",
        "-trace_logs",
        "-timeout",
        "20s",
        "-timeout_error",
        "-recv_timeout",
        "8s",
        "-m",
        "1",
    ];
    let mut uas = tokio::process::Command::new(sipp)
        .current_dir(dir)
        .arg("-sf")
        .arg(scen.join("pbx_uas.xml"))
        .args(["-i", "127.0.0.1", "-p", &pbx.to_string()])
        .args(common)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("sipp (PBX) starts");
    // Listening once its port is taken.
    until(
        Duration::from_secs(10),
        "the SIPp PBX listening",
        || async { std::net::UdpSocket::bind(("127.0.0.1", pbx)).is_err() },
    )
    .await;
    let uac = tokio::process::Command::new(sipp)
        .current_dir(dir)
        .arg("-sf")
        .arg(scen.join("trunk_uac.xml"))
        .arg("-inf")
        .arg(&csv)
        .args(["-i", "127.0.0.2", "-p", &trunk.to_string()])
        .arg(sip.to_string())
        .args(common)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .expect("sipp (trunk) runs");
    let logs = || {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        uac.success(),
        "the SIPp trunk's call failed ({uac}):\n{}",
        logs()
    );
    let pbx_ok = tokio::time::timeout(Duration::from_secs(10), uas.wait())
        .await
        .expect("the SIPp PBX exits")
        .unwrap();
    assert!(
        pbx_ok.success(),
        "the SIPp PBX failed ({pbx_ok}):\n{}",
        logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium() {
    let Some(driver_path) = tools::tool("chromedriver", "chromium-driver") else {
        return;
    };
    let Some(chromium) = tools::tool("chromium", "chromium") else {
        return;
    };
    let Some(sipp) = tools::tool("sipp", "sip-tester") else {
        return;
    };
    let (pbx, trunk) = (free_udp("127.0.0.1"), free_udp("127.0.0.2"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sipscreen.toml");
    std::fs::write(
        &config,
        format!(
            r#"[sip]
udp = ["127.0.0.1:0"]
tcp = []
[pbx]
target = "127.0.0.1:{}"
sources = ["127.0.0.1/32"]
[[trunk]]
name = "carrier"
target = "127.0.0.2:{}"
sources = ["127.0.0.2/32"]
[screening]
default_region = "DE"
[admin]
listen = "127.0.0.1:0"
[[admin.tokens]]
name = "manager"
role = "edit"
sha256 = "{}"
[[admin.tokens]]
name = "agent"
role = "view"
sha256 = "{}"
[store]
data_dir = "{}"
[defaults]
source = "CALL"
[[line]]
number = "+4930901820"
create = "offer"
source = "ADVERTISING"
queue = ["101", "102"]
forward_to_responsible = true
[[line]]
number = "030 901821"
crm_mode = "simple"
create_for = "incoming"
source = "WEB"
"#,
            pbx,
            trunk,
            sha(EDIT),
            sha(VIEW),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let run = Serving::start(&config);
    let admin = run.admin();
    let sip = run.addr("udp=[", ']');
    let base = format!("http://{admin}/console");
    let driver = start_driver(&driver_path);
    let c = browser(&driver, &chromium, "en-US,en").await;

    // Sign in (edit).
    c.goto(&format!("http://{admin}/")).await.unwrap();
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/console/login")
    );
    shot(&c, "login").await;
    fill(&c, "#token", EDIT).await;
    click(&c, "form[action$='/login'] button[type=submit]").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/console/exceptions");
    assert!(text(&c, ".who").await.contains("manager"));
    assert!(
        !c.source().await.unwrap().contains(EDIT),
        "the token in a page"
    );

    // Add to list, one line bad: three added, line 2 refused with its
    // reason and handed back in the text area.
    fill(
        &c,
        "#lines",
        "+49 30 1234567; supplier\nnot-a-number; oops\nboss@example.com; the boss\n0170 5550001; trial customer",
    )
    .await;
    click(&c, "form[action$='/exceptions/import'] button[type=submit]").await;
    assert_eq!(text(&c, "#count-added").await, "3");
    assert_eq!(text(&c, "#count-refused").await, "1");
    let refused = text(&c, "#refused li").await;
    assert!(
        refused.starts_with("Line 2: not-a-number; oops"),
        "{refused}"
    );
    let kept = c
        .find(Locator::Css("#lines"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("not-a-number; oops"));
    fill(&c, "#lines", "").await;
    shot(&c, "exceptions").await;

    // Filters: comment text, a value in national format, the type.
    fill(&c, "#q", "supplier").await;
    click(&c, "form.filters button[type=submit]").await;
    assert_eq!(count(&c, "#entries tbody tr").await, 1);
    assert_eq!(count(&c, "tr[data-value='+49301234567']").await, 1);
    c.goto(&format!("{base}/exceptions?value=030%201234567"))
        .await
        .unwrap();
    assert_eq!(count(&c, "tr[data-value='+49301234567']").await, 1);
    c.goto(&format!("{base}/exceptions")).await.unwrap();
    c.find(Locator::Css("#type"))
        .await
        .unwrap()
        .select_by_value("email")
        .await
        .unwrap();
    click(&c, "form.filters button[type=submit]").await;
    assert_eq!(count(&c, "#entries tbody tr").await, 1);
    assert_eq!(count(&c, "tr[data-value='boss@example.com']").await, 1);

    // Remove, with the confirmation.
    c.goto(&format!("{base}/exceptions")).await.unwrap();
    click(&c, "tr[data-value='+491705550001'] a.remove").await;
    assert_eq!(
        c.current_url().await.unwrap().path(),
        "/console/exceptions/remove"
    );
    assert!(text(&c, "main").await.contains("trial customer"));
    shot(&c, "remove-confirm").await;
    click(&c, "#confirm-remove").await;
    assert!(text(&c, "#removed").await.contains("+491705550001"));
    assert_eq!(count(&c, "tr[data-value='+491705550001']").await, 0);

    // An edit session's POST without the CSRF token: 403, nothing written.
    let status = post_from_page(
        &c,
        "/console/exceptions/import",
        false,
        json!({"lines": "+4917000000001; no csrf"}),
    )
    .await;
    assert_eq!(status, 403);

    // Calls: one logged call before, then the page open while an exception
    // caller calls; its row appears with its verdict within a second of
    // the call's end, without a reload.
    let sipp_dir = dir.path().join("sipp");
    std::fs::create_dir_all(&sipp_dir).unwrap();
    sipp_call(&sipp, &sipp_dir, sip, pbx, trunk, "+4917099999999",
        "verdict=log,direction=inbound,client=+4917099999999,line=+4930901820,create=offer,source=ADVERTISING,responsible=101,kamailio=,reason=,attest=none").await;
    c.goto(&format!("{base}/calls")).await.unwrap();
    until(
        Duration::from_secs(3),
        "the logged call on the page",
        || async { count(&c, "tr[data-client='+4917099999999']").await == 1 },
    )
    .await;
    sipp_call(&sipp, &sipp_dir, sip, pbx, trunk, "+49301234567",
        "verdict=exception,direction=inbound,client=+49301234567,line=+4930901820,create=,source=,responsible=101,kamailio=,reason=listed,attest=none").await;
    let ended = Instant::now();
    until(
        Duration::from_secs(1),
        "the exception call on the open page",
        || async { count(&c, "tr[data-client='+49301234567']").await == 1 },
    )
    .await;
    let shown_after = ended.elapsed();
    eprintln!("console: a finished call showed on the open Calls page after {shown_after:?}");
    let verdict = text(&c, "tr[data-client='+49301234567'] .verdict").await;
    assert_eq!(verdict, "exception");
    assert_eq!(
        count(&c, "tr.exception[data-client='+49301234567']").await,
        1
    );
    assert_eq!(count(&c, "#chart-days svg rect.bar-log").await, 1);
    shot(&c, "calls").await;
    // Filtered by verdict.
    c.find(Locator::Css("#verdict"))
        .await
        .unwrap()
        .select_by_value("exception")
        .await
        .unwrap();
    click(&c, "form.filters button[type=submit]").await;
    assert_eq!(count(&c, "#calls tbody tr").await, 1);

    // Lines and "what would this caller get?".
    c.goto(&format!("{base}/lines")).await.unwrap();
    assert_eq!(count(&c, "#lines tr[data-line]").await, 2);
    assert!(
        text(&c, "tr[data-line='+4930901820']")
            .await
            .contains("ADVERTISING")
    );
    fill(&c, "#number", "030 1234567").await;
    fill(&c, "#line", "+4930901820").await;
    click(&c, "#try button[type=submit]").await;
    assert_eq!(text(&c, "#try-verdict").await, "exception");
    shot(&c, "lines").await;

    // Audit.
    c.goto(&format!("{base}/audit?action=remove"))
        .await
        .unwrap();
    assert_eq!(count(&c, "#audit tbody tr").await, 1);
    assert!(text(&c, "#audit tbody tr").await.contains("+491705550001"));
    c.goto(&format!("{base}/audit")).await.unwrap();
    shot(&c, "audit").await;

    // On a phone: one column, the list readable.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/exceptions")).await.unwrap();
    shot(&c, "exceptions-phone").await;
    c.set_window_size(1280, 1000).await.unwrap();

    // Sign out: the old cookie is dead on the server, not only deleted.
    let old = c
        .get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.name() == "sipscreen_session")
        .expect("the session cookie")
        .value()
        .to_string();
    click(&c, "form[action$='/logout'] button").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/console/login");
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}/exceptions"))
        .header("cookie", format!("sipscreen_session={old}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "the signed-out session still works");

    // A view session: no edit controls; its POSTs are 403 with and
    // without its CSRF token, and nothing changes.
    fill(&c, "#token", VIEW).await;
    click(&c, "form[action$='/login'] button[type=submit]").await;
    assert!(text(&c, ".who").await.contains("agent"));
    assert_eq!(count(&c, "#entries tbody tr").await, 2);
    for edit in [
        "textarea",
        "a.remove",
        "form[action$='/exceptions/import']",
        "form[action$='/exceptions/record']",
    ] {
        assert_eq!(count(&c, edit).await, 0, "{edit} shown to a view session");
    }
    shot(&c, "exceptions-view").await;
    for with_csrf in [true, false] {
        let s = post_from_page(
            &c,
            "/console/exceptions/import",
            with_csrf,
            json!({"lines": "+4917000000002; from a view session"}),
        )
        .await;
        assert_eq!(s, 403, "import, csrf {with_csrf}");
        let s = post_from_page(
            &c,
            "/console/exceptions/remove",
            with_csrf,
            json!({"value": "+49301234567"}),
        )
        .await;
        assert_eq!(s, 403, "remove, csrf {with_csrf}");
    }
    c.goto(&format!("{base}/exceptions")).await.unwrap();
    assert_eq!(
        count(&c, "#entries tbody tr").await,
        2,
        "a view session changed the list"
    );
    c.close().await.unwrap();

    // German.
    let de = browser(&driver, &chromium, "de-DE,de").await;
    de.goto(&format!("{base}/login")).await.unwrap();
    let html_lang = de
        .find(Locator::Css("html"))
        .await
        .unwrap()
        .attr("lang")
        .await
        .unwrap();
    assert_eq!(html_lang.as_deref(), Some("de"));
    assert_eq!(text(&de, "h1").await, "Anmelden");
    fill(&de, "#token", VIEW).await;
    click(&de, "form[action$='/login'] button[type=submit]").await;
    de.goto(&format!("{base}/calls")).await.unwrap();
    assert_eq!(text(&de, "h1").await, "Anrufe");
    assert_eq!(
        text(&de, "tr[data-client='+49301234567'] .verdict").await,
        "Ausnahme"
    );
    shot(&de, "calls-de").await;
    de.close().await.unwrap();
    drop(run);
}
