//! CRM application tokens, one row per sink.

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::store::{CrmTokens, StoreError, TokenStore};

impl TokenStore for SqliteStore {
    fn crm_tokens(&self, sink: &str) -> Result<Option<CrmTokens>, StoreError> {
        let c = self.reader();
        Ok(c.query_row(
            "SELECT access, refresh, expires_at, member_id, application_token, domain
               FROM crm_tokens WHERE sink = ?1",
            [sink],
            |r| {
                Ok(CrmTokens {
                    access: r.get(0)?,
                    refresh: r.get(1)?,
                    expires_at: r.get(2)?,
                    member_id: r.get(3)?,
                    application_token: r.get(4)?,
                    domain: r.get(5)?,
                })
            },
        )
        .optional()?)
    }

    fn set_crm_tokens(&self, sink: &str, t: &CrmTokens, now: i64) -> Result<(), StoreError> {
        self.writer().execute(
            "INSERT INTO crm_tokens (sink, access, refresh, expires_at, member_id,
                                     application_token, domain, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (sink) DO UPDATE SET access = excluded.access,
               refresh = excluded.refresh, expires_at = excluded.expires_at,
               member_id = excluded.member_id,
               application_token = excluded.application_token,
               domain = excluded.domain, updated_at = excluded.updated_at",
            params![
                sink,
                t.access,
                t.refresh,
                t.expires_at,
                t.member_id,
                t.application_token,
                t.domain,
                now
            ],
        )?;
        Ok(())
    }

    fn set_crm_answer(
        &self,
        sink: &str,
        call: &str,
        answer: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.writer().execute(
            "INSERT INTO crm_answers (sink, call, answer, at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (sink, call) DO UPDATE SET answer = excluded.answer, at = excluded.at",
            params![sink, call, answer, now],
        )?;
        Ok(())
    }

    fn crm_answers(&self, calls: &[String]) -> Result<Vec<(String, String, String)>, StoreError> {
        let c = self.reader();
        let mut st =
            c.prepare_cached("SELECT call, sink, answer FROM crm_answers WHERE call = ?1")?;
        let mut out = Vec::new();
        for call in calls {
            let rows = st.query_map([call], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            for r in rows {
                out.push(r?);
            }
        }
        Ok(out)
    }

    fn outbox_depth(&self, sink: &str) -> Result<i64, StoreError> {
        Ok(self
            .reader()
            .query_row("SELECT count(*) FROM outbox WHERE sink = ?1", [sink], |r| {
                r.get(0)
            })?)
    }
}
