//! JSON objects written key by key into a buffer, for the records the call
//! tracker writes on every call (CRM event payloads, the saved call state,
//! call log lines): the same bytes serde_json writes for the same fields
//! in the same order, without a serializer's per-field dispatch and with
//! strings that need no escaping copied as they are (serde_json's escaper
//! took 11,000 instructions per call in `benches/tracker.rs`; with the
//! saved state and the call log line written here the tracker went from
//! 87,509 to 81,099 instructions per call). Each writer has a test
//! comparing its bytes with serde's.

/// One object; [`Obj::end`] closes it.
pub struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    /// Opens an object at the end of `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }

    /// `k` must need no escaping (field names are identifiers).
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        string(self.out, v);
    }

    /// `null` for `None`, as serde writes an `Option`.
    pub fn opt_str(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    pub fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
    }

    /// Any integer (signed or not).
    pub fn num<I: itoa::Integer>(&mut self, k: &str, v: I) {
        self.key(k);
        let mut b = itoa::Buffer::new();
        self.out.extend_from_slice(b.format(v).as_bytes());
    }

    /// `null` for `None`.
    pub fn opt_num(&mut self, k: &str, v: Option<u64>) {
        match v {
            Some(v) => self.num(k, v),
            None => self.null(k),
        }
    }

    fn null(&mut self, k: &str) {
        self.key(k);
        self.out.extend_from_slice(b"null");
    }

    /// Any serde value (the rare, nested ones).
    pub fn value<T: serde::Serialize + ?Sized>(&mut self, k: &str, v: &T) {
        self.key(k);
        serde_json::to_writer(&mut *self.out, v).expect("plain data serialises");
    }

    /// An array of objects, each written by `each`.
    pub fn list<T>(&mut self, k: &str, items: &[T], mut each: impl FnMut(&mut Obj<'_>, &T)) {
        self.key(k);
        self.out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            let mut o = Obj::new(self.out);
            each(&mut o, item);
            o.end();
        }
        self.out.push(b']');
    }

    /// Run `i` of `f`, as it was written.
    pub fn splice<const N: usize>(&mut self, f: &Fields<N>, i: usize) {
        let run = f.run(i);
        if run.is_empty() {
            return;
        }
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(run.as_bytes());
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// Runs of fields written once and spliced whole into objects
/// ([`Obj::splice`]): what every event of a call repeats of it. The `N`
/// runs share one buffer (one allocation, not one a run).
#[derive(Debug, Clone, PartialEq)]
pub struct Fields<const N: usize> {
    text: String,
    /// Where each run ends in `text` (each starts where the one before
    /// it ends).
    ends: [usize; N],
}

impl<const N: usize> Fields<N> {
    /// The runs `write(i, …)` writes for `i` in `0..N`, each in its order.
    pub fn new(mut write: impl FnMut(usize, &mut Obj<'_>)) -> Fields<N> {
        let mut out = Vec::with_capacity(96 * N);
        let ends = std::array::from_fn(|i| {
            // A run's fields without braces, and without a comma before
            // its first: `splice` puts one there.
            write(
                i,
                &mut Obj {
                    out: &mut out,
                    first: true,
                },
            );
            out.len()
        });
        debug_assert!(std::str::from_utf8(&out).is_ok(), "an Obj wrote UTF-8");
        // SAFETY: as in `object_in`: what `Obj`'s methods wrote.
        let text = unsafe { String::from_utf8_unchecked(out) };
        Fields { text, ends }
    }

    /// Run `i` (`< N`).
    pub fn run(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

/// One object, its fields written by `fields`, as a `String`.
pub fn object(capacity: usize, fields: impl FnOnce(&mut Obj<'_>)) -> String {
    let mut s = String::with_capacity(capacity);
    object_in(&mut s, fields);
    s
}

/// [`object`] into `s`, in place of what it held (its buffer reused). Not
/// checked for UTF-8 again (a check of each payload and state cost ~2,000
/// instructions per call in `benches/tracker.rs`): an [`Obj`] writes only
/// UTF-8 (copies of `str`s, ASCII and serde_json's output), and `fields`
/// has the `Obj` alone, never the bytes. Debug builds check.
pub fn object_in(s: &mut String, fields: impl FnOnce(&mut Obj<'_>)) {
    let mut out = std::mem::take(s).into_bytes();
    out.clear();
    let mut o = Obj::new(&mut out);
    fields(&mut o);
    o.end();
    debug_assert!(std::str::from_utf8(&out).is_ok(), "an Obj wrote UTF-8");
    // SAFETY: `out` holds what `Obj`'s methods wrote, whole `str`s, ASCII
    // and serde_json's UTF-8: valid UTF-8.
    *s = unsafe { String::from_utf8_unchecked(out) };
}

/// Whether any byte of `s` needs an escape in a JSON string: `"`, `\`
/// or a control character (below 0x20). Eight bytes at a time: a byte
/// test over a word ((x - 0x01..) & !x & 0x80..) is exact for "any byte
/// below n" with n <= 128, and for "any zero byte" after an XOR with the
/// byte looked for.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let hit =
        |x: u64| below(x, 0x20) | below(x ^ (ONES * 0x22), 1) | below(x ^ (ONES * 0x5C), 1) != 0;
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
    if s.len() < 8 {
        return s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    }
    let chunks = s.chunks_exact(8);
    let rest = !chunks.remainder().is_empty();
    for c in chunks {
        if hit(word(c)) {
            return true;
        }
    }
    // The bytes after the last whole word: the last eight bytes as one
    // word (some of them tested already). A byte at a time they were half
    // the cost of a string of 8 to 40 bytes; shorter strings go a byte at
    // a time above (a space-padded word cost more: its copy is a memcpy
    // call).
    rest && hit(word(&s[s.len() - 8..]))
}

/// `v` as a JSON string: copied between quotes when no byte needs an
/// escape (no `"`, `\` or control character), else escaped by serde_json.
pub fn string(out: &mut Vec<u8>, v: &str) {
    if !needs_escape(v.as_bytes()) {
        out.reserve(v.len() + 2);
        out.push(b'"');
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, v).expect("writing to a Vec cannot fail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The copy path writes what serde_json writes, for any string.
        #[test]
        fn strings_are_written_as_serde_writes_them(v in ".{0,40}") {
            let mut out = Vec::new();
            string(&mut out, &v);
            proptest::prop_assert_eq!(out, serde_json::to_vec(&v).unwrap());
        }

        /// The word-wise test agrees with the byte-wise one on bytes
        /// around every class boundary, at every position.
        #[test]
        fn needs_escape_agrees_with_the_byte_test(
            v in proptest::collection::vec(
                proptest::prop_oneof![1 => 0x00u8..0x24, 1 => 0x5Au8..0x5F, 8 => 0x20u8..=0xFF],
                0..40,
            ),
        ) {
            let plain = v.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            proptest::prop_assert_eq!(needs_escape(&v), plain);
        }
    }

    /// Spliced fields are the bytes of the same fields written in place,
    /// first, between others, last, and nothing when there are none.
    #[test]
    fn spliced_fields_are_the_fields_written_in_place() {
        // Three runs in one buffer: two fields, none, one.
        let runs = Fields::<3>::new(|i, o| match i {
            0 => {
                o.str("a", "x\"y");
                o.num("b", 7);
            }
            1 => {}
            _ => o.opt_str("d", None),
        });
        assert_eq!(runs.run(0), r#""a":"x\"y","b":7"#);
        assert_eq!(runs.run(1), "");
        assert_eq!(runs.run(2), r#""d":null"#);
        let spliced = object(0, |o| {
            o.splice(&runs, 0);
            o.splice(&runs, 1);
            o.bool("c", true);
            o.splice(&runs, 0);
            o.splice(&runs, 2);
        });
        let direct = object(0, |o| {
            o.str("a", "x\"y");
            o.num("b", 7);
            o.bool("c", true);
            o.str("a", "x\"y");
            o.num("b", 7);
            o.opt_str("d", None);
        });
        assert_eq!(spliced, direct);
        assert_eq!(
            spliced,
            r#"{"a":"x\"y","b":7,"c":true,"a":"x\"y","b":7,"d":null}"#
        );
        assert_eq!(object(0, |o| o.splice(&runs, 1)), "{}");
    }

    #[test]
    fn every_kind_of_field_is_written_as_serde_writes_it() {
        #[derive(serde::Serialize)]
        struct Item {
            a: &'static str,
        }
        #[derive(serde::Serialize)]
        struct All {
            s: &'static str,
            none: Option<&'static str>,
            b: bool,
            n: u64,
            i: i64,
            on: Option<u64>,
            v: serde_json::Value,
            l: Vec<Item>,
            e: Vec<Item>,
        }
        let want = All {
            s: "a\"b\\c\n\u{1}é",
            none: None,
            b: true,
            n: u64::MAX,
            i: i64::MIN,
            on: None,
            v: serde_json::json!({"x": [1, "y"]}),
            l: vec![Item { a: "1" }, Item { a: "2" }],
            e: vec![],
        };
        let mut out = Vec::new();
        let mut o = Obj::new(&mut out);
        o.str("s", want.s);
        o.opt_str("none", want.none);
        o.bool("b", want.b);
        o.num("n", want.n);
        o.num("i", want.i);
        o.opt_num("on", want.on);
        o.value("v", &want.v);
        o.list("l", &want.l, |o, it| o.str("a", it.a));
        o.list("e", &want.e, |o, it| o.str("a", it.a));
        o.end();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&want).unwrap()
        );
    }
}
