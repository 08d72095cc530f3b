//! TLS to PostgreSQL: `sslmode=verify-full` in the URL encrypts and
//! verifies the server against `[store] ca`; a server the CA did not sign
//! is refused (with no password in the error); without an sslmode the
//! connection is plain. A test binary of its own: it turns TLS on in its
//! cluster.

mod common;

use std::os::unix::fs::PermissionsExt;

use sipscreen::store::StoreError;
use sipscreen::store::postgres::PgStore;

/// Whether the store's connections are encrypted (from pg_stat_ssl).
fn encrypted(s: &PgStore) -> bool {
    s.block_on(async {
        let c = s.pool().get().await.unwrap();
        c.query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    })
}

#[test]
fn sslmode_verify_full_encrypts_and_checks_the_server() {
    let Some(c) = common::pg::cluster() else {
        return;
    };
    let ca = common::tls::Ca::new("db test CA");
    let server = ca.issue("db", &["127.0.0.1"], false);
    let (crt, key) = server.write(c.dir(), "server");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.give(&crt);
    c.give(&key);
    // One statement each: ALTER SYSTEM refuses a transaction block.
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", crt.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_string(),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        c.exec("postgres", &sql);
    }
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "ca");
    let url = c.database();
    // The reload reaches new sessions at once; a first connection may
    // still meet the old settings: poll for TLS.
    let tls_url = format!("{url}?sslmode=verify-full");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let s = loop {
        match PgStore::open(&tls_url, Some(&ca_file), 1) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::yield_now();
            }
            Err(e) => panic!("TLS open: {e}"),
        }
    };
    assert!(encrypted(&s));
    drop(s);

    // A CA that did not sign the server's certificate: refused.
    let other = common::tls::Ca::new("someone else");
    let other_file = other.write(dir.path(), "other");
    let with_pw = tls_url.replace("sipscreen@", "sipscreen:s3cret-pw@");
    let e = PgStore::open(&with_pw, Some(&other_file), 1).expect_err("refused");
    let msg = format!("{e} {e:?}");
    assert!(matches!(e, StoreError::Unavailable(_)), "{msg}");
    assert!(msg.contains("TLS"), "{msg}");
    assert!(!msg.contains("s3cret-pw"), "{msg}");

    // No sslmode: plain TCP, even though the server offers TLS.
    let s = PgStore::open(&url, None, 1).unwrap();
    assert!(!encrypted(&s));
}
