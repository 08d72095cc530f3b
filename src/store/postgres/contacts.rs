//! The contacts directory: client -> responsible user and extension; each
//! write also writes its change rows.

use super::{PgStore, lock_changes, notify_changes};
use crate::contacts::Contact;
use crate::store::rounds;
use crate::store::{ContactStore, StoreError};

/// One round (each client once): upserts, writes the change rows, and
/// counts (added, updated).
const UPSERT_ROUND: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
        WITH ORDINALITY AS t(client, user_id, extension, ord)
),
up AS (
    INSERT INTO contacts (client, user_id, extension, updated_at, updated_by)
    SELECT client, user_id, extension, $4, $5 FROM input ORDER BY ord
    ON CONFLICT (client) DO UPDATE SET user_id = excluded.user_id,
      extension = excluded.extension, updated_at = excluded.updated_at,
      updated_by = excluded.updated_by
    RETURNING (xmax = 0) AS inserted
),
chg AS (
    INSERT INTO changes (at, what, op, value, contact)
    SELECT $4, 'contact', 'upsert', client,
           jsonb_build_object('client', client, 'user_id', user_id, 'extension', extension)
      FROM input ORDER BY ord
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up
"#;

impl PgStore {
    /// Upserts `contacts` inside `tx` (the change lock taken).
    pub(super) async fn upsert_contacts_in(
        tx: &deadpool_postgres::Transaction<'_>,
        contacts: &[Contact],
        actor: &str,
        now: i64,
    ) -> Result<(usize, usize), StoreError> {
        let (mut added, mut updated) = (0, 0);
        let st = tx.prepare_cached(UPSERT_ROUND).await?;
        for round in rounds(contacts, |k| k.client.as_str()) {
            let client: Vec<&str> = round.iter().map(|k| k.client.as_str()).collect();
            let user: Vec<&str> = round.iter().map(|k| k.user_id.as_str()).collect();
            let ext: Vec<&str> = round.iter().map(|k| k.extension.as_str()).collect();
            let r = tx
                .query_one(&st, &[&client, &user, &ext, &now, &actor])
                .await?;
            added += r.get::<_, i64>(0) as usize;
            updated += r.get::<_, i64>(1) as usize;
        }
        Ok((added, updated))
    }
}

impl ContactStore for PgStore {
    fn upsert_contacts(
        &self,
        contacts: &[Contact],
        actor: &str,
        now: i64,
    ) -> Result<(usize, usize), StoreError> {
        self.run(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            lock_changes(&tx).await?;
            let out = Self::upsert_contacts_in(&tx, contacts, actor, now).await?;
            if !contacts.is_empty() {
                notify_changes(&tx).await?;
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    fn remove_contact(&self, client: &str) -> Result<bool, StoreError> {
        self.run(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            lock_changes(&tx).await?;
            let n = tx
                .execute(
                    "WITH gone AS (DELETE FROM contacts WHERE client = $1 RETURNING client)
                     INSERT INTO changes (at, what, op, value)
                     SELECT $2, 'contact', 'remove', client FROM gone",
                    &[&client, &crate::clock::now_ms()],
                )
                .await?;
            if n > 0 {
                notify_changes(&tx).await?;
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    fn list_contacts(
        &self,
        user: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            let rows = c
                .query(
                    "SELECT client, user_id, extension FROM contacts
                      WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR client > $2)
                      ORDER BY client LIMIT $3",
                    &[&user, &after, &(limit.min(i64::MAX as usize) as i64)],
                )
                .await?;
            Ok(rows.iter().map(contact).collect())
        })
    }

    fn all_contacts(&self) -> Result<Vec<Contact>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            let rows = c
                .query("SELECT client, user_id, extension FROM contacts", &[])
                .await?;
            Ok(rows.iter().map(contact).collect())
        })
    }
}

fn contact(r: &tokio_postgres::Row) -> Contact {
    Contact {
        client: r.get(0),
        user_id: r.get(1),
        extension: r.get(2),
    }
}
