//! Certificates made by the test (rcgen): a CA that issues server and
//! client certificates, written as PEM files; and the peers' side of TLS
//! (tokio-rustls) to talk to the sidecar with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// A test certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
    pub der: CertificateDer<'static>,
}

/// A certificate chain (leaf, then the CA) and its key.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Issued {
    /// Writes `NAME.crt` and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&crt, &self.chain_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (crt, key)
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(p, key),
        }
    }

    /// Writes the CA certificate as `NAME.crt` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.crt"));
        std::fs::write(&p, &self.pem).unwrap();
        p
    }

    /// A certificate for `names` (DNS names or IP addresses) with CN `cn`.
    pub fn issue(&self, cn: &str, names: &[&str], client: bool) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Issued {
            chain_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            chain: vec![cert.der().clone(), self.der.clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client trusting `ca`, with a client certificate if given.
pub fn connector(ca: &Ca, client_cert: Option<&Issued>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client_cert {
        Some(c) => b
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(cfg))
}

/// A TLS connection from `from_ip` (port 0) to `to`, the server's name
/// verified as `name`.
pub async fn connect_from(
    from_ip: &str,
    to: SocketAddr,
    name: &str,
    tls: &TlsConnector,
) -> std::io::Result<client::TlsStream<tokio::net::TcpStream>> {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from_ip}:0").parse().unwrap()).unwrap();
    let tcp = s.connect(to).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(super::WAIT, tls.connect(name, tcp))
        .await
        .expect("handshake within the wait")
}

/// A TLS server (a carrier) on `ip`, presenting `cert`.
pub struct TlsPeer {
    pub listener: TcpListener,
    pub acceptor: TlsAcceptor,
}

impl TlsPeer {
    pub async fn bind(ip: &str, cert: &Issued) -> TlsPeer {
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(cert.chain.clone(), cert.key.clone_key())
            .unwrap();
        TlsPeer {
            listener: TcpListener::bind(format!("{ip}:0")).await.unwrap(),
            acceptor: TlsAcceptor::from(Arc::new(cfg)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// Accepts one connection and its handshake (the error if it failed).
    pub async fn accept(&self) -> std::io::Result<server::TlsStream<tokio::net::TcpStream>> {
        let (tcp, _) = tokio::time::timeout(super::WAIT, self.listener.accept())
            .await
            .expect("the sidecar connects within the wait")
            .unwrap();
        tokio::time::timeout(super::WAIT, self.acceptor.accept(tcp))
            .await
            .expect("handshake within the wait")
    }
}

/// The leaf certificate a client connection was shown.
pub fn peer_cert(s: &client::TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
}
