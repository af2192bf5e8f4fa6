//! Evaluating the common kinds of rule allocates nothing: a counting global allocator checks it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use nimbus_rules::{Env, Rule};
use serde_json::json;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn hot_path_does_not_allocate() {
    let env = Env::new(["auth", "doc", "file", "request"]).unwrap();
    let auth = json!({"id": "u1", "roles": ["user", "admin"], "claims": {"tier": "pro"}});
    let doc = json!({"owner": "u1", "title": "hello", "status": "draft", "meta": {"tags": ["a"]}});
    let file = json!({"path": "users/u1/a.png", "size": 1000});
    let ctx = env
        .context()
        .bind("auth", &auth)
        .unwrap()
        .bind("doc", &doc)
        .unwrap()
        .bind("file", &file)
        .unwrap();
    for src in [
        "auth.id != null && doc.owner == auth.id",
        r#""admin" in auth.roles"#,
        r#"startsWith(file.path, "users/" + auth.id + "/")"#,
        r#"doc.status in ["draft", "published"] && exists(doc.meta.tags) && size(doc.title) <= 100"#,
        r#"auth.id != null && (doc.owner == auth.id || "admin" in auth.roles) && matches(doc.title, "^h[a-z]+$") && endsWith(file.path, ".png")"#,
    ] {
        let rule = Rule::compile(src, &env).unwrap();
        assert!(rule.allows(&ctx), "{src}"); // warm up (the regex's per-thread cache)
        let before = allocations();
        for _ in 0..100 {
            assert!(rule.allows(&ctx));
        }
        assert_eq!(allocations() - before, 0, "{src} allocated");
    }
}
