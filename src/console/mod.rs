//! The web console under `/console` on the admin listener: the exception
//! list, the call log with its counts, the lines and the audit, for the
//! people who keep the list (sales managers, CRM administrators).
//!
//! Server-rendered HTML (maud: the templates are Rust, checked by the
//! compiler and escaped by default), one embedded stylesheet and one small
//! embedded script (live refresh of the Calls page); nothing is fetched
//! from elsewhere and every page works without the script. Sign-in trades
//! an API token for a session cookie (see [`session`]); a `view` session
//! gets no edit controls and the server refuses its edits (403) whatever
//! it sends; every POST carries the session's CSRF token.
//!
//! The console lists, writes, removes, imports and screens through the
//! API's own functions (`api::exceptions`, `api::calls`, `api::screen`):
//! there is one implementation of each, the console only renders it.

mod audit;
mod calls;
mod exceptions;
pub mod i18n;
mod lines;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use crate::api::ApiState;
use crate::config::Role;
use i18n::{LANG_COOKIE, Lang, M};
use session::{COOKIE, LOGIN_COOKIE, Session, Sessions, cookie, random_token, same_secret};

/// Where the console is mounted.
pub const BASE: &str = "/console";
/// Largest form body (the "Add to list" text area); bigger lists go
/// through `POST /api/v1/exceptions/import`.
const FORM_MAX_BYTES: usize = 8 << 20;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// What the console's handlers share.
#[derive(Clone)]
pub struct ConsoleState {
    pub api: ApiState,
    pub sessions: Arc<Sessions>,
}

/// The console's routes (nest them at [`BASE`]).
pub fn router(api: ApiState) -> Router {
    let sessions = Arc::new(Sessions::new(api.exceptions.clock().clone()));
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/lang", get(set_lang))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .route("/exceptions", get(exceptions::page))
        .route("/exceptions/import", post(exceptions::import))
        .route("/exceptions/record", post(exceptions::record))
        .route(
            "/exceptions/remove",
            get(exceptions::confirm).post(exceptions::remove),
        )
        .route("/calls", get(calls::page))
        .route("/calls.csv", get(calls::csv))
        .route("/lines", get(lines::page))
        .route("/audit", get(audit::page))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(FORM_MAX_BYTES))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(ConsoleState { api, sessions })
}

/// Headers on every console answer: nothing from elsewhere, no framing,
/// no sniffing; pages are not cached (they show the list as it is).
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// A signed-in user on one request.
pub struct Viewer {
    pub sid: String,
    pub session: Session,
    pub lang: Lang,
}

impl Viewer {
    pub fn can_edit(&self) -> bool {
        self.session.can_edit()
    }

    /// As the API's actor (changes are recorded under the token's name).
    pub fn actor(&self) -> crate::api::auth::Actor {
        crate::api::auth::Actor {
            name: self.session.actor.clone(),
            role: self.session.role,
        }
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn cookie_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    header_str(headers, header::COOKIE).and_then(|c| cookie(c, name))
}

/// Whether the browser reached the console over HTTPS (directly or
/// through a proxy that says so): then cookies are `Secure`.
fn https(headers: &HeaderMap) -> bool {
    header_str(
        headers,
        header::HeaderName::from_static("x-forwarded-proto"),
    )
    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// A POST's `Origin`, when sent, must be this host (a second line behind
/// SameSite=Strict and the CSRF token).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = header_str(headers, header::ORIGIN) else {
        return true;
    };
    let host = header_str(headers, header::HOST).unwrap_or("");
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| !host.is_empty() && o == host)
}

/// A urlencoded form body, read without failing (a view session's POST is
/// refused whatever its body is).
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name`'s value, empty when absent.
    pub fn text(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }
}

impl ConsoleState {
    /// The request's live session, if any (one whose token left the config
    /// or changed role is ended).
    fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        let sid = cookie_of(headers, COOKIE)?;
        let session = self.sessions.get(sid)?;
        if !self.api.tokens.load().has(&session.actor, session.role) {
            self.sessions.remove(sid);
            return None;
        }
        Some(Viewer {
            sid: sid.to_string(),
            session,
            lang: Lang::of(headers),
        })
    }

    /// A page's viewer and its query (an unreadable query is no filter),
    /// or the way to the sign-in page.
    pub fn page_start<T: Default>(
        &self,
        headers: &HeaderMap,
        q: Result<Query<T>, QueryRejection>,
    ) -> Result<(Viewer, T), Box<Response>> {
        let v = self.page_viewer(headers)?;
        Ok((v, q.map(|Query(q)| q).unwrap_or_default()))
    }

    /// A page's viewer, or the way to the sign-in page.
    pub fn page_viewer(&self, headers: &HeaderMap) -> Result<Viewer, Box<Response>> {
        self.viewer(headers)
            .ok_or_else(|| Box::new(Redirect::to(&format!("{BASE}/login")).into_response()))
    }

    /// The viewer of a POST that changes something: signed in (else 401),
    /// with an edit session (else 403, before anything of the form is
    /// looked at), from this origin with the session's CSRF token (else
    /// 403).
    pub fn editor(&self, headers: &HeaderMap, form: &Form) -> Result<Viewer, Box<Response>> {
        let v = self.poster(headers, form)?;
        if !v.can_edit() {
            return Err(Box::new(message(
                Some(&v),
                v.lang,
                StatusCode::FORBIDDEN,
                M::Forbidden.text(v.lang),
            )));
        }
        Ok(v)
    }

    /// The viewer of any POST: signed in, same origin, CSRF token; a view
    /// session's POST to an edit form is refused by [`editor`](Self::editor)
    /// before the CSRF check, so it gets 403 whatever it sends.
    fn poster(&self, headers: &HeaderMap, form: &Form) -> Result<Viewer, Box<Response>> {
        let lang = Lang::of(headers);
        let Some(v) = self.viewer(headers) else {
            return Err(Box::new(message(
                None,
                lang,
                StatusCode::UNAUTHORIZED,
                M::SignInFirst.text(lang),
            )));
        };
        if !v.can_edit() {
            return Ok(v);
        }
        if !same_origin(headers) || !v.session.csrf_ok(form.get("csrf")) {
            return Err(Box::new(message(
                Some(&v),
                lang,
                StatusCode::FORBIDDEN,
                M::CsrfBad.text(lang),
            )));
        }
        Ok(v)
    }
}

/// An HTML answer.
pub fn html_page(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

/// Which page the navigation marks as the current one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Exceptions,
    Calls,
    Lines,
    Audit,
    None,
}

/// The page around `body`: skip link, header with navigation, who is
/// signed in, sign-out and the language switch, then `main`.
/// `here` is the page's own path and query (the language switch returns
/// to it).
pub fn layout(
    v: Option<&Viewer>,
    lang: Lang,
    nav: Nav,
    here: &str,
    title: &str,
    body: Markup,
) -> Markup {
    let t = |m: M| m.text(lang);
    let items = [
        (Nav::Exceptions, "exceptions", M::NavExceptions),
        (Nav::Calls, "calls", M::NavCalls),
        (Nav::Lines, "lines", M::NavLines),
        (Nav::Audit, "audit", M::NavAudit),
    ];
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (t(M::AppName)) }
                link rel="stylesheet" href={(BASE) "/assets/console.css"};
                script src={(BASE) "/assets/console.js"} defer {}
            }
            body {
                a.skip href="#main" { (t(M::Skip)) }
                header.top {
                    span.brand { (t(M::AppName)) }
                    @if v.is_some() {
                        nav aria-label=(t(M::MainNav)) {
                            ul {
                                @for (n, path, label) in items {
                                    li {
                                        @if n == nav {
                                            a href={(BASE) "/" (path)} aria-current="page" { (t(label)) }
                                        } @else {
                                            a href={(BASE) "/" (path)} { (t(label)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    div.tools {
                        @if let Some(v) = v {
                            span.who {
                                (t(M::SignedInAs)) " " strong { (v.session.actor) }
                                " (" (if v.can_edit() { t(M::RoleEdit) } else { t(M::RoleView) }) ")"
                            }
                            form.inline method="post" action={(BASE) "/logout"} {
                                input type="hidden" name="csrf" value=(v.session.csrf);
                                button.link type="submit" { (t(M::SignOut)) }
                            }
                        }
                        span.langs aria-label=(t(M::Language)) role="group" {
                            @for l in Lang::ALL {
                                @if l == lang {
                                    span.lang-current lang=(l.code()) aria-current="true" { (l.name()) }
                                } @else {
                                    a lang=(l.code()) hreflang=(l.code())
                                        href=(lang_link(l, here)) { (l.name()) }
                                }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn lang_link(l: Lang, back: &str) -> String {
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("to", l.code())
        .append_pair("back", back)
        .finish();
    format!("{BASE}/lang?{q}")
}

/// A page with one message (errors, refusals).
pub fn message(v: Option<&Viewer>, lang: Lang, status: StatusCode, text: &str) -> Response {
    let title = if status.is_success() {
        M::AppName.text(lang)
    } else {
        M::Error.text(lang)
    };
    html_page(
        status,
        layout(
            v,
            lang,
            Nav::None,
            &format!("{BASE}/exceptions"),
            title,
            html! {
                p.alert role="alert" { (text) }
                @if v.is_none() {
                    p { a href={(BASE) "/login"} { (M::SignInTitle.text(lang)) } }
                }
            },
        ),
    )
}

/// A unix-ms time as a `<time>` (UTC, to the second).
pub fn when(ms: i64) -> Markup {
    let full = crate::clock::rfc3339(ms);
    when_text(&full)
}

/// An RFC 3339 text as a `<time>` shown `2027-01-15 08:00:00 UTC`.
pub fn when_text(rfc: &str) -> Markup {
    let shown = rfc.get(..19).unwrap_or(rfc).replace('T', " ");
    html! { time datetime=(rfc) { (shown) " UTC" } }
}

/// An error from the API's functions, shown in a page.
pub fn alert(text: &str) -> Markup {
    html! { p.alert role="alert" { (text) } }
}

/// A hidden CSRF field.
pub fn csrf_field(v: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.session.csrf); }
}

/// A query string from pairs, empty values left out.
pub fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

/// A console link: `BASE/path`, with the non-empty pairs as its query.
pub fn page_link<'a>(path: &str, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let q = query_string(pairs);
    if q.is_empty() {
        format!("{BASE}/{path}")
    } else {
        format!("{BASE}/{path}?{q}")
    }
}

/// The paging links under a list: back to the first page when on a later
/// one, and the next page when there is one.
pub fn pager(lang: Lang, first: Option<String>, next: Option<String>) -> Markup {
    html! {
        nav.pager aria-label=(M::Pages.text(lang)) {
            @if let Some(f) = first { a href=(f) { (M::FirstPage.text(lang)) } }
            @if let Some(n) = next { a #next-page href=(n) rel="next" { (M::NextPage.text(lang)) } }
        }
    }
}

/// A table's header row.
pub fn thead(lang: Lang, cols: &[M]) -> Markup {
    html! {
        thead { tr { @for c in cols { th scope="col" { (c.text(lang)) } } } }
    }
}

/// A `<select>` with a label; `options` are (value, text).
pub fn select(id: &str, label: &str, options: &[(&str, &str)], chosen: &str) -> Markup {
    html! {
        label for=(id) { (label) }
        select id=(id) name=(id) {
            @for (value, text) in options {
                option value=(value) selected[*value == chosen] { (text) }
            }
        }
    }
}

/// A text `<input>` with a label.
pub fn text_input(id: &str, label: &str, value: &str) -> Markup {
    html! {
        label for=(id) { (label) }
        input type="text" id=(id) name=(id) value=(value);
    }
}

async fn home(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    match s.viewer(&headers) {
        Some(_) => Redirect::to(&format!("{BASE}/exceptions")).into_response(),
        None => Redirect::to(&format!("{BASE}/login")).into_response(),
    }
}

async fn not_found(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    let lang = Lang::of(&headers);
    let v = s.viewer(&headers);
    message(
        v.as_ref(),
        lang,
        StatusCode::NOT_FOUND,
        M::NotFoundPage.text(lang),
    )
}

#[derive(Deserialize, Default)]
struct LoginQuery {
    out: Option<String>,
}

fn login_page(lang: Lang, status: StatusCode, note: Option<Markup>, secure: bool) -> Response {
    let t = |m: M| m.text(lang);
    let nonce = random_token();
    let page = layout(
        None,
        lang,
        Nav::None,
        &format!("{BASE}/login"),
        t(M::SignInTitle),
        html! {
            @if let Some(n) = note { (n) }
            form.card method="post" action={(BASE) "/login"} {
                input type="hidden" name="login_csrf" value=(nonce);
                label for="token" { (t(M::TokenLabel)) }
                input type="password" id="token" name="token" required
                    autocomplete="current-password" aria-describedby="token-help" autofocus;
                p.help #token-help { (t(M::TokenHelp)) }
                button type="submit" { (t(M::SignInButton)) }
            }
        },
    );
    let mut r = html_page(status, page);
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(LOGIN_COOKIE, &nonce, 3600, secure)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_form(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    q: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    if s.viewer(&headers).is_some() {
        return Redirect::to(&format!("{BASE}/exceptions")).into_response();
    }
    let lang = Lang::of(&headers);
    let note = q
        .ok()
        .and_then(|Query(q)| q.out)
        .map(|_| html! { p.ok role="status" { (M::SignedOut.text(lang)) } });
    login_page(lang, StatusCode::OK, note, https(&headers))
}

/// `POST /login`: the sign-in form's nonce must match its cookie (so no
/// other site can sign a browser in); a valid token of either role starts
/// a session.
async fn login(State(s): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let lang = Lang::of(&headers);
    let secure = https(&headers);
    let form = Form::parse(&body);
    let nonce_ok = match (cookie_of(&headers, LOGIN_COOKIE), form.get("login_csrf")) {
        (Some(c), Some(f)) => same_secret(c, f),
        _ => false,
    };
    if !nonce_ok || !same_origin(&headers) {
        return login_page(
            lang,
            StatusCode::FORBIDDEN,
            Some(alert(M::CsrfBad.text(lang))),
            secure,
        );
    }
    let bearer = format!("Bearer {}", form.text("token"));
    let actor = match s
        .api
        .tokens
        .load()
        .check(Some(bearer.as_bytes()), Role::View)
    {
        Ok(a) => a,
        Err(_) => {
            tracing::info!("console sign-in refused: unknown token");
            return login_page(
                lang,
                StatusCode::UNAUTHORIZED,
                Some(alert(M::BadToken.text(lang))),
                secure,
            );
        }
    };
    if let Some(old) = cookie_of(&headers, COOKIE) {
        s.sessions.remove(old);
    }
    let (sid, _) = s.sessions.create(&actor);
    tracing::info!(actor = %actor.name, role = ?actor.role, "console sign-in");
    let mut r = Redirect::to(&format!("{BASE}/exceptions")).into_response();
    let max_age = session::SESSION_TTL_MS / 1000;
    for c in [
        session::set_cookie(COOKIE, &sid, max_age, secure),
        session::set_cookie(LOGIN_COOKIE, "", 0, secure),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// `POST /logout` (with the CSRF token): ends the session and clears the
/// cookie.
async fn logout(State(s): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let v = match s.poster(&headers, &form) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if !v.session.csrf_ok(form.get("csrf")) {
        return message(
            Some(&v),
            v.lang,
            StatusCode::FORBIDDEN,
            M::CsrfBad.text(v.lang),
        );
    }
    s.sessions.remove(&v.sid);
    tracing::info!(actor = %v.session.actor, "console sign-out");
    let mut r = Redirect::to(&format!("{BASE}/login?out=1")).into_response();
    if let Ok(c) = HeaderValue::from_str(&session::set_cookie(COOKIE, "", 0, https(&headers))) {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

#[derive(Deserialize, Default)]
struct LangQuery {
    to: Option<String>,
    back: Option<String>,
}

/// `GET /lang?to=de&back=/console/calls`: sets the language cookie and
/// returns to the page (only to a console page).
async fn set_lang(headers: HeaderMap, q: Result<Query<LangQuery>, QueryRejection>) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let lang = q.to.as_deref().and_then(Lang::parse).unwrap_or(Lang::En);
    let back = q
        .back
        .filter(|b| b.starts_with(&format!("{BASE}/")) && !b.contains("//") && !b.contains('\\'))
        .unwrap_or_else(|| format!("{BASE}/exceptions"));
    let mut r = Redirect::to(&back).into_response();
    let c = format!(
        "{LANG_COOKIE}={}; Path={BASE}; Max-Age=31536000; SameSite=Strict{}",
        lang.code(),
        if https(&headers) { "; Secure" } else { "" }
    );
    if let Ok(c) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

fn asset(ctype: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// Raw HTML (only for the fixed, escaped-by-construction SVG of the
/// charts).
pub fn raw(s: String) -> PreEscaped<String> {
    PreEscaped(s)
}
