//! The route table: which function answers a normalised path, built whole on every change and
//! swapped in atomically, so lookups never lock.

use std::collections::HashMap;
use std::sync::Arc;

use nimbus_model::{RoutePattern, RouteSpec, normalize_path, prefix_matches};

pub(crate) struct Entry<T> {
    pub(crate) spec: RouteSpec,
    pub(crate) target: Arc<T>,
}

pub(crate) struct RouteTable<T> {
    exact: HashMap<String, Vec<Entry<T>>>,
    /// Longest prefix first.
    prefixes: Vec<(String, Vec<Entry<T>>)>,
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
    pub(crate) fn build(routes: impl IntoIterator<Item = (RoutePattern, Entry<T>)>) -> Self {
        let mut exact: HashMap<String, Vec<Entry<T>>> = HashMap::new();
        let mut prefixes: HashMap<String, Vec<Entry<T>>> = HashMap::new();
        for (pattern, entry) in routes {
            match pattern {
                RoutePattern::Exact(p) => exact.entry(p).or_default().push(entry),
                RoutePattern::Prefix(p) => prefixes.entry(p).or_default().push(entry),
            }
        }
        let mut prefixes: Vec<_> = prefixes.into_iter().collect();
        prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        RouteTable { exact, prefixes }
    }

    pub(crate) fn lookup(&self, method: &str, raw_path: &str) -> RouteMatch<T> {
        let Some(path) = normalize_path(raw_path) else {
            return RouteMatch::BadPath;
        };
        let mut allowed: Vec<String> = Vec::new();
        let candidates = self.exact.get(&path).into_iter().chain(
            self.prefixes
                .iter()
                .filter(|(p, _)| prefix_matches(p, &path))
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
