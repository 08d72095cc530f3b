//! Multi-row statements: a batch of rows goes out in as few statements as
//! the sizes of [`CHUNKS`] allow (a flush of 300 outbox events: 13
//! statements instead of 300). A statement's set-up, binding and halting
//! cost about as much as the row's insert itself (`benches/tracker.rs`:
//! 98,871 → 87,509 instructions per call for the outbox's `INSERT`), and
//! a few fixed sizes keep each one's prepared statement cached.
//!
//! Rows are bound in place: rusqlite binds every text and blob with
//! `SQLITE_TRANSIENT`, so SQLite copies each value into a buffer of its
//! own (a `malloc`, a copy and a `free` per value) before it copies it
//! again into the row's record. The rows of one statement are borrowed
//! for the whole of its step, so they are bound `SQLITE_STATIC` here, on
//! statements of our own ([`Statements`], beside the writer connection),
//! and the bindings are cleared before the borrow ends.

use std::ffi::{CStr, c_char, c_int};
use std::marker::PhantomData;
use std::ptr::NonNull;

use rusqlite::{Connection, ffi};

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
    /// row by `bind(binder, p, row)` from its first parameter `?p` on.
    /// `statements` are the ones prepared on `c`'s connection.
    pub(super) fn run<'r, T>(
        &'static self,
        c: &Connection,
        statements: &mut Statements,
        rows: &'r [T],
        fixed: &[i64],
        mut bind: impl FnMut(&mut Bind<'r>, usize, &'r T) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<()> {
        for (size, chunk) in chunks(rows) {
            self.run_chunk(c, statements, size, chunk, fixed, &mut bind)?;
        }
        Ok(())
    }

    /// Runs the statement of `size` (an index into [`CHUNKS`], from
    /// [`chunks`]) for `chunk`, bound as in [`Chunked::run`]; the rows it
    /// changed, as `sqlite3_changes64` counts them.
    pub(super) fn run_chunk<'r, T>(
        &'static self,
        c: &Connection,
        statements: &mut Statements,
        size: usize,
        chunk: &'r [T],
        fixed: &[i64],
        bind: &mut impl FnMut(&mut Bind<'r>, usize, &'r T) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<u64> {
        debug_assert_eq!(fixed.len(), self.fixed);
        debug_assert_eq!(chunk.len(), CHUNKS[size]);
        step(
            c,
            statements,
            &self.sql[size],
            fixed,
            self.per_row,
            chunk,
            bind,
        )
    }
}

/// Runs `sql`, a statement with the parameters `fixed` (`?1`…) and then
/// `per_row` for each of `rows`, bound by `bind` as in [`Chunked::run`];
/// the rows it changed. `sql` is prepared once per connection and found
/// again by its address, so it must live as long as the program (a
/// `static`'s, or a static [`Chunked`]'s): another string at a freed
/// one's address would be given the old one's statement.
pub(super) fn step<'r, T>(
    c: &Connection,
    statements: &mut Statements,
    sql: &'static str,
    fixed: &[i64],
    per_row: usize,
    rows: &'r [T],
    bind: &mut impl FnMut(&mut Bind<'r>, usize, &'r T) -> rusqlite::Result<()>,
) -> rusqlite::Result<u64> {
    // SAFETY: the handle is only passed to SQLite's own functions, while
    // `c` is borrowed.
    let db = unsafe { c.handle() };
    let stmt = statements.get(db, sql)?;
    let mut b = Bind {
        stmt,
        db,
        _rows: PhantomData,
    };
    let bound = (|| {
        for (i, v) in fixed.iter().enumerate() {
            b.int(i + 1, *v)?;
        }
        for (r, row) in rows.iter().enumerate() {
            bind(&mut b, fixed.len() + 1 + per_row * r, row)?;
        }
        Ok(())
    })();
    b.finish(bound)
}

/// `rows` cut into the chunks [`Chunked::run`] runs them in, in order:
/// (the chunk's index in [`CHUNKS`], its rows).
pub(super) fn chunks<T>(rows: &[T]) -> impl Iterator<Item = (usize, &[T])> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let size = CHUNKS.iter().position(|&n| rest.len() >= n)?;
        let (chunk, tail) = rest.split_at(CHUNKS[size]);
        rest = tail;
        Some((size, chunk))
    })
}

/// The parameters of one run of a statement; values borrowed for `'r`
/// (the rows), which outlives the step: [`Bind::finish`] steps, resets
/// and clears the bindings before the borrow ends.
pub(super) struct Bind<'r> {
    stmt: *mut ffi::sqlite3_stmt,
    db: *mut ffi::sqlite3,
    _rows: PhantomData<&'r [u8]>,
}

impl<'r> Bind<'r> {
    /// `?p` = `s`, as text, not copied.
    pub(super) fn text(&mut self, p: usize, s: &'r str) -> rusqlite::Result<()> {
        // SAFETY: `s` outlives the step (`'r`), and `finish` clears the
        // binding before the statement is used again.
        let rc = unsafe {
            ffi::sqlite3_bind_text64(
                self.stmt,
                p as c_int,
                s.as_ptr().cast::<c_char>(),
                s.len() as u64,
                ffi::SQLITE_STATIC(),
                ffi::SQLITE_UTF8 as u8,
            )
        };
        check(self.db, rc)
    }

    /// `?p` = `b`, as a blob (empty, not NULL, when `b` is), not copied.
    pub(super) fn blob(&mut self, p: usize, b: &'r [u8]) -> rusqlite::Result<()> {
        // SAFETY: as for `text`; an empty slice's pointer is not null, so
        // SQLite binds an empty blob.
        let rc = unsafe {
            ffi::sqlite3_bind_blob64(
                self.stmt,
                p as c_int,
                b.as_ptr().cast(),
                b.len() as u64,
                ffi::SQLITE_STATIC(),
            )
        };
        check(self.db, rc)
    }

    /// `?p` = `v`.
    pub(super) fn int(&mut self, p: usize, v: i64) -> rusqlite::Result<()> {
        // SAFETY: a plain value on a live statement.
        check(self.db, unsafe {
            ffi::sqlite3_bind_int64(self.stmt, p as c_int, v)
        })
    }

    /// Steps the statement if `bound` (expecting no rows back), then
    /// resets it and clears every binding, whatever happened; the rows it
    /// changed.
    fn finish(self, bound: rusqlite::Result<()>) -> rusqlite::Result<u64> {
        // SAFETY: a live statement; after the clear it holds no pointer
        // into the rows.
        unsafe {
            let stepped = bound.and_then(|()| match ffi::sqlite3_step(self.stmt) {
                ffi::SQLITE_DONE => Ok(ffi::sqlite3_changes64(self.db) as u64),
                ffi::SQLITE_ROW => Err(rusqlite::Error::ExecuteReturnedResults),
                rc => Err(error(self.db, rc)),
            });
            ffi::sqlite3_reset(self.stmt);
            ffi::sqlite3_clear_bindings(self.stmt);
            stepped
        }
    }
}

/// The error SQLite reports for `rc` on `db`, as rusqlite gives it: the
/// connection's message when it is `rc`'s, else `rc`'s own text (a code
/// we made up, such as `SQLITE_MISUSE` for a statement SQLite did not
/// give, has no message on the connection).
fn error(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Error {
    // SAFETY: `db` is open; the message is copied before the next call.
    let msg = unsafe {
        let m = if ffi::sqlite3_errcode(db) == rc {
            ffi::sqlite3_errmsg(db)
        } else {
            ffi::sqlite3_errstr(rc)
        };
        (!m.is_null()).then(|| CStr::from_ptr(m).to_string_lossy().into_owned())
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), msg)
}

fn check(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Result<()> {
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(error(db, rc))
    }
}

/// The [`Chunked`] statements prepared on one connection, each once
/// (found by the address of its SQL, which lives in a static
/// [`Chunked`]). They must be dropped before their connection: SQLite does
/// not close a connection that still has statements.
#[derive(Default)]
pub(super) struct Statements(Vec<(*const u8, Prepared)>);

// SAFETY: the statements are used only by the holder of the writer's
// `Mutex`, which holds their connection too (opened `NO_MUTEX`: used by
// one thread at a time, as they are).
unsafe impl Send for Statements {}

impl Statements {
    fn get(
        &mut self,
        db: *mut ffi::sqlite3,
        sql: &'static str,
    ) -> rusqlite::Result<*mut ffi::sqlite3_stmt> {
        if let Some((_, p)) = self.0.iter().find(|(k, _)| *k == sql.as_ptr()) {
            // SAFETY: reading which connection a live statement is on.
            debug_assert_eq!(unsafe { ffi::sqlite3_db_handle(p.0.as_ptr()) }, db);
            return Ok(p.0.as_ptr());
        }
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `sql` is valid for its length; SQLite writes `stmt`.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr().cast::<c_char>(),
                sql.len() as c_int,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        check(db, rc)?;
        let p = Prepared(NonNull::new(stmt).ok_or_else(|| error(db, ffi::SQLITE_MISUSE))?);
        let s = p.0.as_ptr();
        self.0.push((sql.as_ptr(), p));
        Ok(s)
    }
}

/// A prepared statement of ours, finalized when dropped.
struct Prepared(NonNull<ffi::sqlite3_stmt>);

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: ours, finalized once.
        unsafe {
            ffi::sqlite3_finalize(self.0.as_ptr());
        }
    }
}
