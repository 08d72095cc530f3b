//! The CLI's API client: `sipscreen exceptions …` and `sipscreen screen`
//! talk to a running sidecar's admin API (`--api`, token from `--token`
//! or `SIPSCREEN_TOKEN`). Errors come back in plain words with an exit
//! code: 1 refused by the API, 3 not reachable, 4 import with refused
//! lines.

use std::io::Read;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::Value;

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    fn new(code: u8, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }
}

/// Where the API is and who we are.
pub struct Api {
    base: String,
    token: Option<String>,
    http: Client,
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Result<Api, CliError> {
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(None)
            .build()
            .map_err(|e| CliError::new(3, format!("cannot set up HTTP: {e}")))?;
        Ok(Api {
            base: format!("{}/api/v1", base.trim_end_matches('/')),
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    fn req(&self, r: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn send(&self, r: RequestBuilder) -> Result<Value, CliError> {
        let resp = self.req(r).send().map_err(|e| self.unreachable(e))?;
        answer(resp)
    }

    fn unreachable(&self, e: reqwest::Error) -> CliError {
        CliError::new(
            3,
            format!(
                "cannot reach the sipscreen API at {}: {}",
                self.base,
                crate::error_chain(&e)
            ),
        )
    }

    /// `exceptions list`
    pub fn list(&self, query: &[(&str, String)], all: bool, json: bool) -> Result<(), CliError> {
        let mut cursor: Option<String> = None;
        let mut rows: Vec<Value> = Vec::new();
        loop {
            let mut q: Vec<(&str, String)> = query.to_vec();
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page = self.send(self.http.get(format!("{}/exceptions", self.base)).query(&q))?;
            rows.extend(page["items"].as_array().cloned().unwrap_or_default());
            cursor = page["next_cursor"].as_str().map(str::to_string);
            if !all || cursor.is_none() {
                break;
            }
        }
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            );
            return Ok(());
        }
        let cols = [
            "type",
            "match",
            "action",
            "value",
            "comment",
            "origin",
            "created_at",
            "created_by",
            "expires_at",
        ];
        let cell = |r: &Value, c: &str| match &r[c] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        };
        let widths: Vec<usize> = cols
            .iter()
            .map(|c| {
                rows.iter()
                    .map(|r| cell(r, c).chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(c.len())
            })
            .collect();
        let line = |vals: Vec<String>| {
            let parts: Vec<String> = vals
                .iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect();
            println!("{}", parts.join("  ").trim_end());
        };
        line(cols.iter().map(|c| c.to_uppercase()).collect());
        for r in &rows {
            line(cols.iter().map(|c| cell(r, c)).collect());
        }
        if cursor.is_some() {
            eprintln!("(more entries: use --all or a narrower filter)");
        }
        Ok(())
    }

    /// `exceptions add` (`allow`: an allow entry; `large`: a range over
    /// `[screening] max_range_numbers` is meant).
    pub fn add(
        &self,
        value: &str,
        comment: &str,
        allow: bool,
        large: bool,
    ) -> Result<(), CliError> {
        let action = if allow { "allow" } else { "block" };
        let body = serde_json::json!({
            "value": value, "comment": comment, "action": action, "large": large,
        });
        let v = self.send(
            self.http
                .post(format!("{}/exceptions", self.base))
                .json(&body),
        )?;
        let values: Vec<&str> = v["values"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if values.len() > 1 {
            println!(
                "{value}: {} prefixes ({} added, {} updated)",
                values.len(),
                v["added"].as_u64().unwrap_or(0),
                v["updated"].as_u64().unwrap_or(0)
            );
            return Ok(());
        }
        let what = if v["added"].as_u64() == Some(1) {
            "added"
        } else if v["updated"].as_u64() == Some(1) {
            "updated"
        } else {
            "already listed"
        };
        println!("{}: {what}", values.first().copied().unwrap_or(value));
        Ok(())
    }

    /// `exceptions remove`
    pub fn remove(&self, value: &str) -> Result<(), CliError> {
        let url = reqwest::Url::parse(&format!("{}/exceptions/", self.base))
            .and_then(|u| u.join(&urlencode(value)))
            .map_err(|e| CliError::new(2, format!("bad --api URL: {e}")))?;
        let v = self.send(self.http.delete(url))?;
        if let Some(all) = v["removed"].as_array() {
            println!("removed {value}: {} prefixes", all.len());
            return Ok(());
        }
        println!(
            "removed {} ({})",
            v["value"].as_str().unwrap_or(value),
            v["comment"].as_str().unwrap_or("")
        );
        Ok(())
    }

    /// `exceptions import FILE|-`: streams the file with a progress bar.
    pub fn import(&self, file: &str) -> Result<(), CliError> {
        let (reader, size): (Box<dyn Read + Send>, Option<u64>) = if file == "-" {
            (Box::new(std::io::stdin()), None)
        } else {
            let f =
                std::fs::File::open(file).map_err(|e| CliError::new(1, format!("{file}: {e}")))?;
            let size = f.metadata().ok().map(|m| m.len());
            (Box::new(f), size)
        };
        let bar = match size {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {bytes} sent {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        let body = reqwest::blocking::Body::new(bar.wrap_read(reader));
        let resp = self
            .req(
                self.http
                    .post(format!("{}/exceptions/import", self.base))
                    .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                    .body(body),
            )
            .send()
            .map_err(|e| self.unreachable(e));
        bar.finish_and_clear();
        let v = answer_allow_partial(resp?)?;
        println!(
            "{} line(s) read: {} added, {} updated, {} unchanged, {} refused",
            v["lines"], v["added"], v["updated"], v["unchanged"], v["refused"]
        );
        for r in v["refused_lines"].as_array().into_iter().flatten() {
            eprintln!(
                "line {}: {} ({})",
                r["line"],
                r["reason"].as_str().unwrap_or(""),
                r["text"].as_str().unwrap_or("")
            );
        }
        let listed = v["refused_lines"].as_array().map_or(0, Vec::len) as u64;
        let refused = v["refused"].as_u64().unwrap_or(0);
        if refused > listed {
            eprintln!("… and {} more refused line(s)", refused - listed);
        }
        if let Some(e) = v["error"].as_str() {
            return Err(CliError::new(1, format!("import stopped: {e}")));
        }
        if refused > 0 {
            return Err(CliError::new(4, format!("{refused} line(s) refused")));
        }
        Ok(())
    }

    /// `contacts import FILE` (`.json`: a JSON array; else CSV).
    pub fn contacts_import(&self, file: &str) -> Result<(), CliError> {
        let body = std::fs::read(file).map_err(|e| CliError::new(1, format!("{file}: {e}")))?;
        let ctype = if file.ends_with(".json") {
            "application/json"
        } else {
            "text/csv"
        };
        let v = self.send(
            self.http
                .post(format!("{}/contacts", self.base))
                .header(reqwest::header::CONTENT_TYPE, ctype)
                .body(body),
        )?;
        println!("{} added, {} updated", v["added"], v["updated"]);
        let refused = v["refused"].as_array().cloned().unwrap_or_default();
        for r in &refused {
            eprintln!(
                "row {}: {} ({})",
                r["row"],
                r["reason"].as_str().unwrap_or(""),
                r["text"].as_str().unwrap_or("")
            );
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(CliError::new(
                4,
                format!("{} row(s) refused", refused.len()),
            ))
        }
    }

    /// `contacts list`
    pub fn contacts_list(&self, user: Option<&str>, json: bool) -> Result<(), CliError> {
        let mut q = vec![("limit", "1000".to_string())];
        if let Some(u) = user {
            q.push(("user", u.to_string()));
        }
        let v = self.send(self.http.get(format!("{}/contacts", self.base)).query(&q))?;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&items).unwrap_or_default()
            );
        } else {
            println!("{:<18}  {:<12}  EXTENSION", "CLIENT", "USER_ID");
            for c in &items {
                println!(
                    "{:<18}  {:<12}  {}",
                    c["client"].as_str().unwrap_or(""),
                    c["user_id"].as_str().unwrap_or(""),
                    c["extension"].as_str().unwrap_or("")
                );
            }
        }
        Ok(())
    }

    /// `contacts remove CLIENT`
    pub fn contacts_remove(&self, client: &str) -> Result<(), CliError> {
        let url = format!("{}/contacts/{}", self.base, urlencode(client));
        let resp = self
            .req(self.http.delete(url))
            .send()
            .map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            println!("removed {client}");
            Ok(())
        } else {
            let (status, v) = body_of(resp)?;
            Err(error_of(status, &v))
        }
    }

    /// `screen NUMBER --line L --direction D`
    pub fn screen(
        &self,
        number: &str,
        line: &str,
        direction: &str,
        json: bool,
    ) -> Result<(), CliError> {
        let body = serde_json::json!({ "number": number, "line": line, "direction": direction });
        let v = self.send(self.http.post(format!("{}/screen", self.base)).json(&body))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            println!("verdict: {}", v["verdict"].as_str().unwrap_or("?"));
            for (k, t) in v["tags"].as_object().into_iter().flatten() {
                println!("{k}: {}", t.as_str().unwrap_or(""));
            }
        }
        Ok(())
    }
}

impl Api {
    /// `crm status`
    pub fn crm_status(&self, json: bool) -> Result<(), CliError> {
        let v = self.send(self.http.get(format!("{}/crm", self.base)))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return Ok(());
        }
        for s in v.as_array().into_iter().flatten() {
            let name = s["name"].as_str().unwrap_or("");
            if s["connected"].as_bool() == Some(true) {
                println!(
                    "{name}: connected (member_id {}, {}), {} event(s) queued",
                    s["member_id"].as_str().unwrap_or("?"),
                    s["domain"].as_str().unwrap_or("?"),
                    s["queued"]
                );
            } else {
                println!(
                    "{name}: NOT CONNECTED, {} event(s) queued: run `sipscreen crm bitrix24 connect --sink {name}`",
                    s["queued"]
                );
            }
            let l = &s["lines"];
            if l.is_object() {
                let list = |k: &str| {
                    l[k].as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                };
                println!(
                    "  lines synced {}: added [{}], updated [{}], {} unchanged{}",
                    l["at"].as_str().unwrap_or(""),
                    list("added"),
                    list("updated"),
                    l["unchanged"],
                    l["error"]
                        .as_str()
                        .map(|e| format!(", error: {e}"))
                        .unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    /// `crm bitrix24 connect --sink NAME [--code CODE]`: prints the
    /// authorize URL, reads the code (or the whole redirect URL) from
    /// stdin unless given, and has the sidecar exchange it.
    pub fn bitrix24_connect(&self, sink: &str, code: Option<String>) -> Result<(), CliError> {
        let url = format!("{}/crm/{}/connect", self.base, urlencode(sink));
        let code = match code {
            Some(c) => c,
            None => {
                let v = self.send(self.http.get(&url))?;
                eprintln!(
                    "1. Open this address in a browser, signed in to the portal as an administrator:\n\n   {}\n\n2. The portal redirects to the application's handler; paste the `code` parameter of that address (or the whole address) here, within 30 seconds:",
                    v["authorize_url"].as_str().unwrap_or("?")
                );
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| CliError::new(1, format!("reading the code: {e}")))?;
                line
            }
        };
        let code = code_of(code.trim());
        if code.is_empty() {
            return Err(CliError::new(1, "no code given"));
        }
        let v = self.send(
            self.http
                .post(&url)
                .json(&serde_json::json!({ "code": code })),
        )?;
        println!(
            "{sink}: connected to member_id {} ({})",
            v["member_id"].as_str().unwrap_or("?"),
            v["domain"].as_str().unwrap_or("?")
        );
        Ok(())
    }
}

/// The code itself, from a code or a pasted redirect URL (`…?code=X&…`).
fn code_of(s: &str) -> String {
    match s.split_once('?') {
        Some((_, q)) => url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default(),
        None => s.to_string(),
    }
}

fn error_of(status: reqwest::StatusCode, v: &Value) -> CliError {
    let msg = v["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string());
    let hint = match status.as_u16() {
        401 => " (pass --token or set SIPSCREEN_TOKEN)",
        _ => "",
    };
    CliError::new(1, format!("the API refused ({status}): {msg}{hint}"))
}

fn body_of(resp: Response) -> Result<(reqwest::StatusCode, Value), CliError> {
    let status = resp.status();
    let text = resp
        .text()
        .map_err(|e| CliError::new(3, format!("reading the answer: {e}")))?;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, v))
}

fn answer(resp: Response) -> Result<Value, CliError> {
    let (status, v) = body_of(resp)?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(error_of(status, &v))
    }
}

/// Import answers carry counts even when the import stopped early.
fn answer_allow_partial(resp: Response) -> Result<Value, CliError> {
    let (status, v) = body_of(resp)?;
    if status.is_success() || v.get("lines").is_some() {
        Ok(v)
    } else {
        Err(error_of(status, &v))
    }
}

/// Percent-encodes a path segment (`+` and `@` included, to be safe).
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
