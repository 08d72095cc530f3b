//! The contacts directory: client -> responsible user and extension.

use rusqlite::{Row, params};

use super::SqliteStore;
use crate::store::{ContactStore, StoreError};

fn contact(r: &Row<'_>) -> Result<crate::contacts::Contact, rusqlite::Error> {
    Ok(crate::contacts::Contact {
        client: r.get(0)?,
        user_id: r.get(1)?,
        extension: r.get(2)?,
    })
}

impl ContactStore for SqliteStore {
    fn upsert_contacts(
        &self,
        contacts: &[crate::contacts::Contact],
        actor: &str,
        now: i64,
    ) -> Result<(usize, usize), StoreError> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let (mut added, mut updated) = (0, 0);
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM contacts WHERE client = ?1")?;
            let mut up = tx.prepare_cached(
                "INSERT INTO contacts (client, user_id, extension, updated_at, updated_by)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (client) DO UPDATE SET user_id = excluded.user_id,
                   extension = excluded.extension, updated_at = excluded.updated_at,
                   updated_by = excluded.updated_by",
            )?;
            for k in contacts {
                if exists.exists([&k.client])? {
                    updated += 1;
                } else {
                    added += 1;
                }
                up.execute(params![k.client, k.user_id, k.extension, now, actor])?;
            }
        }
        tx.commit()?;
        Ok((added, updated))
    }

    fn remove_contact(&self, client: &str) -> Result<bool, StoreError> {
        Ok(self
            .writer()
            .execute("DELETE FROM contacts WHERE client = ?1", [client])?
            == 1)
    }

    fn list_contacts(
        &self,
        user: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::contacts::Contact>, StoreError> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT client, user_id, extension FROM contacts
             WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR client > ?2)
             ORDER BY client LIMIT ?3",
        )?;
        let rows = st.query_map(params![user, after, limit as i64], contact)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn all_contacts(&self) -> Result<Vec<crate::contacts::Contact>, StoreError> {
        let c = self.reader();
        let mut st = c.prepare("SELECT client, user_id, extension FROM contacts")?;
        let rows = st.query_map([], contact)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
