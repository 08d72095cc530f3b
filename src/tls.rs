//! TLS material for SIP over TLS: certificates and keys read from PEM
//! files and the rustls configs built from them (aws-lc-rs, TLS 1.2 and
//! 1.3, rustls' safe defaults). Everything here runs when a config
//! generation is built (start, SIGHUP, `check-config`), never on the SIP
//! path: a file that cannot be read, a key that does not fit its
//! certificate or a certificate outside its validity refuses the whole
//! generation with an error naming the file, so the running one stays.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::PeerTlsConfig;

/// Why TLS material could not be used; names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}: {msg}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        msg: String,
    },
    #[error("{0}")]
    Other(String),
}

fn file_err(what: &'static str, path: &Path, msg: impl Into<String>) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The one crypto provider (aws-lc-rs: already built for reqwest).
fn provider() -> Arc<CryptoProvider> {
    static P: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    P.clone()
}

/// Certificates of a PEM file (a chain, leaf first, or CA certificates),
/// each checked to be within its validity period now.
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data =
        std::fs::read(path).map_err(|e| file_err(what, path, format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(what, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(what, path, "holds no CERTIFICATE block"));
    }
    let now = crate::clock::now_ms() / 1000;
    for (i, c) in certs.iter().enumerate() {
        let (from, until) = validity(c).ok_or_else(|| {
            file_err(
                what,
                path,
                format!("certificate {} is not valid DER", i + 1),
            )
        })?;
        if now >= until {
            return Err(file_err(
                what,
                path,
                format!("certificate {} expired at {}", i + 1, rfc3339(until)),
            ));
        }
        if now < from {
            return Err(file_err(
                what,
                path,
                format!(
                    "certificate {} is not valid before {}",
                    i + 1,
                    rfc3339(from)
                ),
            ));
        }
    }
    Ok(certs)
}

fn read_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data =
        std::fs::read(path).map_err(|e| file_err(what, path, format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| file_err(what, path, format!("no usable PEM private key: {e}")))
}

fn roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in read_certs(what, path)? {
        store
            .add(c)
            .map_err(|e| file_err(what, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// The system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR`, else
/// the platform store).
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (_, _) = store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        return Err(TlsError::Other(
            "no system root certificates found (install ca-certificates, or set tls_ca / [tls] ca)"
                .to_string(),
        ));
    }
    Ok(store)
}

/// A client config that verifies the server's certificate and name
/// against the CA certificates in `ca` (named `what` in errors), else the
/// system roots; no client certificate.
pub fn verifying_client_config(
    ca: Option<&Path>,
    what: &'static str,
) -> Result<ClientConfig, TlsError> {
    let roots = match ca {
        Some(ca) => roots(what, ca)?,
        None => system_roots()?,
    };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Other(format!("TLS protocol versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What the `[sip] tls` listeners present: one config for every client
/// and, with `[tls] ca`, one that demands a client certificate it verifies
/// (used for trunks with `tls_verify_client`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub plain: Arc<ServerConfig>,
    pub mutual: Option<Arc<ServerConfig>>,
}

/// Builds the listener side from `[tls] cert`, `key` and optional `ca`.
pub fn server(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<ServerTls, TlsError> {
    let chain = read_certs("[tls] cert", cert)?;
    let key_der = read_key("[tls] key", key)?;
    let builder = || {
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Other(format!("TLS protocol versions: {e}")))
    };
    let mismatch =
        |e: rustls::Error| file_err("[tls] key", key, format!("does not fit [tls] cert: {e}"));
    let plain = builder()?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key_der.clone_key())
        .map_err(mismatch)?;
    let mutual = match ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("[tls] ca", ca)?),
                provider(),
            )
            .build()
            .map_err(|e| file_err("[tls] ca", ca, format!("cannot verify clients: {e}")))?;
            Some(Arc::new(
                builder()?
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain, key_der)
                    .map_err(mismatch)?,
            ))
        }
        None => None,
    };
    Ok(ServerTls {
        plain: Arc::new(plain),
        mutual,
    })
}

/// How to open TLS towards one peer: its client config (roots, client
/// certificate) and the name its certificate must carry (also the SNI).
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// Builds a peer's client side: roots from its `tls_ca`, else
/// `default_ca` (`[tls] ca`), else the system; its client certificate if
/// set; the name from `tls_server_name`, else the target's address (an IP
/// name sends no SNI, RFC 6066 §3, and is matched against IP SANs).
pub fn client(
    peer: &PeerTlsConfig,
    default_ca: Option<&Path>,
    target: IpAddr,
) -> Result<ClientTls, TlsError> {
    let roots = match (&peer.ca, default_ca) {
        (Some(ca), _) => roots("tls_ca", ca)?,
        (None, Some(ca)) => roots("[tls] ca", ca)?,
        (None, None) => system_roots()?,
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Other(format!("server verifier: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Other(format!("TLS protocol versions: {e}")))?
        .with_webpki_verifier(verifier);
    let config = match (&peer.cert, &peer.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs("tls_cert", cert)?, read_key("tls_key", key)?)
            .map_err(|e| file_err("tls_key", key, format!("does not fit tls_cert: {e}")))?,
        _ => builder.with_no_client_auth(),
    };
    let server_name = match &peer.server_name {
        Some(n) => ServerName::try_from(n.clone()).map_err(|_| {
            TlsError::Other(format!(
                "tls_server_name {n:?} is not a DNS name or IP address"
            ))
        })?,
        None => ServerName::IpAddress(target.into()),
    };
    Ok(ClientTls {
        config: Arc::new(config),
        server_name,
    })
}

/// The `result` label of a failed handshake (one of
/// `crate::metrics::TLS_HANDSHAKE_RESULTS`).
pub fn failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::UnknownIssuer => "unknown_issuer",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidForName | C::NotValidForNameContext { .. } => "bad_name",
            _ => "bad_certificate",
        },
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(rustls::Error::AlertReceived(_)) => "alert",
        Some(
            rustls::Error::PeerIncompatible(_)
            | rustls::Error::InappropriateHandshakeMessage { .. },
        ) => "incompatible",
        Some(_) => "other",
        None => match err.kind() {
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => "closed",
            _ => "other",
        },
    }
}

/// `notBefore` and `notAfter` of a DER certificate, in unix seconds
/// (RFC 5280 §4.1: Certificate > TBSCertificate > [version] serial
/// signature issuer validity).
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (_, validity, _) = tlv(rest)?;
    let (t1, nb, r) = tlv(validity)?;
    let (t2, na, _) = tlv(r)?;
    Some((der_time(t1, nb)?, der_time(t2, na)?))
}

/// One DER tag-length-value: (tag, contents, what follows).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut l = 0usize;
        for i in 0..n {
            l = (l << 8) | usize::from(*b.get(2 + i)?);
        }
        (l, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, b.get(head..end)?, b.get(end..)?))
}

/// A UTCTime (tag 0x17, `YYMMDDHHMMSSZ`) or GeneralizedTime (0x18,
/// `YYYYMMDDHHMMSSZ`) in unix seconds.
fn der_time(tag: u8, s: &[u8]) -> Option<i64> {
    let num = |b: &[u8]| -> Option<i64> {
        b.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let (year, rest) = match tag {
        0x17 if s.len() == 13 => {
            let y = num(&s[..2])?;
            (if y >= 50 { 1900 + y } else { 2000 + y }, &s[2..])
        }
        0x18 if s.len() == 15 => (num(&s[..4])?, &s[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let (mo, d, h, mi, se) = (
        num(&rest[0..2])?,
        num(&rest[2..4])?,
        num(&rest[4..6])?,
        num(&rest[6..8])?,
        num(&rest[8..10])?,
    );
    // Days from civil (H. Hinnant's algorithm).
    let y = if mo <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se)
}

fn rfc3339(secs: i64) -> String {
    crate::clock::rfc3339(secs.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_valid(
        from: (i32, u8, u8),
        until: (i32, u8, u8),
    ) -> rcgen::CertifiedKey<rcgen::KeyPair> {
        let mut p = rcgen::CertificateParams::new(vec!["sip.test".to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        rcgen::CertifiedKey {
            cert,
            signing_key: key,
        }
    }

    #[test]
    fn reads_the_validity_of_a_der_certificate() {
        let c = cert_valid((2020, 1, 2), (2049, 12, 31));
        let (nb, na) = validity(c.cert.der()).unwrap();
        assert_eq!(nb, 1_577_923_200, "2020-01-02T00:00:00Z");
        assert_eq!(na, 2_524_521_600, "2049-12-31T00:00:00Z");
        // 2050 and later is a GeneralizedTime.
        let c = cert_valid((2020, 1, 2), (2051, 3, 1));
        assert_eq!(validity(c.cert.der()).unwrap().1, 2_561_241_600);
        assert_eq!(validity(b"\x30\x03\x02\x01"), None);
    }

    #[test]
    fn refuses_expired_missing_and_mismatched_material() {
        let dir = tempfile::tempdir().unwrap();
        let old = cert_valid((2001, 1, 1), (2002, 1, 1));
        let good = cert_valid((2020, 1, 1), (2090, 1, 1));
        let other = rcgen::KeyPair::generate().unwrap();
        let w = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let old_crt = w("old.crt", old.cert.pem());
        let old_key = w("old.key", old.signing_key.serialize_pem());
        let crt = w("good.crt", good.cert.pem());
        let key = w("good.key", good.signing_key.serialize_pem());
        let wrong = w("wrong.key", other.serialize_pem());
        let empty = w("empty.crt", String::new());

        let e = server(&old_crt, &old_key, None).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "[tls] cert {}: certificate 1 expired at 2002-01-01T00:00:00",
                old_crt.display()
            )),
            "{e}"
        );
        let e = server(&crt, &wrong, None).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "[tls] key {}: does not fit [tls] cert",
                wrong.display()
            )),
            "{e}"
        );
        let e = server(&empty, &key, None).unwrap_err().to_string();
        assert!(e.contains("holds no CERTIFICATE block"), "{e}");
        let missing = dir.path().join("missing.crt");
        let e = server(&missing, &key, None).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("[tls] cert {}: cannot read", missing.display())),
            "{e}"
        );
        let e = server(&crt, &crt, None).unwrap_err().to_string();
        assert!(e.contains("no usable PEM private key"), "{e}");

        let ok = server(&crt, &key, Some(&crt)).unwrap();
        assert!(ok.mutual.is_some());
        assert!(server(&crt, &key, None).unwrap().mutual.is_none());

        let peer = PeerTlsConfig {
            server_name: Some("not a name!".into()),
            ca: Some(crt.clone()),
            ..Default::default()
        };
        let e = client(&peer, None, [127, 0, 0, 1].into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_server_name \"not a name!\""), "{e}");
        let peer = PeerTlsConfig {
            server_name: Some("sip.test".into()),
            ca: Some(crt.clone()),
            cert: Some(crt.clone()),
            key: Some(wrong.clone()),
            ..Default::default()
        };
        let e = client(&peer, None, [127, 0, 0, 1].into())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "tls_key {}: does not fit tls_cert",
                wrong.display()
            )),
            "{e}"
        );
    }
}
