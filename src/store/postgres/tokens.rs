//! CRM application tokens, one row per sink, and the CRM's answers.

use super::PgStore;
use crate::store::{CrmTokens, StoreError, TokenStore};

impl TokenStore for PgStore {
    fn crm_tokens(&self, sink: &str) -> Result<Option<CrmTokens>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            Ok(c.query_opt(
                "SELECT access, refresh, expires_at, member_id, application_token, domain
                       FROM crm_tokens WHERE sink = $1",
                &[&sink],
            )
            .await?
            .map(|r| CrmTokens {
                access: r.get(0),
                refresh: r.get(1),
                expires_at: r.get(2),
                member_id: r.get(3),
                application_token: r.get(4),
                domain: r.get(5),
            }))
        })
    }

    fn set_crm_tokens(&self, sink: &str, t: &CrmTokens, now: i64) -> Result<(), StoreError> {
        self.run(async {
            let c = self.conn().await?;
            c.execute(
                "INSERT INTO crm_tokens (sink, access, refresh, expires_at, member_id,
                                         application_token, domain, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (sink) DO UPDATE SET access = excluded.access,
                   refresh = excluded.refresh, expires_at = excluded.expires_at,
                   member_id = excluded.member_id,
                   application_token = excluded.application_token,
                   domain = excluded.domain, updated_at = excluded.updated_at",
                &[
                    &sink,
                    &t.access,
                    &t.refresh,
                    &t.expires_at,
                    &t.member_id,
                    &t.application_token,
                    &t.domain,
                    &now,
                ],
            )
            .await?;
            Ok(())
        })
    }

    fn set_crm_answer(
        &self,
        sink: &str,
        call: &str,
        answer: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.run(async {
            let c = self.conn().await?;
            c.execute(
                "INSERT INTO crm_answers (sink, call, answer, at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (sink, call) DO UPDATE SET answer = excluded.answer,
                   at = excluded.at",
                &[&sink, &call, &answer, &now],
            )
            .await?;
            Ok(())
        })
    }

    fn crm_answers(&self, calls: &[String]) -> Result<Vec<(String, String, String)>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            // In the order of `calls` (as SQLite answers them).
            let rows = c
                .query(
                    "SELECT a.call, a.sink, a.answer
                       FROM unnest($1::text[]) WITH ORDINALITY AS q(call, ord)
                       JOIN crm_answers a ON a.call = q.call
                      ORDER BY q.ord, a.sink",
                    &[&calls],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
    }

    fn outbox_depth(&self, sink: &str) -> Result<i64, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            Ok(
                c.query_one("SELECT count(*) FROM outbox WHERE sink = $1", &[&sink])
                    .await?
                    .get(0),
            )
        })
    }
}
