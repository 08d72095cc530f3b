//! The edit list ("lumps", after Kamailio's `data_lump.c`): inserts and
//! deletes recorded against offsets of the received buffer, applied in one
//! pass. The output length is computed first, untouched spans are copied
//! once, inserted bytes placed between them. Untouched bytes are never
//! re-parsed or re-printed, so everything the proxy did not mean to change
//! leaves byte for byte as it came.
//!
//! Inserted bytes live in one scratch arena, reused per thread (taken by
//! `Edits::new`, handed back on drop), and the output is cut from a chunk
//! reused per thread, so building a forwarded message allocates nothing
//! in the usual case, whatever the edit count.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Insert arena bytes `from..to` at `at`.
    Insert { at: usize, from: usize, to: usize },
    /// Drop source bytes `start..end`.
    Delete { start: usize, end: usize },
}

impl Op {
    /// Its place in the output order: the offset, and at equal offsets
    /// inserts first (one word; offsets are far below `usize::MAX / 2`).
    fn order(&self) -> usize {
        (self.pos() << 1) | usize::from(matches!(self, Op::Delete { .. }))
    }

    fn pos(&self) -> usize {
        match *self {
            Op::Insert { at, .. } => at,
            Op::Delete { start, .. } => start,
        }
    }
}

/// The arena first allocated for a thread; what is kept for reuse is
/// capped at `ARENA_KEEP` (a rare huge message does not pin its arena).
const ARENA_START: usize = 512;
const ARENA_KEEP: usize = 16 * 1024;

/// The size of the chunks forwarded messages are cut from.
const OUT_CHUNK: usize = 16 * 1024;

std::thread_local! {
    /// The scratch arena the last `Edits` of this thread handed back.
    static ARENA: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// What is left of the chunk this thread's forwarded messages are cut
    /// from, one after the other: no allocation per message while it
    /// lasts. A used-up chunk is reused in place once every message cut
    /// from it has been dropped (the usual case: a datagram is sent and
    /// gone), else a new one is taken and the old one is freed with its
    /// last message.
    static OUT: std::cell::Cell<BytesMut> = std::cell::Cell::new(BytesMut::new());
}

/// A list of edits over one source buffer.
#[derive(Debug, Default, Clone)]
pub struct Edits {
    ops: SmallVec<[Op; 12]>,
    arena: Vec<u8>,
}

impl Edits {
    /// An empty edit list (with this thread's scratch arena).
    pub fn new() -> Self {
        let mut arena = ARENA.with(std::cell::Cell::take);
        if arena.capacity() == 0 {
            arena.reserve(ARENA_START);
        }
        Edits {
            ops: SmallVec::new(),
            arena,
        }
    }

    /// Inserts `data` before source offset `at`. Inserts at the same offset
    /// come out in the order they were recorded, before any delete that
    /// starts there.
    pub fn insert(&mut self, at: usize, data: &[u8]) {
        self.insert_with(at, |a| a.extend_from_slice(data));
    }

    /// Inserts whatever `write` appends to the arena, before offset `at`.
    pub fn insert_with(&mut self, at: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let from = self.arena.len();
        write(&mut self.arena);
        let to = self.arena.len();
        if to > from {
            self.ops.push(Op::Insert { at, from, to });
        }
    }

    /// Deletes source bytes `range`. Deleted ranges must not overlap.
    pub fn delete(&mut self, range: Range<usize>) {
        if range.start < range.end {
            self.ops.push(Op::Delete {
                start: range.start,
                end: range.end,
            });
        }
    }

    /// Replaces source bytes `range` with `data`.
    pub fn replace(&mut self, range: Range<usize>, data: &[u8]) {
        self.insert(range.start, data);
        self.delete(range);
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Applies the edits to `src[..end]` (bytes past `end`, such as junk
    /// after a datagram's body, are left out).
    ///
    /// Panics in debug builds if deletes overlap or an insert falls inside
    /// a deleted range; callers derive every range from one scan.
    pub fn apply(&mut self, src: &[u8], end: usize) -> Bytes {
        let end = end.min(src.len());
        // Stable sort: same-offset inserts keep their order; at equal
        // offsets inserts go before deletes.
        self.ops.sort_by_key(Op::order);
        let mut len = end;
        for op in &self.ops {
            match *op {
                Op::Insert { from, to, .. } => len += to - from,
                Op::Delete { start, end: e } => len -= e.min(end).saturating_sub(start.min(end)),
            }
        }
        let mut chunk = OUT.with(std::cell::Cell::take);
        if chunk.capacity() < len {
            // Reclaims the chunk in place when every message cut from it
            // is gone, else takes a new one.
            chunk.reserve(len.max(OUT_CHUNK));
        }
        let out = &mut chunk;
        let mut cursor = 0;
        for op in &self.ops {
            match *op {
                Op::Insert { at, from, to } => {
                    let at = at.min(end);
                    debug_assert!(at >= cursor, "insert inside a deleted range");
                    if at > cursor {
                        out.extend_from_slice(&src[cursor..at]);
                        cursor = at;
                    }
                    out.extend_from_slice(&self.arena[from..to]);
                }
                Op::Delete { start, end: e } => {
                    let (start, e) = (start.min(end), e.min(end));
                    debug_assert!(start >= cursor, "overlapping deletes");
                    if start > cursor {
                        out.extend_from_slice(&src[cursor..start]);
                    }
                    cursor = cursor.max(e);
                }
            }
        }
        out.extend_from_slice(&src[cursor..end]);
        debug_assert_eq!(out.len(), len);
        let message = chunk.split().freeze();
        // A thread being torn down has no slot left: the chunk goes with
        // its last message.
        let _ = OUT.try_with(|o| o.set(chunk));
        message
    }
}

impl Drop for Edits {
    /// Hands the arena back to the thread, emptied, for the next message.
    fn drop(&mut self) {
        let mut arena = std::mem::take(&mut self.arena);
        if arena.capacity() > 0 && arena.capacity() <= ARENA_KEEP {
            arena.clear();
            // A thread being torn down has no slot left: the arena is freed.
            let _ = ARENA.try_with(|a| a.set(arena));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The arena is reused: the second message's edits start in the
    /// buffer the first handed back, empty, and give the same bytes.
    #[test]
    fn the_arena_is_reused_empty() {
        let src = b"0123456789";
        let mut e = Edits::new();
        e.insert(3, b"abc");
        let first = e.apply(src, src.len());
        let ptr = e.arena.as_ptr();
        drop(e);
        let mut e = Edits::new();
        assert_eq!(e.arena.as_ptr(), ptr, "the same buffer");
        assert!(e.arena.is_empty());
        e.insert(3, b"abc");
        assert_eq!(e.apply(src, src.len()), first);
        // Two lists at once: the second gets an arena of its own.
        let other = Edits::new();
        assert_ne!(other.arena.as_ptr(), ptr);
        assert!(other.arena.capacity() >= ARENA_START);
    }

    /// Messages cut from the thread's chunk stay as they were while later
    /// ones are built (held across chunk ends, larger than a chunk, and
    /// after all were dropped and the chunk is reused).
    #[test]
    fn messages_cut_from_the_chunk_stay_intact() {
        let build = |i: usize, size: usize| {
            let src: Vec<u8> = (0..size).map(|j| (i * 7 + j) as u8).collect();
            let mut e = Edits::new();
            e.insert(size / 2, format!("<{i}>").as_bytes());
            e.delete(0..1);
            let mut want = src[1..size / 2].to_vec();
            want.extend_from_slice(format!("<{i}>").as_bytes());
            want.extend_from_slice(&src[size / 2..]);
            (e.apply(&src, size), want)
        };
        for _round in 0..2 {
            let held: Vec<(Bytes, Vec<u8>)> = (0..80)
                .map(|i| build(i, if i == 40 { 3 * OUT_CHUNK } else { 900 + i }))
                .collect();
            for (got, want) in &held {
                assert_eq!(&got[..], &want[..]);
            }
        }
    }

    #[test]
    fn no_edits_give_identical_bytes() {
        let src = b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n\r\nbody";
        assert_eq!(&Edits::new().apply(src, src.len())[..], &src[..]);
    }

    #[test]
    fn inserts_deletes_and_truncation() {
        let src = b"0123456789JUNK";
        let mut e = Edits::new();
        e.insert(0, b"<");
        e.insert(0, b"<<");
        e.replace(2..4, b"ab");
        e.delete(6..8);
        e.insert(10, b">");
        assert_eq!(&e.apply(src, 10)[..], b"<<<01ab4589>");
    }

    proptest! {
        /// Any set of non-overlapping deletes plus inserts keeps every byte
        /// outside the deleted ranges, in order, and places inserts exactly.
        #[test]
        fn untouched_bytes_survive(src in proptest::collection::vec(any::<u8>(), 1..200),
                                   cuts in proptest::collection::vec((0usize..200, 0usize..8, any::<bool>()), 0..8)) {
            let n = src.len();
            let mut e = Edits::new();
            let mut deleted = vec![false; n];
            let mut taken = 0;
            let mut cuts = cuts;
            cuts.sort();
            for (pos, len, is_delete) in cuts {
                let pos = pos % n;
                if pos < taken { continue; }
                if is_delete {
                    let end = (pos + len).min(n);
                    e.delete(pos..end);
                    for d in deleted.iter_mut().take(end).skip(pos) { *d = true; }
                    taken = end;
                } else {
                    e.insert(pos, b"\x00INS\x00");
                    taken = pos;
                }
            }
            let out = e.apply(&src, n);
            let kept: Vec<u8> = src.iter().zip(&deleted).filter(|(_, d)| !**d).map(|(b, _)| *b).collect();
            let mut stripped = Vec::new();
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(b"\x00INS\x00") { i += 5; } else { stripped.push(out[i]); i += 1; }
            }
            // Inserted markers may coincide with source bytes only if the
            // source held the marker itself; compare lengths as well.
            prop_assert_eq!(out.len(), kept.len() + 5 * e.ops.iter().filter(|o| matches!(o, Op::Insert{..})).count());
            if !src.windows(5).any(|w| w == b"\x00INS\x00") {
                prop_assert_eq!(stripped, kept);
            }
        }
    }
}
