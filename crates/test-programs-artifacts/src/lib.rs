//! Paths of the guest components built from `crates/test-programs`.
//!
//! The build script compiles every guest under `crates/test-programs/guests/`
//! for `wasm32-wasip2` (release profile) into this crate's `OUT_DIR` and
//! generates one constant per guest, named after the guest in
//! SHOUTY_SNAKE_CASE, holding the absolute path of its `.wasm` component:
//!
//! ```no_run
//! let bytes = std::fs::read(test_programs_artifacts::HELLO).unwrap();
//! # let _ = bytes;
//! ```
//!
//! Each guest is a `wasi:http/proxy` component (it exports
//! `wasi:http/incoming-handler@0.2.x`). See `crates/test-programs/README.md`
//! for what each guest does.

include!(concat!(env!("OUT_DIR"), "/gen.rs"));

/// Every guest as `(name, path)`, sorted by name. `name` is the guest's
/// directory name under `crates/test-programs/guests/` (e.g. `big-response`).
pub fn all() -> &'static [(&'static str, &'static str)] {
    ALL
}

/// The path of the guest called `name` (e.g. `"stdout-flood"`), if it exists.
pub fn get(name: &str) -> Option<&'static str> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Magic + version/layer of a component-model binary (a core module has
    /// `01 00 00 00` instead).
    const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    #[test]
    fn every_artifact_is_a_component() {
        assert!(!all().is_empty());
        for (name, path) in all() {
            let bytes = std::fs::read(path)
                .unwrap_or_else(|e| panic!("guest {name}: cannot read {path}: {e}"));
            assert!(bytes.len() > COMPONENT_PREAMBLE.len(), "guest {name}: {path} is too small");
            assert_eq!(bytes[..8], COMPONENT_PREAMBLE, "guest {name}: {path} is not a component");
        }
    }

    #[test]
    fn expected_guests_are_present() {
        let expected = [
            ("hello", HELLO),
            ("echo", ECHO),
            ("counter", COUNTER),
            ("spin", SPIN),
            ("membomb", MEMBOMB),
            ("trap", TRAP),
            ("panic", PANIC),
            ("stdout-flood", STDOUT_FLOOD),
            ("logs", LOGS),
            ("env", ENV),
            ("outbound", OUTBOUND),
            ("sleep", SLEEP),
            ("big-response", BIG_RESPONSE),
        ];
        for (name, path) in expected {
            assert_eq!(get(name), Some(path), "guest {name}");
            assert!(std::path::Path::new(path).is_absolute(), "{path} is not absolute");
        }
        assert_eq!(get("no-such-guest"), None);
    }

    #[test]
    fn all_is_sorted_and_unique() {
        let names: Vec<&str> = all().iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }
}
