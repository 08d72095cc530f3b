//! One paging rule for every list the API gives out (exceptions, audit,
//! contacts, calls): `limit` 1–1000, 100 when absent; the answer is
//! `{"items": [...], "next_cursor": C|null}`, and `C` passed back as
//! `cursor` gives the next page. A page shorter than `limit` is the last.

use serde::Serialize;

use super::ApiError;

/// Items per page when no `limit` is given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// A page of items and the cursor of the next one.
#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` at the end.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// `items` fetched with `limit`: a full page names its last item's
    /// cursor (`cursor_of`), a short one is the end.
    pub fn new(items: Vec<T>, limit: usize, cursor_of: impl Fn(&T) -> String) -> Page<T> {
        let next_cursor = (items.len() == limit)
            .then(|| items.last().map(cursor_of))
            .flatten();
        Page { items, next_cursor }
    }
}

/// The `limit` asked for, checked.
pub fn limit(l: Option<usize>) -> Result<usize, ApiError> {
    match l.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(ApiError::bad_request("limit must be at least 1")),
        n if n > MAX_LIMIT => Err(ApiError::bad_request(format!(
            "limit must be at most {MAX_LIMIT}"
        ))),
        n => Ok(n),
    }
}

/// A cursor that is a row id this API gave out.
pub fn id_cursor(c: Option<&str>) -> Result<Option<i64>, ApiError> {
    c.map(|c| c.parse::<i64>().map_err(|_| foreign(c)))
        .transpose()
}

/// The error for a cursor the API did not give out (or no longer knows).
pub fn foreign(c: &str) -> ApiError {
    ApiError::bad_request(format!("cursor {c:?} is not one this API gave out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some(MAX_LIMIT)).unwrap(), MAX_LIMIT);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(MAX_LIMIT + 1)).is_err());
        assert_eq!(id_cursor(Some("42")).unwrap(), Some(42));
        assert!(id_cursor(Some("x")).is_err());
        let full = Page::new(vec![3, 2], 2, |n| n.to_string());
        assert_eq!(full.next_cursor.as_deref(), Some("2"));
        let last = Page::new(vec![1], 2, |n| n.to_string());
        assert_eq!(last.next_cursor, None);
    }
}
