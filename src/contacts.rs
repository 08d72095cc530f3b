//! The contacts directory: client number -> responsible user id and
//! extension. Durable in the store (table `contacts`), read on the SIP
//! path from an in-memory map behind `ArcSwap` (a lookup never waits;
//! a write copies the map and swaps it, which is fine for directories of
//! up to a few hundred thousand clients written in batches).

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// One client's responsible person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The client, `+E164`.
    pub client: String,
    /// The CRM user id (`X-CRM-Responsible`, Bitrix24 `USER_ID`).
    pub user_id: String,
    /// The PBX extension that rings this user (for `forward = "ruri"`).
    #[serde(default)]
    pub extension: String,
}

/// The in-memory directory.
#[derive(Default)]
pub struct Directory {
    map: ArcSwap<FxHashMap<u64, Arc<Contact>>>,
}

use crate::screening::normalize::parse_e164 as key;

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hot path: the contact for an E.164 client.
    #[inline]
    pub fn get(&self, client: u64) -> Option<Arc<Contact>> {
        self.map.load().get(&client).cloned()
    }

    pub fn replace_all(&self, all: Vec<Contact>) {
        let map = all
            .into_iter()
            .filter_map(|c| Some((key(&c.client)?, Arc::new(c))))
            .collect();
        self.map.store(Arc::new(map));
    }

    pub fn upsert(&self, batch: &[Contact]) {
        self.map.rcu(|cur| {
            let mut next = FxHashMap::clone(cur);
            for c in batch {
                if let Some(k) = key(&c.client) {
                    next.insert(k, Arc::new(c.clone()));
                }
            }
            next
        });
    }

    pub fn remove(&self, client: &str) {
        if let Some(k) = key(client) {
            self.map.rcu(|cur| {
                let mut next = FxHashMap::clone(cur);
                next.remove(&k);
                next
            });
        }
    }

    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
