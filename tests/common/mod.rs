//! Test harness: a real sidecar (in-process, real sockets on loopback
//! ephemeral ports) between a fake trunk on 127.0.0.2 and a fake PBX on
//! 127.0.0.1, plus a stranger on 127.0.0.3. Linux routes all of 127/8 to
//! loopback, so the three have distinct source addresses.
#![allow(dead_code)]

pub mod api;
pub mod binary;
pub mod crm;
pub mod pg;
pub mod tls;
pub mod tools;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sipscreen::server::Server;
use sipscreen::shutdown::{self, Trigger};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

pub const WAIT: Duration = Duration::from_secs(3);

/// A running sidecar with its peers.
pub struct Harness {
    pub server: Arc<Server>,
    pub trigger: Trigger,
    pub trunk: UdpSocket,
    pub pbx: UdpSocket,
    pub stranger: UdpSocket,
    /// PBX TCP listener (used when the config says transport = "tcp").
    pub pbx_tcp: TcpListener,
    pub sip_udp: SocketAddr,
    pub sip_tcp: SocketAddr,
    /// The TLS listener, when the config has one.
    pub sip_tls: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub task: tokio::task::JoinHandle<()>,
}

/// The config the harness writes; `{PBX}`, `{PBX_TCP}`, `{TRUNK}` and
/// `{DIR}` are filled in.
pub const BASE_CONFIG: &str = r#"
[sip]
udp = ["127.0.0.1:0"]
tcp = ["127.0.0.1:0"]

[pbx]
target = "{PBX}"
transport = "{PBX_TRANSPORT}"
sources = ["127.0.0.1/32"]

[[trunk]]
name = "carrier"
target = "{TRUNK}"
sources = ["127.0.0.2/32"]
trust_pai = true

[screening]
default_region = "DE"
anonymous = "log"
exceptions_file = "{DIR}/exceptions.txt"

[admin]
listen = "127.0.0.1:0"

[[admin.tokens]]
name = "ops"
role = "edit"
sha256 = "6fc8433e3bb906f1590e7ef545948de2540f6ae2b5bcf1656cf1f03126afa987"    # edit-token

[[admin.tokens]]
name = "crm-viewer"
role = "view"
sha256 = "5e17bb983b1ff3b4acbcaa8451a4173faa5575c682e7cf8615e2ed5e50fad7bd"    # view-token

[store]
data_dir = "{DIR}/data"

[defaults]
create = "auto"
create_for = "all"
crm_mode = "classic"
source = "CALL"

[[line]]
number = "+4930901820"
create = "offer"
source = "ADVERTISING"
queue = ["101", "102"]
forward_to_responsible = true
change_responsible_on_transfer = true

[[line]]
number = "030 901821"
crm_mode = "simple"
create_for = "incoming"
source = "WEB"
"#;

pub const EXCEPTIONS: &str = "# listed numbers\n+4915112345678; our supplier\n0049 30 1234567; national written internationally\n030 7654321; national form\nboss@example.com; e-mail\n";

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with("udp", "").await
    }

    /// Starts with `admin` TOML lines added to the `[admin]` table.
    pub async fn start_with_admin(admin: &str) -> Harness {
        Self::start_full("udp", admin, "", "").await
    }

    /// Starts with `sip` TOML lines added to the `[sip]` table.
    pub async fn start_with_sip(sip: &str) -> Harness {
        Self::start_full("udp", "", sip, "").await
    }

    /// Starts with the PBX reached over `pbx_transport` and `extra` TOML
    /// appended to the base config.
    pub async fn start_with(pbx_transport: &str, extra: &str) -> Harness {
        Self::start_full(pbx_transport, "", "", extra).await
    }

    async fn start_full(pbx_transport: &str, admin: &str, sip: &str, extra: &str) -> Harness {
        Self::start_edited(pbx_transport, admin, sip, extra, |t, _| t).await
    }

    /// As `start_with`, the config text passed through `edit` (with the
    /// harness's directory) before it is written.
    pub async fn start_edited(
        pbx_transport: &str,
        admin: &str,
        sip: &str,
        extra: &str,
        edit: impl FnOnce(String, &std::path::Path) -> String,
    ) -> Harness {
        let trunk = UdpSocket::bind("127.0.0.2:0").await.expect("bind trunk");
        let pbx = UdpSocket::bind("127.0.0.1:0").await.expect("bind pbx");
        let stranger = UdpSocket::bind("127.0.0.3:0").await.expect("bind stranger");
        let pbx_tcp = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind pbx tcp");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("exceptions.txt"), EXCEPTIONS).unwrap();
        let pbx_target = if pbx_transport == "tcp" {
            pbx_tcp.local_addr().unwrap()
        } else {
            pbx.local_addr().unwrap()
        };
        let text = BASE_CONFIG
            .replace("{PBX}", &pbx_target.to_string())
            .replace("{PBX_TRANSPORT}", pbx_transport)
            .replace("{TRUNK}", &trunk.local_addr().unwrap().to_string())
            .replace("{DIR}", dir.path().to_str().unwrap())
            .replace(
                "listen = \"127.0.0.1:0\"\n",
                &format!("listen = \"127.0.0.1:0\"\n{admin}"),
            )
            .replace(
                "tcp = [\"127.0.0.1:0\"]\n",
                &format!("tcp = [\"127.0.0.1:0\"]\n{sip}"),
            )
            + extra;
        let text = edit(text, dir.path());
        let config_path = dir.path().join("sipscreen.toml");
        std::fs::write(&config_path, text).unwrap();
        let bound = Server::bind(&config_path).await.expect("server starts");
        let server = bound.server.clone();
        let (trigger, sd) = shutdown::channel();
        let task = tokio::spawn(bound.run(sd));
        Harness {
            sip_udp: server.udp[0],
            sip_tcp: server.tcp[0],
            sip_tls: server.tls.first().copied(),
            server,
            trigger,
            trunk,
            pbx,
            stranger,
            pbx_tcp,
            dir,
            config_path,
            task,
        }
    }

    /// Our host:port as the proxy writes it in Via / Record-Route (UDP).
    pub fn me(&self) -> String {
        self.sip_udp.to_string()
    }

    /// Sends an INVITE from the trunk (see [`invite`]) and waits for what
    /// the PBX receives: (sent, received, received from).
    pub async fn invite_from_trunk(
        &self,
        caller: &str,
        ruri: &str,
        call_id: &str,
        extra: &str,
    ) -> (String, String, SocketAddr) {
        let inv = invite(
            self.sip_udp,
            self.trunk.local_addr().unwrap(),
            ruri,
            caller,
            call_id,
            extra,
        );
        self.trunk
            .send_to(inv.as_bytes(), self.sip_udp)
            .await
            .unwrap();
        let (got, from) = recv(&self.pbx).await;
        (inv, got, from)
    }

    /// Asserts that nothing the proxy was handed before now reaches the
    /// PBX: an OPTIONS probe sent from the trunk must be the next datagram
    /// the PBX gets. With one UDP receiver the proxy handles datagrams in
    /// arrival order, so anything it forwarded earlier would come first: a
    /// condition to wait on, not a quiet period of some milliseconds.
    pub async fn nothing_more_at_pbx(&self) {
        probe(&self.trunk, &self.pbx, self.sip_udp).await;
    }

    /// The same for the trunk, with a probe from the PBX.
    pub async fn nothing_more_at_trunk(&self) {
        probe(&self.pbx, &self.trunk, self.sip_udp).await;
    }

    pub async fn stop(self) {
        self.trigger.fire();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the server stops within the wait")
            .expect("the server task ends without panic");
    }
}

/// Receives one datagram or fails the test after `WAIT`.
pub async fn recv(sock: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 70000];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("a message within the wait")
        .expect("recv");
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

/// Receives raw bytes of one datagram.
pub async fn recv_bytes(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 70000];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("a message within the wait")
        .expect("recv");
    buf.truncate(n);
    buf
}

/// Sends an OPTIONS from `from` through the proxy and asserts it is the
/// next thing `at` receives.
async fn probe(from: &UdpSocket, at: &UdpSocket, proxy: SocketAddr) {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!(
        "probe-{}",
        PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let msg = format!(
        "OPTIONS sip:+4917000000000@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-{id}\r\nMax-Forwards: 70\r\nFrom: <sip:+4930901820@probe>;tag=p\r\nTo: <sip:+4917000000000@probe>\r\nCall-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        from.local_addr().unwrap()
    );
    from.send_to(msg.as_bytes(), proxy).await.unwrap();
    let (got, _) = recv(at).await;
    assert_eq!(
        header(&got, "Call-ID").as_deref(),
        Some(id.as_str()),
        "expected nothing before the probe, got:\n{got}"
    );
}

/// Asserts nothing arrives on `sock` for `ms` milliseconds (only where
/// arrival order says nothing: several receivers, or a stranger's socket).
pub async fn nothing(sock: &UdpSocket, ms: u64) {
    let mut buf = vec![0u8; 70000];
    if let Ok(Ok((n, from))) =
        tokio::time::timeout(Duration::from_millis(ms), sock.recv_from(&mut buf)).await
    {
        panic!(
            "expected nothing, got from {from}:\n{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}

/// Reads one SIP message (headers + Content-Length body) from a stream.
pub async fn read_sip<S: AsyncRead + Unpin>(stream: &mut S, pending: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = find(pending, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let cl = header(&format!("{head}\r\n"), "Content-Length")
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if pending.len() >= end + 4 + cl {
                let msg: Vec<u8> = pending.drain(..end + 4 + cl).collect();
                return String::from_utf8_lossy(&msg).into_owned();
            }
        }
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("data within the wait")
            .expect("read");
        assert!(n > 0, "connection closed while waiting for a message");
        pending.extend_from_slice(&buf[..n]);
    }
}

pub async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) {
    stream.write_all(data).await.expect("write");
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// The value of the first header `name` (case-insensitive), if present.
pub fn header(msg: &str, name: &str) -> Option<String> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Every header line of `msg`, in order (start line excluded).
pub fn header_lines(msg: &str) -> Vec<String> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n").skip(1).map(str::to_string).collect()
}

/// Every value of header `name` (each line; not comma-split).
pub fn headers(msg: &str, name: &str) -> Vec<String> {
    header_lines(msg)
        .into_iter()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// An INVITE as a trunk would send it.
pub fn invite(
    to_sidecar: SocketAddr,
    from_addr: SocketAddr,
    ruri_user: &str,
    caller: &str,
    call_id: &str,
    extra: &str,
) -> String {
    let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:{ruri_user}@{to_sidecar} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from_addr};branch=z9hG4bK-{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: \"Caller\" <sip:{caller}@carrier.example>;tag=f-{call_id}\r\n\
         To: <sip:{ruri_user}@carrier.example>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:{caller}@{from_addr}>\r\n\
         {extra}\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A response built from a received request (copying Via, From, To,
/// Call-ID, CSeq, Record-Route), with `to_tag` added to To.
pub fn response_to(req: &str, code: u16, reason: &str, to_tag: &str, contact: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in header_lines(req) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" | "record-route" => {
                out.push_str(&line);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(&line);
                if !to_tag.is_empty() {
                    out.push_str(&format!(";tag={to_tag}"));
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    if !contact.is_empty() {
        out.push_str(&format!("Contact: <{contact}>\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// Re-parses `msg` with rsip, an independent parser: panics if it fails.
pub fn rsip_parses(msg: &[u8]) {
    if let Err(e) = rsip::SipMessage::try_from(msg) {
        panic!(
            "rsip refuses what we emitted: {e:?}\n{}",
            String::from_utf8_lossy(msg)
        );
    }
}

/// A fake trunk (127.0.0.2) and PBX (127.0.0.1) for a real binary, on
/// ephemeral UDP ports, reads timing out after 5 s; test files add their
/// call helpers in `impl Peers` blocks of their own.
pub struct Peers {
    pub trunk: std::net::UdpSocket,
    pub pbx: std::net::UdpSocket,
}

impl Peers {
    pub fn new() -> Peers {
        let trunk = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        let pbx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&trunk, &pbx] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        Peers { trunk, pbx }
    }
}
