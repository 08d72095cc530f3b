//! Console sessions: signing in with an API token gives a random session
//! id (256 bits from the OS) in a cookie; the token itself is neither
//! kept nor sent back. Sessions live in memory (a restart signs everyone
//! out) and end at a fixed time after sign-in, measured on the injectable
//! [`Clock`], at sign-out, or when their token leaves the config. Each
//! session has its own CSRF token, which every form carries and every
//! POST must echo.

use std::collections::HashMap;
use std::sync::Mutex;

use subtle::ConstantTimeEq;

use crate::api::auth::Actor;
use crate::clock::Clock;
use crate::config::Role;

/// How long a session lasts after sign-in.
pub const SESSION_TTL_MS: i64 = 8 * 3600 * 1000;
/// Sessions kept at most (the oldest go first beyond it).
const MAX_SESSIONS: usize = 10_000;

/// The session cookie.
pub const COOKIE: &str = "sipscreen_session";
/// The sign-in form's cookie (double-submit CSRF before a session exists).
pub const LOGIN_COOKIE: &str = "sipscreen_login";

/// One signed-in user.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token's name (the actor of changes).
    pub actor: String,
    pub role: Role,
    /// Echoed by every form of this session.
    pub csrf: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

impl Session {
    /// Whether `given` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, given: Option<&str>) -> bool {
        given.is_some_and(|g| same_secret(g, &self.csrf))
    }

    pub fn can_edit(&self) -> bool {
        self.role == Role::Edit
    }
}

/// Compares two secrets in constant time (for equal lengths).
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// 32 random bytes from the OS, as hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source");
    hex::encode(b)
}

/// The sessions of one admin listener.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    clock: Clock,
}

impl Sessions {
    pub fn new(clock: Clock) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Starts a session for `actor`: (id, session).
    pub fn create(&self, actor: &Actor) -> (String, Session) {
        let now = self.clock.now_ms();
        let id = random_token();
        let s = Session {
            actor: actor.name.clone(),
            role: actor.role,
            csrf: random_token(),
            expires_at: now + SESSION_TTL_MS,
        };
        let mut map = self.map.lock().expect("sessions lock");
        map.retain(|_, s| s.expires_at > now);
        while map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The live session `id`, if any (an expired one is dropped).
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = self.clock.now_ms();
        let mut map = self.map.lock().expect("sessions lock");
        match map.get(id) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends session `id`.
    pub fn remove(&self, id: &str) {
        self.map.lock().expect("sessions lock").remove(id);
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        let now = self.clock.now_ms();
        let map = self.map.lock().expect("sessions lock");
        map.values().filter(|s| s.expires_at > now).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v.trim())
    })
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, path `/console`,
/// `Secure` when the console is reached over HTTPS; `max_age` 0 deletes.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/console; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn actor(role: Role) -> Actor {
        Actor {
            name: "ops".into(),
            role,
        }
    }

    #[test]
    fn a_session_ends_at_its_time_by_the_clock() {
        let clock = Clock::manual(1_800_000_000_000);
        let s = Sessions::new(clock.clone());
        let (id, sess) = s.create(&actor(Role::Edit));
        assert_eq!(id.len(), 64);
        assert_ne!(id, sess.csrf);
        assert!(s.get(&id).is_some());
        clock.advance(Duration::from_millis(SESSION_TTL_MS as u64 - 1));
        assert!(s.get(&id).is_some(), "ended before its time");
        clock.advance(Duration::from_millis(1));
        assert!(s.get(&id).is_none(), "lived past its time");
        assert!(s.is_empty());
    }

    #[test]
    fn sign_out_ends_a_session_and_ids_differ() {
        let s = Sessions::new(Clock::manual(0));
        let (a, sa) = s.create(&actor(Role::View));
        let (b, _) = s.create(&actor(Role::View));
        assert_ne!(a, b);
        assert!(!sa.can_edit());
        s.remove(&a);
        assert!(s.get(&a).is_none());
        assert!(s.get(&b).is_some());
    }

    #[test]
    fn csrf_and_cookies() {
        let s = Sessions::new(Clock::manual(0));
        let (_, sess) = s.create(&actor(Role::Edit));
        assert!(sess.csrf_ok(Some(&sess.csrf.clone())));
        assert!(!sess.csrf_ok(None));
        assert!(!sess.csrf_ok(Some("")));
        assert!(!sess.csrf_ok(Some(&sess.csrf[1..])));
        assert_eq!(cookie("a=1; sipscreen_session=xyz", COOKIE), Some("xyz"));
        assert_eq!(cookie("sipscreen_sessionx=1", COOKIE), None);
        let c = set_cookie(COOKIE, "v", 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie(COOKIE, "v", 60, false).contains("Secure"));
    }
}
