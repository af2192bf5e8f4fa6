//! The route table: which function answers a normalised path. It lives in the service's
//! snapshot, which is swapped in atomically so that lookups never lock. Its maps are persistent
//! (`imbl`): a deploy clones the table in O(1) and changes only its own function's routes, so a
//! deploy costs the same with ten functions on the node as with ten thousand.

use std::cmp::Reverse;
use std::sync::Arc;

use nimbus_model::{RoutePattern, RouteSpec, normalize_path, prefix_matches};

pub(crate) struct Entry<T> {
    pub(crate) spec: RouteSpec,
    pub(crate) target: Arc<T>,
}

// Not derived: that would require `T: Clone`.
impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry { spec: self.spec.clone(), target: self.target.clone() }
    }
}

pub(crate) struct RouteTable<T> {
    exact: crate::FastMap<String, Vec<Entry<T>>>,
    /// Ordered longest prefix first, then by prefix.
    prefixes: imbl::OrdMap<(Reverse<usize>, String), Vec<Entry<T>>>,
}

impl<T> Clone for RouteTable<T> {
    fn clone(&self) -> Self {
        RouteTable { exact: self.exact.clone(), prefixes: self.prefixes.clone() }
    }
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable { exact: Default::default(), prefixes: imbl::OrdMap::new() }
    }
}

/// What a lookup found.
pub enum RouteMatch<T> {
    Found(Arc<T>),
    /// A route matched the path, but none of its claims admits the method.
    MethodNotAllowed {
        allowed: Vec<String>,
    },
    NotFound,
    /// The path is not valid percent-encoded UTF-8.
    BadPath,
}

impl<T> RouteTable<T> {
    #[cfg(test)]
    pub(crate) fn build(routes: impl IntoIterator<Item = (RoutePattern, Entry<T>)>) -> Self {
        let mut table = RouteTable::default();
        for (pattern, entry) in routes {
            table.insert(pattern, entry);
        }
        table
    }

    pub(crate) fn insert(&mut self, pattern: RoutePattern, entry: Entry<T>) {
        match pattern {
            RoutePattern::Exact(p) => self.exact.entry(p).or_default().push(entry),
            RoutePattern::Prefix(p) => {
                self.prefixes.entry((Reverse(p.len()), p)).or_default().push(entry)
            }
        }
    }

    /// Remove the entries of `pattern` for which `is_target` holds.
    pub(crate) fn remove(&mut self, pattern: &RoutePattern, is_target: impl Fn(&T) -> bool) {
        fn prune<T>(entries: &mut Vec<Entry<T>>, is_target: impl Fn(&T) -> bool) -> bool {
            entries.retain(|e| !is_target(&e.target));
            entries.is_empty()
        }
        match pattern {
            RoutePattern::Exact(p) => {
                if self.exact.get_mut(p).is_some_and(|entries| prune(entries, is_target)) {
                    self.exact.remove(p);
                }
            }
            RoutePattern::Prefix(p) => {
                let key = (Reverse(p.len()), p.clone());
                if self.prefixes.get_mut(&key).is_some_and(|entries| prune(entries, is_target)) {
                    self.prefixes.remove(&key);
                }
            }
        }
    }

    /// The entries that claim exactly `pattern` (what a new claim on it could overlap).
    pub(crate) fn claims(&self, pattern: &RoutePattern) -> &[Entry<T>] {
        let entries = match pattern {
            RoutePattern::Exact(p) => self.exact.get(p),
            RoutePattern::Prefix(p) => self.prefixes.get(&(Reverse(p.len()), p.clone())),
        };
        entries.map_or(&[], Vec::as_slice)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    pub(crate) fn lookup(&self, method: &str, raw_path: &str) -> RouteMatch<T> {
        let Some(path) = normalize_path(raw_path) else {
            return RouteMatch::BadPath;
        };
        let mut allowed: Vec<String> = Vec::new();
        let candidates = self.exact.get(&*path).into_iter().chain(
            self.prefixes
                .iter()
                .filter(|((_, p), _)| prefix_matches(p, &path))
                .map(|(_, entries)| entries),
        );
        for entries in candidates {
            if let Some(e) = entries.iter().find(|e| e.spec.allows(method)) {
                return RouteMatch::Found(e.target.clone());
            }
            allowed.extend(entries.iter().flat_map(|e| e.spec.methods.iter().cloned()));
        }
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            allowed.sort();
            allowed.dedup();
            RouteMatch::MethodNotAllowed { allowed }
        }
    }
}

/// Whether two route claims overlap: the same pattern, with methods in common.
pub(crate) fn claims_overlap(a: &RouteSpec, b: &RouteSpec) -> bool {
    let (Ok(pa), Ok(pb)) = (a.parse(), b.parse()) else { return false };
    pa.same_claim(&pb)
        && (a.methods.is_empty()
            || b.methods.is_empty()
            || a.methods.iter().any(|m| b.methods.contains(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &[&str], &'static str)]) -> RouteTable<&'static str> {
        RouteTable::build(routes.iter().map(|(path, methods, name)| {
            let spec = RouteSpec {
                path: path.to_string(),
                methods: methods.iter().map(|m| m.to_string()).collect(),
            };
            (spec.parse().unwrap(), Entry { spec, target: Arc::new(*name) })
        }))
    }

    fn found(m: RouteMatch<&'static str>) -> Option<&'static str> {
        match m {
            RouteMatch::Found(t) => Some(*t),
            _ => None,
        }
    }

    #[test]
    fn scenarios() {
        let t = table(&[
            ("/hello", &[], "hello"),
            ("/api/...", &[], "api"),
            ("/api/admin/...", &[], "admin"),
            ("/items", &["GET"], "items-read"),
            ("/items", &["POST"], "items-write"),
            ("/...", &[], "catch-all"),
        ]);
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("GET", "/hello", Some("hello")),
            ("GET", "/hello/", Some("hello")),
            ("GET", "/h%65llo", Some("hello")),
            ("GET", "/api", Some("api")),
            ("GET", "/api/users/1", Some("api")),
            ("GET", "/api/admin/x", Some("admin")),
            ("GET", "/api/../hello", Some("hello")),
            ("GET", "/items", Some("items-read")),
            ("POST", "/items", Some("items-write")),
            ("GET", "/elsewhere", Some("catch-all")),
            ("DELETE", "/items", Some("catch-all")),
        ];
        for (method, path, want) in cases {
            assert_eq!(found(t.lookup(method, path)), *want, "{method} {path}");
        }
    }

    #[test]
    fn not_found_and_method_not_allowed() {
        let t = table(&[("/items", &["GET"], "items"), ("/a/...", &[], "a")]);
        assert!(matches!(t.lookup("GET", "/nope"), RouteMatch::NotFound));
        assert!(matches!(t.lookup("GET", "/ab"), RouteMatch::NotFound));
        match t.lookup("PUT", "/items") {
            RouteMatch::MethodNotAllowed { allowed } => assert_eq!(allowed, vec!["GET"]),
            _ => panic!("expected 405"),
        }
        assert!(matches!(t.lookup("GET", "/bad%zz"), RouteMatch::BadPath));
    }

    /// A change edits a clone of the table: the clone loses one function's entries, the
    /// original (what in-flight lookups hold) keeps them, and a claim shared with another
    /// function keeps that function's entry.
    #[test]
    fn removing_a_functions_routes_edits_only_the_clone() {
        let t = table(&[
            ("/items", &["GET"], "items-read"),
            ("/items", &["POST"], "items-write"),
            ("/api/...", &[], "api"),
        ]);
        let mut next = t.clone();
        for path in ["/items", "/api/..."] {
            let spec = RouteSpec { path: path.into(), methods: vec![] };
            next.remove(&spec.parse().unwrap(), |name| *name == "items-read" || *name == "api");
        }
        assert_eq!(found(next.lookup("POST", "/items")), Some("items-write"));
        assert!(matches!(next.lookup("GET", "/items"), RouteMatch::MethodNotAllowed { .. }));
        assert!(matches!(next.lookup("GET", "/api/x"), RouteMatch::NotFound));
        let api = RouteSpec { path: "/api/...".into(), methods: vec![] }.parse().unwrap();
        assert!(next.claims(&api).is_empty());
        assert_eq!(found(t.lookup("GET", "/items")), Some("items-read"));
        assert_eq!(found(t.lookup("GET", "/api/x")), Some("api"));
        assert_eq!(t.claims(&api).len(), 1);
        next.remove(&RouteSpec { path: "/items".into(), methods: vec![] }.parse().unwrap(), |_| {
            true
        });
        assert!(next.is_empty());
    }

    #[test]
    fn overlap() {
        let r = |p: &str, m: &[&str]| RouteSpec {
            path: p.into(),
            methods: m.iter().map(|s| s.to_string()).collect(),
        };
        assert!(claims_overlap(&r("/a", &[]), &r("/a/", &[])));
        assert!(claims_overlap(&r("/a", &["GET"]), &r("/a", &[])));
        assert!(!claims_overlap(&r("/a", &["GET"]), &r("/a", &["POST"])));
        assert!(!claims_overlap(&r("/a/...", &[]), &r("/a", &[])));
        assert!(!claims_overlap(&r("/a/...", &[]), &r("/a/b/...", &[])));
    }
}
