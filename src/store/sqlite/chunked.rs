//! Multi-row statements: a batch of rows goes out in as few statements as
//! the sizes of [`CHUNKS`] allow (a flush of 300 outbox events: 13
//! statements instead of 300). A statement's set-up, binding and halting
//! cost about as much as the row's insert itself (`benches/tracker.rs`:
//! 98,871 → 87,509 instructions per call for the outbox's `INSERT`), and
//! a few fixed sizes keep each one's prepared statement cached.

use rusqlite::{Connection, Statement, ToSql};

/// Rows per statement, largest first.
const CHUNKS: [usize; 3] = [64, 8, 1];

/// Batch sizes that need every statement size (64 + 8 + 1 rows, twice
/// over, and a remainder), for the tests of each multi-row statement.
#[cfg(test)]
pub(super) const TEST_BATCHES: [usize; 8] = [0, 1, 7, 8, 9, 64, 65, 2 * 73 + 5];

/// One statement written for each of [`CHUNKS`]' row counts: `head`, the
/// rows' parts joined by commas, `tail`. Its parameters: `fixed` ones
/// (`?1`…, bound once per statement), then `per_row` for each row.
pub(super) struct Chunked {
    sql: [String; 3],
    fixed: usize,
    per_row: usize,
}

impl Chunked {
    /// `row(p)` writes one row's part, whose first parameter is `?p`.
    pub(super) fn new(
        head: &str,
        fixed: usize,
        per_row: usize,
        row: impl Fn(usize) -> String,
        tail: &str,
    ) -> Chunked {
        let param = |r: usize| fixed + 1 + per_row * r;
        let sql = CHUNKS.map(|rows| {
            let parts: Vec<String> = (0..rows).map(|r| row(param(r))).collect();
            format!("{head}{}{tail}", parts.join(","))
        });
        Chunked {
            sql,
            fixed,
            per_row,
        }
    }

    /// Runs the statements for `rows` on `c` (inside the caller's
    /// transaction), in the rows' order: `fixed` bound to `?1`…, and each
    /// row by `bind(statement, p, row)` from its first parameter `?p` on.
    pub(super) fn run<T>(
        &self,
        c: &Connection,
        rows: &[T],
        fixed: &[&dyn ToSql],
        mut bind: impl FnMut(&mut Statement<'_>, usize, &T) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<()> {
        debug_assert_eq!(fixed.len(), self.fixed);
        let mut rest = rows;
        for (size, sql) in CHUNKS.iter().zip(self.sql.iter()) {
            if rest.len() < *size {
                continue;
            }
            let mut st = c.prepare_cached(sql)?;
            while rest.len() >= *size {
                let (chunk, tail) = rest.split_at(*size);
                for (i, v) in fixed.iter().enumerate() {
                    st.raw_bind_parameter(i + 1, v)?;
                }
                for (r, row) in chunk.iter().enumerate() {
                    bind(&mut st, self.fixed + 1 + self.per_row * r, row)?;
                }
                st.raw_execute()?;
                rest = tail;
            }
        }
        Ok(())
    }
}
