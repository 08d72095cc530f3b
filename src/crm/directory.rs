//! The contacts directory filled from the portal: a background sync pages
//! through contacts, companies and leads (`crm.contact.list`,
//! `crm.company.list`, `crm.lead.list`: `PHONE`, `ASSIGNED_BY_ID`) and the
//! users (`user.get`: `UF_PHONE_INNER` as the extension), up to 50 pages
//! of 50 in one `batch` request, paced by its own leaky bucket, then again
//! every `directory_every_secs` for what changed since (`>DATE_MODIFY`).
//! A client seen on a registered call but not in the directory is looked
//! up with `telephony.externalCall.searchCrmEntities`, so the next call
//! routes to its responsible. Everything here runs beside the SIP path:
//! calls read the directory as it is, never waiting for this.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::bitrix24::Bitrix24;
use super::{Bucket, Delivery};
use crate::contacts::{Contact, Directory};
use crate::shutdown::Shutdown;
use crate::store::ContactStore;

/// `+E164` of a number as the CRM wrote it (the runtime's normaliser).
pub type Normalize = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

const PAGE: usize = 50;
/// Pages per `batch` request.
const PAGES: usize = 50;
const SEARCH: &str = "telephony.externalCall.searchCrmEntities";
const LISTS: [&str; 3] = ["crm.contact.list", "crm.company.list", "crm.lead.list"];

/// What the sync needs.
pub struct DirectorySync {
    pub sink: Arc<Bitrix24>,
    pub directory: Arc<Directory>,
    pub store: Arc<dyn ContactStore>,
    pub normalize: Normalize,
    /// Between incremental syncs.
    pub every: Duration,
    /// Requests a second (and burst) for the sync's own requests.
    pub rate: f64,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

fn failed(d: Delivery) -> String {
    match d {
        Delivery::Retry(e) | Delivery::Rejected(e) => e.to_string(),
        Delivery::Ok => String::new(),
    }
}

impl DirectorySync {
    async fn paced(&self, bucket: &mut Bucket) {
        let wait = bucket.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            bucket.reserve(Instant::now());
        }
    }

    /// Every row of a list method, 50 pages per `batch`.
    async fn list_all(
        &self,
        bucket: &mut Bucket,
        method: &str,
        params: &Map<String, Value>,
    ) -> Result<Vec<Value>, String> {
        let mut rows = Vec::new();
        let mut start = 0;
        loop {
            let mut cmd = Map::new();
            for p in 0..PAGES {
                let mut q = params.clone();
                q.insert("start".into(), json!(start + p * PAGE));
                cmd.insert(
                    format!("p{p:02}"),
                    Value::String(format!(
                        "{method}?{}",
                        super::bitrix24::query(&Value::Object(q))
                    )),
                );
            }
            self.paced(bucket).await;
            let r = self
                .sink
                .call("batch", json!({"halt": 0, "cmd": cmd}))
                .await
                .map_err(failed)?;
            for p in 0..PAGES {
                let key = format!("p{p:02}");
                if let Some(e) = r["result_error"].get(&key).filter(|e| !e.is_null()) {
                    return Err(format!("{method}: {}", text(&e["error"])));
                }
                let page = r["result"][&key].as_array().cloned().unwrap_or_default();
                let short = page.len() < PAGE;
                rows.extend(page);
                if short {
                    return Ok(rows);
                }
            }
            start += PAGES * PAGE;
        }
    }

    /// One sync of what changed since `since` (RFC 3339; `None`: all):
    /// the contacts written.
    pub async fn sync(&self, bucket: &mut Bucket, since: Option<&str>) -> Result<usize, String> {
        let mut users = Map::new();
        users.insert("ACTIVE".into(), json!("true"));
        let inner: HashMap<String, String> = self
            .list_all(bucket, "user.get", &users)
            .await?
            .iter()
            .map(|u| (text(&u["ID"]), text(&u["UF_PHONE_INNER"])))
            .collect();
        let mut found: Vec<Contact> = Vec::new();
        for method in LISTS {
            let mut p = Map::new();
            for (i, f) in ["ID", "PHONE", "ASSIGNED_BY_ID", "DATE_MODIFY"]
                .iter()
                .enumerate()
            {
                p.insert(format!("select[{i}]"), json!(f));
            }
            p.insert("order[ID]".into(), json!("ASC"));
            if let Some(s) = since {
                p.insert("filter[>DATE_MODIFY]".into(), json!(s));
            }
            for row in self.list_all(bucket, method, &p).await? {
                let user = text(&row["ASSIGNED_BY_ID"]);
                if user.is_empty() {
                    continue;
                }
                for phone in row["PHONE"].as_array().into_iter().flatten() {
                    if let Some(client) = (self.normalize)(&text(&phone["VALUE"])) {
                        found.push(Contact {
                            client,
                            user_id: user.clone(),
                            extension: inner.get(&user).cloned().unwrap_or_default(),
                        });
                    }
                }
            }
        }
        self.keep(found).await
    }

    async fn keep(&self, contacts: Vec<Contact>) -> Result<usize, String> {
        if contacts.is_empty() {
            return Ok(0);
        }
        let n = contacts.len();
        let (st, dir, actor) = (
            self.store.clone(),
            self.directory.clone(),
            format!("bitrix24:{}", self.sink.app().sink),
        );
        tokio::task::spawn_blocking(move || {
            st.upsert_contacts(&contacts, &actor, crate::clock::now_ms())
                .map(|_| dir.upsert(&contacts))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        Ok(n)
    }

    /// A client not in the directory: its responsible from the portal.
    async fn lookup(&self, bucket: &mut Bucket, client: &str) -> Result<bool, String> {
        self.paced(bucket).await;
        let r = self
            .sink
            .call(SEARCH, json!({"PHONE_NUMBER": client}))
            .await
            .map_err(failed)?;
        let Some(hit) = r
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| !text(&e["ASSIGNED_BY_ID"]).is_empty())
        else {
            return Ok(false);
        };
        let contact = Contact {
            client: client.to_string(),
            user_id: text(&hit["ASSIGNED_BY_ID"]),
            extension: text(&hit["ASSIGNED_BY"]["USER_PHONE_INNER"]),
        };
        self.keep(vec![contact]).await.map(|_| true)
    }
}

/// Syncs while connected: all at first, then what changed, and looks up
/// the clients `lookups` names.
pub async fn run(
    s: DirectorySync,
    mut lookups: tokio::sync::mpsc::Receiver<String>,
    mut shutdown: Shutdown,
) {
    let name = s.sink.app().sink.clone();
    let mut bucket = Bucket::new(s.rate, 2);
    let mut since: Option<String> = None;
    // Clients looked up and not found, until the next sync.
    let mut unknown: HashSet<String> = HashSet::new();
    let mut next = Instant::now();
    loop {
        if !s.sink.app().connected() {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = s.sink.app().connected_now.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep_until(next) => {
                let started = crate::clock::rfc3339(crate::clock::now_ms() - 1000);
                match s.sync(&mut bucket, since.as_deref()).await {
                    Ok(n) => {
                        tracing::info!(sink = %name, contacts = n, incremental = since.is_some(), "contacts directory synced from Bitrix24");
                        since = Some(started);
                        unknown.clear();
                        next = Instant::now() + s.every;
                    }
                    Err(e) => {
                        tracing::warn!(sink = %name, error = %e, "syncing the contacts directory from Bitrix24 failed; retried in a minute");
                        next = Instant::now() + Duration::from_secs(60).min(s.every);
                    }
                }
            }
            client = lookups.recv() => {
                let Some(client) = client else { return };
                let known = crate::screening::normalize::parse_e164(&client)
                    .is_some_and(|k| s.directory.get(k).is_some());
                if known || unknown.contains(&client) {
                    continue;
                }
                match s.lookup(&mut bucket, &client).await {
                    Ok(true) => tracing::info!(sink = %name, client = %client, "responsible found in Bitrix24 for a client not in the directory"),
                    Ok(false) => {
                        unknown.insert(client);
                    }
                    Err(e) => tracing::warn!(sink = %name, error = %e, "Bitrix24 lookup failed"),
                }
            }
        }
    }
}
