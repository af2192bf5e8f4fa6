//! What the tests of stepped work (pruning records and events, deleting a collection, a bucket,
//! or a project's events and users) share: a writer that keeps writing beside the long
//! operation, to show that its writes get in between steps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Run `op` while another thread calls `write(i)` in a loop. Returns what `op` returned, how many
/// writes began and ended while it ran, and how many writes there were in all.
pub(crate) fn writes_beside<T>(
    mut write: impl FnMut(usize) + Send + 'static,
    op: impl FnOnce() -> T,
) -> (T, usize, usize) {
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut spans = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let start = Instant::now();
                write(spans.len());
                spans.push((start, Instant::now()));
            }
            spans
        })
    };
    // The writer is under way before the operation starts.
    std::thread::sleep(Duration::from_millis(20));
    let start = Instant::now();
    let out = op();
    let end = Instant::now();
    done.store(true, Ordering::Relaxed);
    let spans = writer.join().expect("the writer does not panic");
    let inside = spans.iter().filter(|(a, b)| *a > start && *b < end).count();
    (out, inside, spans.len())
}
