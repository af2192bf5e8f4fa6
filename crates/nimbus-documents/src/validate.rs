//! Checks on names, ids and document bodies.

use serde_json::Value;

use crate::error::{DocError, Result};

/// Collection and index names: `[a-z][a-z0-9_]{0,62}`.
pub fn validate_collection_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DocError::invalid(
            "invalid_name",
            format!("invalid name {name:?}: use [a-z][a-z0-9_]*, at most 63 characters"),
        ))
    }
}

/// Document ids: `[A-Za-z0-9_-]{1,128}` (URL- and path-safe; no `.` so no `..`).
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(DocError::invalid(
            "invalid_id",
            format!("invalid document id {id:?}: use [A-Za-z0-9_-], 1 to 128 characters"),
        ))
    }
}

/// How deep a document may nest (objects and lists).
pub const MAX_DEPTH: usize = 32;

/// Parse a request body as a JSON document: an object, not deeper than [`MAX_DEPTH`], not larger
/// than `max_bytes`.
pub fn parse_document(body: &[u8], max_bytes: usize) -> Result<Value> {
    if body.len() > max_bytes {
        return Err(DocError::TooLarge(format!(
            "the document is {} bytes; the limit is {max_bytes}",
            body.len()
        )));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        DocError::invalid("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    check_document(&value, max_bytes)?;
    Ok(value)
}

/// A document (after a merge patch, say) is an object within the depth and size limits.
pub fn check_document(value: &Value, max_bytes: usize) -> Result<()> {
    if !value.is_object() {
        return Err(DocError::invalid("invalid_document", "a document is a JSON object"));
    }
    if depth(value) > MAX_DEPTH {
        return Err(DocError::invalid(
            "too_deep",
            format!("the document nests deeper than {MAX_DEPTH} levels"),
        ));
    }
    let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > max_bytes {
        return Err(DocError::TooLarge(format!(
            "the document is {size} bytes; the limit is {max_bytes}"
        )));
    }
    Ok(())
}

/// Nesting depth, without recursion (serde_json already refuses nesting over 128 on parse, but a
/// merge patch can build deeper values).
fn depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Object(m) => stack.extend(m.values().map(|c| (c, d + 1))),
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_and_shape() {
        let mut deep = serde_json::json!(1);
        for _ in 0..40 {
            deep = serde_json::json!({ "a": deep });
        }
        assert!(matches!(
            check_document(&deep, 1 << 20),
            Err(DocError::Invalid { code: "too_deep", .. })
        ));
        assert!(check_document(&serde_json::json!([1]), 1 << 20).is_err());
        assert!(check_document(&serde_json::json!({"a": [1, {"b": 2}]}), 1 << 20).is_ok());
        assert!(matches!(
            parse_document(b"{\"a\":", 100),
            Err(DocError::Invalid { code: "invalid_json", .. })
        ));
        assert!(matches!(parse_document(&[b' '; 200], 100), Err(DocError::TooLarge(_))));
        assert!(validate_id("a-B_9").is_ok());
        for bad in ["", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
