//! The deployment kit fits the binary: every `sipscreen_*` series that
//! deploy/prometheus/alerts.yml and deploy/grafana/*.json select (name and
//! label matchers) is on a fresh sidecar's /metrics before any traffic,
//! counters at 0 (Prometheus' instrumentation guidelines: a series that
//! appears only with its first event makes rate() empty, not 0, and
//! alerts over it blind); every name is still there after traffic, the
//! dashboard shows every metric family the sidecar has, and the configs
//! the kit installs pass check-config.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sipscreen");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Stops the sidecar however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, pbx: SocketAddr, trunk: SocketAddr) -> std::path::PathBuf {
    std::fs::write(
        dir.join("exceptions.txt"),
        "+4915112345678; supplier\nnoreply@supplier.example; mailer\n",
    )
    .unwrap();
    let text = format!(
        r#"[sip]
udp = ["127.0.0.1:0"]
tcp = ["127.0.0.1:0"]

[pbx]
target = "{pbx}"
sources = ["127.0.0.1/32"]

[[trunk]]
name = "carrier"
target = "{trunk}"
sources = ["127.0.0.2/32"]

[screening]
exceptions_file = "{dir}/exceptions.txt"

[admin]
listen = "127.0.0.1:0"

[store]
data_dir = "{dir}/data"

# A CRM sink that is never reachable: its families must exist anyway.
[[crm.webhook]]
name = "nowhere"
url = "http://127.0.0.1:9/"

[[line]]
number = "+4930901820"
queue = ["101"]
"#,
        dir = dir.display()
    );
    let path = dir.join("sipscreen.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn wait_for(rx: &Receiver<String>, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100))
            && line.contains(what)
        {
            return line;
        }
    }
    panic!("log line {what:?} did not appear");
}

/// The address logged as `key=[addr]` or `key=Some(addr)` in the ready line.
fn logged_addr(line: &str, key: &str) -> SocketAddr {
    let rest = line
        .split(&format!("{key}="))
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"));
    let rest = rest
        .strip_prefix('[')
        .or_else(|| rest.strip_prefix("Some("))
        .unwrap_or(rest);
    let end = rest.find([']', ')', ',', ' ']).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {line:?}: {e}"))
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("admin listener accepts");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    let (head, body) = out.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

fn udp_exchange(sock: &UdpSocket, to: SocketAddr, msg: &str) {
    sock.send_to(msg.as_bytes(), to).unwrap();
}

fn recv(sock: &UdpSocket) -> String {
    let mut buf = [0u8; 65536];
    let (n, _) = sock.recv_from(&mut buf).expect("a message within 3 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Every `sipscreen_<lowercase and _>` token in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("sipscreen_") {
        let start = i + pos;
        let before_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start + "sipscreen_".len();
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        if before_ok && name.len() > "sipscreen_".len() && !name.ends_with('_') {
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

/// A label matcher of a PromQL selector.
#[derive(Debug)]
enum Op {
    Eq,
    Ne,
    Re,
    NotRe,
}

/// A series selector named in deploy/: `name{label op "value", ...}`.
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, Op, String)>,
}

/// Anchored match of the regexes the kit uses: alternatives of literals,
/// each maybe ending in `.*`. Anything else fails loudly, so a new kind of
/// pattern in deploy/ extends this rather than passing unchecked.
fn regex_matches(re: &str, v: &str) -> bool {
    re.split('|').any(|alt| {
        let (lit, open) = match alt.strip_suffix(".*") {
            Some(l) => (l, true),
            None => (alt, false),
        };
        assert!(
            lit.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "regex {re:?}: only literals, `|` and a trailing `.*` are understood here"
        );
        if open { v.starts_with(lit) } else { v == lit }
    })
}

impl Selector {
    fn matches(&self, name: &str, labels: &[(String, String)]) -> bool {
        name == self.name
            && self.matchers.iter().all(|(l, op, want)| {
                let v = labels
                    .iter()
                    .find(|(k, _)| k == l)
                    .map_or("", |(_, v)| v.as_str());
                match op {
                    Op::Eq => v == want,
                    Op::Ne => v != want,
                    Op::Re => regex_matches(want, v),
                    Op::NotRe => !regex_matches(want, v),
                }
            })
    }
}

/// `l="v", l2=~"w"` (exposition label sets too): (label, op, value).
fn parse_matchers(inner: &str) -> Vec<(String, Op, String)> {
    let mut out = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let op_at = rest
            .find(['=', '!'])
            .unwrap_or_else(|| panic!("matcher in {inner:?}"));
        let label = rest[..op_at].trim().to_string();
        let after = &rest[op_at..];
        let (op, len) = if after.starts_with("=~") {
            (Op::Re, 2)
        } else if after.starts_with("!=") {
            (Op::Ne, 2)
        } else if after.starts_with("!~") {
            (Op::NotRe, 2)
        } else {
            (Op::Eq, 1)
        };
        let after = after[len..].trim_start();
        let body = after
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("unquoted value in {inner:?}"));
        let end = body
            .find('"')
            .unwrap_or_else(|| panic!("open quote in {inner:?}"));
        out.push((label, op, body[..end].to_string()));
        rest = body[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    out
}

/// Every `sipscreen_*` selector in `text`; matchers on `instance` and
/// `job` are left out (Prometheus adds those labels when it scrapes).
fn selectors(text: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    for name in metric_names(text) {
        let mut from = 0;
        while let Some(pos) = text[from..].find(name.as_str()) {
            let end = from + pos + name.len();
            from = end;
            let next = text.as_bytes().get(end).copied();
            if next.is_some_and(|c| c.is_ascii_lowercase() || c == b'_') {
                continue; // a longer name
            }
            let matchers = match text[end..].strip_prefix('{') {
                Some(r) => parse_matchers(&r[..r.find('}').expect("closed selector")]),
                None => Vec::new(),
            };
            out.push(Selector {
                name: name.clone(),
                matchers: matchers
                    .into_iter()
                    .filter(|(l, ..)| l != "instance" && l != "job")
                    .collect(),
            });
        }
    }
    out
}

/// A label set: (label, value) pairs in order.
type Labels = Vec<(String, String)>;

/// The samples of an exposition: (name, labels, value).
fn samples(text: &str) -> Vec<(String, Labels, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                parse_matchers(l.strip_suffix('}').expect("closed labels"))
                    .into_iter()
                    .map(|(l, _, v)| (l, v))
                    .collect(),
            ),
            None => (series, Vec::new()),
        };
        let value = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        out.push((name.to_string(), labels, value));
    }
    out
}

/// deploy/prometheus/alerts.yml and every deploy/grafana/*.json, each as
/// (path, text with JSON's `\"` unescaped).
fn deploy_texts() -> Vec<(std::path::PathBuf, String)> {
    let mut files = vec![Path::new(ROOT).join("deploy/prometheus/alerts.yml")];
    let mut dashboards: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("deploy/grafana"))
        .expect("deploy/grafana")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    dashboards.sort();
    assert!(!dashboards.is_empty(), "no dashboard in deploy/grafana");
    files.extend(dashboards);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap().replace("\\\"", "\"");
            (f, text)
        })
        .collect()
}

/// What a fresh sidecar with the test config shows: 1 for the last-reload
/// gauge and for the webhook sink's connected gauge (a webhook can always
/// send), the exceptions file's one phone and one email, 0 for the rest.
fn fresh_value(name: &str, labels: &[(String, String)]) -> f64 {
    match name {
        "sipscreen_config_last_reload_ok"
        | "sipscreen_crm_connected"
        | "sipscreen_store_connected" => 1.0,
        // Every resolved target is up until something fails.
        "sipscreen_target_up" => 1.0,
        "sipscreen_exception_entries" => {
            assert!(
                labels
                    .iter()
                    .any(|(l, v)| l == "type" && (v == "phone" || v == "email"))
            );
            1.0
        }
        _ => 0.0,
    }
}

/// Before any traffic, each selector in deploy/ matches a series at its
/// fresh value (counters and histograms 0).
fn assert_fresh(exposition: &str) {
    let samples = samples(exposition);
    let mut checked = 0;
    for (file, text) in deploy_texts() {
        for sel in selectors(&text) {
            let hits: Vec<_> = samples
                .iter()
                .filter(|(n, l, _)| sel.matches(n, l))
                .collect();
            assert!(
                !hits.is_empty(),
                "{}: {sel:?} selects nothing on a fresh sidecar:\n{exposition}",
                file.display()
            );
            for (n, l, v) in hits {
                assert_eq!(*v, fresh_value(n, l), "{n}{l:?} on a fresh sidecar");
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} selectors found in deploy/");
}

/// (sample names, family names from `# TYPE`) of a Prometheus exposition.
fn exposition(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                families.insert(name.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    (samples, families)
}

#[test]
fn deploy_kit_names_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    pbx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let trunk = UdpSocket::bind("127.0.0.2:0").unwrap();
    trunk
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let stranger = UdpSocket::bind("127.0.0.3:0").unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let path = write_config(
        dir.path(),
        pbx.local_addr().unwrap(),
        trunk.local_addr().unwrap(),
    );

    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let running = Running(child);
    let (tx, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = wait_for(&logs, "sipscreen ready");
    let sip_udp = logged_addr(&ready, "udp");
    let sip_tcp = logged_addr(&ready, "tcp");
    let admin = logged_addr(&ready, "admin");

    // No traffic yet: every series the kit selects is there, at 0.
    assert_fresh(&http_get(admin, "/metrics"));

    // An inbound call: messages, calls screened, screening time.
    let me = trunk.local_addr().unwrap();
    udp_exchange(
        &trunk,
        sip_udp,
        &format!(
            "INVITE sip:+4930901820@{sip_udp} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-dm1\r\nMax-Forwards: 70\r\nFrom: <sip:+4915112345678@carrier.example>;tag=dm1\r\nTo: <sip:+4930901820@carrier.example>\r\nCall-ID: deploy-metrics-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ),
    );
    let forwarded = recv(&pbx);
    assert!(
        forwarded.contains("X-CRM-Verdict: exception"),
        "{forwarded}"
    );

    // A stranger is refused: an error counted.
    let st = stranger.local_addr().unwrap();
    udp_exchange(
        &stranger,
        sip_udp,
        &format!(
            "OPTIONS sip:{sip_udp} SIP/2.0\r\nVia: SIP/2.0/UDP {st};branch=z9hG4bK-dm2\r\nMax-Forwards: 70\r\nFrom: <sip:x@stranger.example>;tag=dm2\r\nTo: <sip:{sip_udp}>\r\nCall-ID: deploy-metrics-2\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ),
    );
    assert!(recv(&stranger).starts_with("SIP/2.0 403"));

    // A refused reload: the reload counter and the last-reload gauge.
    std::fs::write(&path, "[pbx\nbroken").unwrap();
    let ok = Command::new("kill")
        .args(["-HUP", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_for(&logs, "config reload refused");

    // An open TCP connection.
    let _tcp = TcpStream::connect(sip_tcp).unwrap();

    let text = http_get(admin, "/metrics");
    let (samples, families) = exposition(&text);

    let mut used = BTreeSet::new();
    let texts = deploy_texts();
    for (file, text) in &texts {
        let names = metric_names(text);
        assert!(
            !names.is_empty(),
            "{} names no sipscreen_* metric",
            file.display()
        );
        used.extend(names);
    }

    let missing: Vec<_> = used.iter().filter(|n| !samples.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}\nexported series: {samples:?}\n{text}"
    );

    // Every family the sidecar exports is on the dashboard (counters and
    // histograms under their sample names: _total, _bucket, _sum, _count).
    let mut on_dashboard = BTreeSet::new();
    for (_, text) in texts
        .iter()
        .filter(|(f, _)| f.extension().is_some_and(|x| x == "json"))
    {
        on_dashboard.extend(metric_names(text));
    }
    let sipscreen_families: Vec<_> = families
        .iter()
        .filter(|f| f.starts_with("sipscreen_"))
        .collect();
    assert!(
        sipscreen_families.len() >= 2,
        "too few families parsed from\n{text}"
    );
    for f in sipscreen_families {
        assert!(
            on_dashboard.iter().any(|n| n == f
                || n.strip_prefix(f.as_str())
                    .is_some_and(|s| s.starts_with('_'))),
            "metric family {f} is not on any dashboard"
        );
    }
}

#[test]
fn metric_names_are_tokens() {
    let names = metric_names(
        "expr: rate(sipscreen_sip_errors_total{reason!=\"x\"}[5m]) / up{job=\"sipscreen\"} my_sipscreen_x sipscreen_ sipscreen_tcp_connections",
    );
    let want: BTreeSet<String> = ["sipscreen_sip_errors_total", "sipscreen_tcp_connections"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, want);
}

#[test]
fn selectors_and_their_matchers() {
    let sels = selectors(
        "sum(rate(sipscreen_sip_errors_total{reason!=\"forbidden_source\", instance=~\"$instance\"}[5m])) / sipscreen_sip_messages_total + sipscreen_sip_errors_total{reason=~\"send_.*|tcp_connect\",kind=\"x\"}",
    );
    let shown: Vec<String> = sels.iter().map(|s| format!("{s:?}")).collect();
    assert_eq!(sels.len(), 3, "{shown:?}");
    let labels = |r: &str| {
        vec![
            ("reason".to_string(), r.to_string()),
            ("kind".to_string(), "x".to_string()),
        ]
    };
    let errors: Vec<&Selector> = sels
        .iter()
        .filter(|s| s.name == "sipscreen_sip_errors_total")
        .collect();
    assert_eq!(errors.len(), 2, "{shown:?}");
    let ne = errors.iter().find(|s| s.matchers.len() == 1).unwrap();
    assert!(ne.matches("sipscreen_sip_errors_total", &labels("loop")));
    assert!(!ne.matches("sipscreen_sip_errors_total", &labels("forbidden_source")));
    assert!(!ne.matches("sipscreen_sip_messages_total", &labels("loop")));
    let re = errors.iter().find(|s| s.matchers.len() == 2).unwrap();
    for (r, want) in [
        ("send_udp", true),
        ("tcp_connect", true),
        ("tcp_connects", false),
        ("loop", false),
    ] {
        assert_eq!(
            re.matches("sipscreen_sip_errors_total", &labels(r)),
            want,
            "{r}"
        );
    }
    let got = samples("sipscreen_x_total{a=\"1\",b=\"two\"} 0\n# HELP y\nsipscreen_y 2.5\n");
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        got,
        vec![
            (
                "sipscreen_x_total".to_string(),
                vec![pair("a", "1"), pair("b", "two")],
                0.0
            ),
            ("sipscreen_y".to_string(), vec![], 2.5),
        ]
    );
}

/// The configs the kit installs (systemd host, container) pass
/// `check-config`, with their /etc/sipscreen/ paths moved to a temp dir.
#[test]
fn shipped_deploy_configs_pass_check_config() {
    for rel in [
        "deploy/systemd/sipscreen.toml",
        "deploy/docker/sipscreen.toml",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap();
        assert!(text.contains("/etc/sipscreen/exceptions.txt"), "{rel}");
        let text = text.replace("/etc/sipscreen/", &format!("{}/", dir.path().display()));
        std::fs::copy(
            Path::new(ROOT).join("deploy/docker/exceptions.txt"),
            dir.path().join("exceptions.txt"),
        )
        .unwrap();
        let path = dir.path().join("sipscreen.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{rel}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
