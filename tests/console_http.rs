//! The web console over plain HTTP (reqwest, no browser) against the real
//! server on loopback: the session cookie's attributes, sign-in and
//! sign-out, CSRF on every POST, a view session refused (403) whatever it
//! sends, the language, and the Calls page and CSV export of a call made
//! through the proxy.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};

const EDIT: &str = "edit-token";
const VIEW: &str = "view-token";

/// Sends a request, the answer or a failed test.
async fn send(r: reqwest::RequestBuilder) -> reqwest::Response {
    r.send().await.expect("an HTTP answer")
}

/// A urlencoded form body (reqwest is built without its `form` feature).
trait FormBody {
    fn form(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form(self, pairs: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }
}

struct Console {
    base: String,
    admin: String,
    http: reqwest::Client,
}

/// A signed-in browser, as far as the server can tell: its cookie.
struct Session {
    cookie: String,
}

fn set_cookies(h: &HeaderMap) -> Vec<String> {
    h.get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// `name="NAME" value="…"` of the first such field in a page.
fn field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_string())
}

impl Console {
    fn new(h: &Harness) -> Console {
        let admin = h.server.admin.expect("admin listener").to_string();
        Console {
            base: format!("http://{admin}/console"),
            admin,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    /// Signs in with `token` (the sign-in form's nonce and cookie first):
    /// the answer's status, headers and the session cookie if one was set.
    async fn sign_in_with(&self, token: &str, extra: &[(&str, &str)]) -> (StatusCode, HeaderMap) {
        let mut get = self.http.get(format!("{}/login", self.base));
        for (k, v) in extra {
            get = get.header(*k, *v);
        }
        let form = get.send().await.unwrap();
        let cookies = set_cookies(form.headers());
        let login_cookie = cookies
            .iter()
            .find(|c| c.starts_with("sipscreen_login="))
            .expect("the sign-in form sets its cookie")
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let page = form.text().await.unwrap();
        let nonce = field(&page, "login_csrf").expect("nonce in the form");
        assert!(login_cookie.ends_with(&nonce));
        let mut post = self
            .http
            .post(format!("{}/login", self.base))
            .header("cookie", login_cookie)
            .form(&[("token", token), ("login_csrf", &nonce)]);
        for (k, v) in extra {
            post = post.header(*k, *v);
        }
        let r = post.send().await.unwrap();
        (r.status(), r.headers().clone())
    }

    async fn sign_in(&self, token: &str) -> Session {
        let (status, headers) = self.sign_in_with(token, &[]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let c = set_cookies(&headers)
            .into_iter()
            .find(|c| c.starts_with("sipscreen_session="))
            .expect("a session cookie");
        Session {
            cookie: c.split(';').next().unwrap().to_string(),
        }
    }

    async fn get(&self, s: &Session, path: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn post(&self, s: &Session, path: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &s.cookie)
            .form(form)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// The session's CSRF token, read from a page.
    async fn csrf(&self, s: &Session) -> String {
        let (_, page) = self.get(s, "/exceptions").await;
        field(&page, "csrf").expect("a csrf field")
    }

    /// Entries the API lists for `value`.
    async fn listed(&self, value: &str) -> usize {
        let v: serde_json::Value = self
            .http
            .get(format!("http://{}/api/v1/exceptions", self.admin))
            .query(&[("value", value)])
            .bearer_auth(VIEW)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["items"].as_array().unwrap().len()
    }
}

#[tokio::test]
async fn the_session_cookie_is_httponly_strict_and_expires_and_sign_out_ends_it() {
    let h = Harness::start().await;
    let c = Console::new(&h);
    // `/` leads to the console, the console to the sign-in page.
    let r = send(c.http.get(format!("http://{}/", c.admin))).await;
    assert_eq!(r.headers()[LOCATION], "/console");
    let r = c.http.get(&c.base).send().await.unwrap();
    assert_eq!(r.headers()[LOCATION], "/console/login");
    let r = send(c.http.get(format!("{}/exceptions", c.base))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console/login");

    let (status, headers) = c.sign_in_with(EDIT, &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION], "/console/exceptions");
    let cookie = set_cookies(&headers)
        .into_iter()
        .find(|c| c.starts_with("sipscreen_session="))
        .unwrap();
    let attrs: Vec<&str> = cookie.split("; ").collect();
    let id = attrs[0].strip_prefix("sipscreen_session=").unwrap();
    assert_eq!(id.len(), 64, "{cookie}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    for want in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=28800",
    ] {
        assert!(attrs.contains(&want), "{want} missing in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert!(!cookie.contains(EDIT));
    // Behind an HTTPS proxy the cookie is Secure.
    let (_, headers) = c
        .sign_in_with(EDIT, &[("x-forwarded-proto", "https")])
        .await;
    let secure = set_cookies(&headers)
        .into_iter()
        .find(|c| c.starts_with("sipscreen_session="))
        .unwrap();
    assert!(secure.ends_with("; Secure"), "{secure}");

    let s = Session {
        cookie: attrs[0].to_string(),
    };
    let (status, page) = c.get(&s, "/exceptions").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<strong>ops</strong>"), "who is signed in");
    assert!(page.contains("+4915112345678"), "the list");
    assert!(!page.contains(EDIT), "no token in a page");

    // A wrong token: 401, no session.
    let (status, headers) = c.sign_in_with("not-a-token", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        !set_cookies(&headers)
            .iter()
            .any(|c| c.starts_with("sipscreen_session="))
    );
    // The sign-in form without its nonce cookie: 403.
    let r = send(
        c.http
            .post(format!("{}/login", c.base))
            .form(&[("token", EDIT), ("login_csrf", "x")]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Sign-out needs the CSRF token; with it the cookie is cleared and the
    // old session id is dead.
    let (status, _) = c.post(&s, "/logout", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(c.get(&s, "/exceptions").await.0, StatusCode::OK);
    let csrf = c.csrf(&s).await;
    let r = send(
        c.http
            .post(format!("{}/logout", c.base))
            .header("cookie", &s.cookie)
            .form(&[("csrf", csrf.as_str())]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cleared = set_cookies(r.headers());
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("sipscreen_session=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let r = send(
        c.http
            .get(format!("{}/exceptions", c.base))
            .header("cookie", &s.cookie),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "the old cookie still works"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_view_session_sees_no_edit_controls_and_every_edit_post_is_403() {
    let h = Harness::start().await;
    let c = Console::new(&h);
    let s = c.sign_in(VIEW).await;
    let (status, page) = c.get(&s, "/exceptions").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("+4915112345678"),
        "a view session sees the list"
    );
    for edit in [
        "/exceptions/import",
        "/exceptions/record",
        "/exceptions/remove",
        "<textarea",
    ] {
        assert!(!page.contains(edit), "{edit} shown to a view session");
    }
    // The session's own CSRF token (its sign-out form has one) does not
    // help, nor does leaving it out, nor a body that is not a form.
    let csrf = c.csrf(&s).await;
    let tries: [(&str, Vec<(&str, &str)>); 5] = [
        (
            "/exceptions/import",
            vec![("csrf", &csrf), ("lines", "+4917000000001; sneaky")],
        ),
        (
            "/exceptions/import",
            vec![("lines", "+4917000000001; sneaky")],
        ),
        (
            "/exceptions/record",
            vec![
                ("csrf", &csrf),
                ("entity_kind", "lead"),
                ("entity_id", "1"),
                ("phones", "+4917000000001"),
            ],
        ),
        (
            "/exceptions/remove",
            vec![("csrf", &csrf), ("value", "+4915112345678")],
        ),
        ("/exceptions/remove", vec![("value", "+4915112345678")]),
    ];
    for (path, form) in &tries {
        let (status, _) = c.post(&s, path, form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path} {form:?}");
    }
    let r = send(
        c.http
            .post(format!("{}/exceptions/import", c.base))
            .header("cookie", &s.cookie)
            .body(vec![0xff, 0x00, b'%']),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(c.listed("+4917000000001").await, 0, "written");
    assert_eq!(c.listed("+4915112345678").await, 1, "removed");
    // The confirmation page is not shown either.
    let (status, _) = c.get(&s, "/exceptions/remove?value=%2B4915112345678").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // No session at all: 401.
    let r = send(
        c.http
            .post(format!("{}/exceptions/import", c.base))
            .form(&[("lines", "+4917000000001")]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    h.stop().await;
}

#[tokio::test]
async fn an_edit_session_needs_its_csrf_token_and_then_adds_with_refusals_listed() {
    let h = Harness::start().await;
    let c = Console::new(&h);
    let s = c.sign_in(EDIT).await;
    let other = c.sign_in(EDIT).await;
    let csrf = c.csrf(&s).await;
    let other_csrf = c.csrf(&other).await;
    assert_ne!(csrf, other_csrf, "CSRF tokens are per session");
    let lines = "+49 170 1234567; new supplier\nnot a number; oops\n030 7654321; national form\n";
    for form in [
        vec![("lines", lines)],
        vec![("csrf", ""), ("lines", lines)],
        vec![("csrf", other_csrf.as_str()), ("lines", lines)],
    ] {
        let (status, _) = c.post(&s, "/exceptions/import", &form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{form:?}");
    }
    // The right token from a foreign origin: 403.
    let r = send(
        c.http
            .post(format!("{}/exceptions/import", c.base))
            .header("cookie", &s.cookie)
            .header("origin", "http://evil.example")
            .form(&[("csrf", csrf.as_str()), ("lines", lines)]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(c.listed("+491701234567").await, 0);

    let (status, page) = c
        .post(
            &s,
            "/exceptions/import",
            &[("csrf", &csrf), ("lines", lines)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains(r#"<strong id="count-added">1</strong>"#),
        "{page}"
    );
    assert!(page.contains(r#"<strong id="count-unchanged">1</strong>"#));
    assert!(page.contains(r#"<strong id="count-refused">1</strong>"#));
    assert!(
        page.contains(r#"<li data-line="2">Line 2: <code>not a number; oops</code>"#),
        "{page}"
    );
    assert_eq!(c.listed("+491701234567").await, 1);

    // A CRM record, one comment, an expiry in 7 days.
    let (status, page) = c
        .post(
            &s,
            "/exceptions/record",
            &[
                ("csrf", &csrf),
                ("entity_kind", "deal"),
                ("entity_id", "45"),
                ("phones", "+49 171 5550001\n\n0171 5550002"),
                ("emails", "Buyer@Example.com"),
                ("comment", "key account"),
                ("ttl", "604800"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains(r#"<strong id="count-added">3</strong>"#),
        "{page}"
    );
    let v: serde_json::Value = c
        .http
        .get(format!(
            "http://{}/api/v1/exceptions?q=key%20account",
            c.admin
        ))
        .bearer_auth(VIEW)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(
        items
            .iter()
            .all(|e| e["origin"] == "deal:45" && e["created_by"] == "ops")
    );
    assert!(items.iter().all(|e| e["expires_at"].is_string()));
    // A record with a bad phone writes nothing and says why.
    let (status, page) = c
        .post(
            &s,
            "/exceptions/record",
            &[
                ("csrf", &csrf),
                ("entity_kind", "lead"),
                ("entity_id", "9"),
                ("phones", "+49 171 5550009\nxyz"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("nothing written"), "{page}");
    assert_eq!(c.listed("+491715550009").await, 0);

    // Remove: confirmation, then the POST.
    let (status, page) = c
        .get(&s, "/exceptions/remove?value=0049%20170%201234567")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("new supplier") && page.contains("confirm-remove"));
    let (status, page) = c
        .post(
            &s,
            "/exceptions/remove",
            &[("csrf", &csrf), ("value", "+491701234567")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"id="removed""#));
    assert_eq!(c.listed("+491701234567").await, 0);
    // The audit page shows both, filtered by who and what.
    let (_, audit) = c.get(&s, "/audit?actor=ops&action=remove").await;
    assert!(audit.contains("+491701234567") && audit.contains(r#"data-action="remove""#));
    assert!(!audit.contains(r#"data-action="add""#));
    h.stop().await;
}

#[tokio::test]
async fn german_for_accept_language_de_and_the_switch_sticks() {
    let h = Harness::start().await;
    let c = Console::new(&h);
    let r = send(
        c.http
            .get(format!("{}/login", c.base))
            .header("accept-language", "de-DE,de;q=0.9,en;q=0.5"),
    )
    .await;
    let page = r.text().await.unwrap();
    assert!(page.contains(r#"<html lang="de">"#), "{page}");
    assert!(page.contains("Zugangstoken"));
    let r = send(
        c.http
            .get(format!("{}/lang?to=de&back=/console/calls", c.base)),
    )
    .await;
    assert_eq!(r.headers()[LOCATION], "/console/calls");
    let lang = set_cookies(r.headers()).remove(0);
    assert!(lang.starts_with("sipscreen_lang=de;"), "{lang}");
    let s = c.sign_in(VIEW).await;
    let r = send(
        c.http
            .get(format!("{}/calls", c.base))
            .header("cookie", format!("{}; sipscreen_lang=de", s.cookie))
            .header("accept-language", "en"),
    )
    .await;
    let page = r.text().await.unwrap();
    assert!(page.contains("<h1>Anrufe</h1>"), "{page}");
    // No open redirect.
    let r = send(
        c.http
            .get(format!("{}/lang?to=en&back=//evil.example/", c.base)),
    )
    .await;
    assert_eq!(r.headers()[LOCATION], "/console/exceptions");
    h.stop().await;
}

#[tokio::test]
async fn a_call_through_the_proxy_shows_on_the_calls_page_and_in_the_csv() {
    let h = Harness::start().await;
    let c = Console::new(&h);
    let s = c.sign_in(VIEW).await;
    // An exception caller and a logged one, both refused busy by the PBX.
    for (caller, id) in [
        ("+4915112345678", "con-ex-1"),
        ("+4917099999999", "con-log-1"),
    ] {
        let (_, got, _) = h.invite_from_trunk(caller, "+4930901820", id, "").await;
        let busy = response_to(&got, 486, "Busy Here", "t1", "sip:agent@127.0.0.1");
        h.pbx.send_to(busy.as_bytes(), h.sip_udp).await.unwrap();
        recv(&h.trunk).await;
    }
    let deadline = Instant::now() + WAIT;
    let page = loop {
        let (_, page) = c.get(&s, "/calls").await;
        if page.contains("con-log-1") && page.contains("con-ex-1") {
            break page;
        }
        assert!(Instant::now() < deadline, "calls not on the page: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(page.contains(r#"class="verdict verdict-exception""#));
    assert!(page.contains("id=\"chart-days\"") && page.contains("<svg"));
    let (_, only_ex) = c
        .get(&s, "/calls?verdict=exception&direction=inbound")
        .await;
    assert!(only_ex.contains("con-ex-1") && !only_ex.contains("con-log-1"));
    let (status, bad) = c.get(&s, "/calls?outcome=nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("outcome &quot;nope&quot;"), "{bad}");

    let r = send(
        c.http
            .get(format!("{}/calls.csv?verdict=exception", c.base))
            .header("cookie", &s.cookie),
    )
    .await;
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = r.text().await.unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(rows[0].starts_with("call_id,sip_call_id,start"));
    assert!(
        rows[1].contains(",con-ex-1,") && rows[1].contains(",+4915112345678,exception,failed,486,"),
        "{csv}"
    );
    // Without a session: to the sign-in page, no data.
    let r = send(c.http.get(format!("{}/calls.csv", c.base))).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    h.stop().await;
}

#[tokio::test]
async fn a_session_ends_when_its_token_leaves_the_config() {
    let h = Harness::start().await;
    let c = Console::new(&h);
    let view = c.sign_in(VIEW).await;
    let edit = c.sign_in(EDIT).await;
    assert_eq!(c.get(&view, "/calls").await.0, StatusCode::OK);
    // Reload without the view token: its session is over at once, the
    // edit session goes on.
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let without = text.replace(
        "[[admin.tokens]]\nname = \"crm-viewer\"\nrole = \"view\"\nsha256 = \"5e17bb983b1ff3b4acbcaa8451a4173faa5575c682e7cf8615e2ed5e50fad7bd\"    # view-token\n",
        "",
    );
    assert_ne!(text, without, "the view token is in the harness config");
    std::fs::write(&h.config_path, without).unwrap();
    h.server.reload().expect("valid reload");
    let r = send(
        c.http
            .get(format!("{}/calls", c.base))
            .header("cookie", &view.cookie),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console/login");
    assert_eq!(c.get(&edit, "/calls").await.0, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn the_list_pages_by_cursor_with_the_filters_kept() {
    let h = Harness::start().await;
    let c = Console::new(&h);
    let body: String = (0..100)
        .map(|i| format!("+4917100{i:05}; bulk {}\n", i % 2))
        .collect();
    let r = send(
        c.http
            .post(format!("http://{}/api/v1/exceptions/import", c.admin))
            .bearer_auth(EDIT)
            .header("content-type", "text/plain")
            .body(body),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let s = c.sign_in(VIEW).await;
    let rows = |page: &str| page.matches("<tr data-value=").count();
    let next = |page: &str| {
        let at = page.find(r#"id="next-page" href=""#)? + 21;
        Some(page[at..at + page[at..].find('"')?].replace("&amp;", "&"))
    };
    // 104 entries (4 from the harness file): 50, 50, 4.
    let mut seen = std::collections::BTreeSet::new();
    let mut path = "/exceptions".to_string();
    let mut sizes = Vec::new();
    loop {
        let (status, page) = c.get(&s, &path).await;
        assert_eq!(status, StatusCode::OK);
        sizes.push(rows(&page));
        for part in page.split("<tr data-value=\"").skip(1) {
            seen.insert(part[..part.find('"').unwrap()].to_string());
        }
        match next(&page) {
            Some(n) => path = n.strip_prefix("/console").unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(sizes, [50, 50, 4]);
    assert_eq!(seen.len(), 104, "a row twice or missing");
    // With a filter, the next page keeps it.
    let (_, page) = c.get(&s, "/exceptions?q=bulk%201").await;
    assert_eq!(rows(&page), 50);
    let n = next(&page).expect("a second page");
    assert!(n.contains("q=bulk+1"), "{n}");
    let (_, page) = c.get(&s, n.strip_prefix("/console").unwrap()).await;
    assert_eq!(rows(&page), 0, "{page}");
    assert!(next(&page).is_none());
    // A cursor the console did not give out: 400 with the reason.
    let (status, page) = c.get(&s, "/exceptions?cursor=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("is not one this API gave out"));
    h.stop().await;
}
