//! The incremental compilation cache: Cranelift's compiled functions, keyed by content, kept on
//! disk in the data directory and shared by every project.
//!
//! A JavaScript or Python component is mostly its language engine, identical from one edit to the
//! next; with this cache only the functions that changed are compiled again. Cranelift asks
//! [`CacheStore::get`] for every function it is about to compile (the key is a SHA-256 of the
//! function's IR and the compiler's settings) and [`CacheStore::insert`]s what it compiled.
//!
//! Wasmtime ships only the trait; the store is ours (no maintained crate keeps a bounded,
//! crash-safe, content-addressed file cache with these properties):
//! - **One file per entry**, `<dir>/<2 hex>/<64 hex>` named by SHA-256 of the key, written to
//!   `<dir>/tmp/` then renamed, so readers see either no entry or a whole one, and concurrent
//!   deploys writing the same entry just replace equal bytes.
//! - **Corruption is a miss, never a wrong answer.** Cranelift deserializes a value with postcard
//!   and uses it if it parses: a flipped bit inside machine code would parse fine and run. Every
//!   entry therefore carries a header with its key and a CRC-32 of key and value; a mismatch (a
//!   file torn by a crash, since entries are not fsynced, or garbage) deletes the entry and
//!   answers a miss, and Cranelift compiles the function afresh.
//! - **Bounded**: a byte budget over the sizes of the entry files; past it, least recently used
//!   entries are deleted until the total is under 90% of the budget (so eviction runs in batches,
//!   not on every insert). Recency is tracked in memory (a hit writes nothing to disk); at start
//!   the index is rebuilt from the directory with the files' modification times as the order.
//! - **Counted**: hits, misses, corrupt entries, inserts and evictions, in total, and per
//!   compile through [`CompileScope`].
//!
//! What it holds is compiled code keyed by a hash of that code's IR: a tenant can only get an
//! entry back by compiling the very same function, so it never hands one tenant another's code
//! or data it does not already have.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hashlink::LruCache;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::CacheStore;

const MAGIC: &[u8; 8] = b"nimbcc01";
/// magic, CRC-32, key length (u32), value length (u64).
const HEADER_LEN: usize = 8 + 4 + 4 + 8;
const TMP_DIR: &str = "tmp";

/// Where the cache lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct CompileCacheConfig {
    pub dir: PathBuf,
    /// Total bytes of entries kept; least recently used ones go beyond it.
    pub max_bytes: u64,
}

/// Counters of the cache since the process started, and its current size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileCacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Of the hits, functions taken without translation (see [`CacheUse::untranslated`]).
    pub untranslated: u64,
    /// Entries found unreadable or corrupt (deleted, and counted as misses too).
    pub corrupt: u64,
    pub inserts: u64,
    pub evictions: u64,
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

/// How one compilation used the cache: functions taken from it and functions compiled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUse {
    pub hits: u64,
    pub misses: u64,
    /// Of the hits, functions taken without translating them from Wasm: their body and their
    /// module's context were compiled before (see [`WHOLE_KEY_PREFIX`]).
    pub untranslated: u64,
}

/// Prefix of the keys of the cache Nimbus's patch of `wasmtime-internal-cranelift` adds
/// (`vendor/wasmtime-internal-cranelift/src/coarse_cache.rs`, `KEY_PREFIX`): functions keyed by
/// their Wasm body and module context, looked up before translation. A miss there is followed
/// by the ordinary lookup of the translated function, so it is not counted as a miss; a hit is
/// a hit that also skipped translation.
pub const WHOLE_KEY_PREFIX: &[u8] = b"nimbus-coarse-v1\0";

/// Per-compile counters. The store is engine-wide and deploys compile concurrently, so a compile
/// runs on rayon threads of its own (see `Runtime::compile`) whose thread-local scope points
/// here: every lookup is counted for the compile that made it.
#[derive(Debug, Default)]
pub(crate) struct CompileScope {
    hits: AtomicU64,
    misses: AtomicU64,
    untranslated: AtomicU64,
    /// Time the compile's threads spent in lookups (reading and checking entries) and in
    /// inserts (writing them), summed over threads, and the bytes of entries read: the deploy's
    /// per-phase breakdown.
    read_nanos: AtomicU64,
    read_bytes: AtomicU64,
    write_nanos: AtomicU64,
}

/// Time a compile's threads spent in the cache, summed over threads (they run in parallel, so
/// this can exceed the compile's wall time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheIo {
    pub read: Duration,
    pub read_bytes: u64,
    pub write: Duration,
}

impl CompileScope {
    pub(crate) fn usage(&self) -> CacheUse {
        CacheUse {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            untranslated: self.untranslated.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn io(&self) -> CacheIo {
        CacheIo {
            read: Duration::from_nanos(self.read_nanos.load(Ordering::Relaxed)),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write: Duration::from_nanos(self.write_nanos.load(Ordering::Relaxed)),
        }
    }
}

thread_local! {
    static SCOPE: RefCell<Option<Arc<CompileScope>>> = const { RefCell::new(None) };
}

/// Count this thread's lookups for `scope` from now on (called when a compile's thread starts).
pub(crate) fn enter_scope(scope: Arc<CompileScope>) {
    SCOPE.with(|s| *s.borrow_mut() = Some(scope));
}

fn count_scope(hit: bool, whole: bool) {
    SCOPE.with(|s| {
        if let Some(scope) = &*s.borrow() {
            let c = if hit { &scope.hits } else { &scope.misses };
            c.fetch_add(1, Ordering::Relaxed);
            if hit && whole {
                scope.untranslated.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

fn time_scope(read: bool, since: Instant, bytes: u64) {
    let nanos = since.elapsed().as_nanos() as u64;
    SCOPE.with(|s| {
        if let Some(scope) = &*s.borrow() {
            if read {
                scope.read_nanos.fetch_add(nanos, Ordering::Relaxed);
                scope.read_bytes.fetch_add(bytes, Ordering::Relaxed);
            } else {
                scope.write_nanos.fetch_add(nanos, Ordering::Relaxed);
            }
        }
    });
}

type Name = [u8; 32];

/// An indexed entry: its file's size, and which write of the name it is.
#[derive(Clone, Copy)]
struct Slot {
    size: u64,
    generation: u64,
}

/// The entries present, least recently used first. Renames into place and deletions of entry
/// files happen under its lock, checked against the slot's generation, so a thread that found an
/// entry corrupt (or evicted it) never deletes the fresh copy another thread just wrote.
struct Index {
    lru: LruCache<Name, Slot>,
    bytes: u64,
    generations: u64,
}

impl Index {
    fn remove(&mut self, name: &Name) {
        if let Some(slot) = self.lru.remove(name) {
            self.bytes -= slot.size;
        }
    }
}

/// The disk-backed [`CacheStore`].
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    tmp_seq: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    untranslated: AtomicU64,
    corrupt: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl DiskCache {
    /// Open (creating) the cache directory: remove temporary files a crash left behind, index
    /// the entries present, and trim them to the budget.
    pub fn open(config: &CompileCacheConfig) -> io::Result<DiskCache> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(TMP_DIR);
        // Leftovers of writes a crash interrupted: never renamed, so never entries.
        match fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir_all(&tmp)?;

        let mut found: Vec<(SystemTime, Name, u64)> = Vec::new();
        for shard in fs::read_dir(&dir)? {
            let shard = shard?;
            let shard_name = shard.file_name();
            let Some(prefix) = shard_name.to_str().filter(|s| s.len() == 2) else { continue };
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let file_name = entry.file_name();
                let name = file_name.to_str().and_then(parse_name);
                match name {
                    Some(name) if hex::encode(&name[..1]) == prefix => {
                        let meta = entry.metadata()?;
                        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        found.push((mtime, name, meta.len()));
                    }
                    // Not ours (or misplaced): leave it, it is not counted or served.
                    _ => {}
                }
            }
        }
        // Oldest first: the least recently written is the first to go.
        found.sort_by_key(|(t, _, _)| *t);
        let mut lru = LruCache::new_unbounded();
        let mut bytes = 0u64;
        for (_, name, size) in found {
            bytes += size;
            lru.insert(name, Slot { size, generation: 0 });
        }
        let cache = DiskCache {
            dir,
            max_bytes: config.max_bytes,
            index: Mutex::new(Index { lru, bytes, generations: 0 }),
            tmp_seq: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            untranslated: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        };
        cache.evict_if_over();
        Ok(cache)
    }

    pub fn stats(&self) -> CompileCacheStats {
        let (entries, bytes) = {
            let index = self.index.lock();
            (index.lru.len() as u64, index.bytes)
        };
        CompileCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            untranslated: self.untranslated.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries,
            bytes,
            max_bytes: self.max_bytes,
        }
    }

    fn path_of(&self, name: &Name) -> PathBuf {
        let hex = hex::encode(name);
        self.dir.join(&hex[..2]).join(hex)
    }

    fn miss(&self, whole: bool) -> Option<Cow<'_, [u8]>> {
        if !whole {
            self.misses.fetch_add(1, Ordering::Relaxed);
            count_scope(false, false);
        }
        None
    }

    fn lookup(&self, key: &[u8]) -> Option<Vec<u8>> {
        let name = name_of(key);
        // The index knows every entry: no file system call for a function never seen.
        let generation = self.index.lock().lru.peek(&name)?.generation;
        let path = self.path_of(&name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                // Evicted meanwhile, or deleted by hand.
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "reading a compile cache entry");
                }
                let mut index = self.index.lock();
                if index.lru.peek(&name).is_some_and(|s| s.generation == generation) {
                    index.remove(&name);
                }
                return None;
            }
        };
        match decode(key, bytes) {
            Some(value) => {
                // Recency lives in memory only: a hit writes nothing.
                self.index.lock().lru.get(&name);
                Some(value)
            }
            None => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), "corrupt compile cache entry; removed");
                let mut index = self.index.lock();
                // Unless another compile has written the entry again since it was read.
                if index.lru.peek(&name).is_some_and(|s| s.generation == generation) {
                    index.remove(&name);
                    let _ = fs::remove_file(&path);
                }
                None
            }
        }
    }

    fn store(&self, key: &[u8], value: &[u8]) -> io::Result<bool> {
        let size = (HEADER_LEN + key.len() + value.len()) as u64;
        if size > self.max_bytes {
            return Ok(false);
        }
        let name = name_of(key);
        let path = self.path_of(&name);
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(TMP_DIR).join(format!("{}-{seq}", std::process::id()));
        // No fsync: this is a cache. After a crash an entry may be torn or empty; its checksum
        // then makes it a miss. Syncing tens of thousands of small files would cost more than
        // the compile it saves.
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&encode_header(key, value))?;
            f.write_all(key)?;
            f.write_all(value)?;
            drop(f);
            let mut index = self.index.lock();
            match fs::rename(&tmp, &path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(path.parent().expect("entries live in a shard"))?;
                    fs::rename(&tmp, &path)?;
                }
                r => r?,
            }
            index.generations += 1;
            let generation = index.generations;
            if let Some(old) = index.lru.insert(name, Slot { size, generation }) {
                index.bytes -= old.size;
            }
            index.bytes += size;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.inserts.fetch_add(1, Ordering::Relaxed);
        self.evict_if_over();
        Ok(true)
    }

    /// Past the budget, drop least recently used entries down to 90% of it.
    fn evict_if_over(&self) {
        let victims: Vec<Name> = {
            let mut index = self.index.lock();
            if index.bytes <= self.max_bytes {
                return;
            }
            let target = self.max_bytes / 10 * 9;
            let mut victims = Vec::new();
            while index.bytes > target {
                let Some((name, slot)) = index.lru.remove_lru() else { break };
                index.bytes -= slot.size;
                victims.push(name);
            }
            victims
        };
        // One file at a time under the lock, so a long eviction does not hold up compiles; an
        // entry written again meanwhile is indexed again and stays.
        self.evictions.fetch_add(victims.len() as u64, Ordering::Relaxed);
        for name in victims {
            let index = self.index.lock();
            if !index.lru.contains_key(&name) {
                let _ = fs::remove_file(self.path_of(&name));
            }
        }
    }
}

impl CacheStore for DiskCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let start = Instant::now();
        let found = self.lookup(key);
        time_scope(true, start, found.as_ref().map_or(0, |v| v.len() as u64));
        let whole = key.starts_with(WHOLE_KEY_PREFIX);
        match found {
            Some(value) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                if whole {
                    self.untranslated.fetch_add(1, Ordering::Relaxed);
                }
                count_scope(true, whole);
                Some(Cow::Owned(value))
            }
            None => self.miss(whole),
        }
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let start = Instant::now();
        let stored = self.store(key, &value);
        time_scope(false, start, 0);
        match stored {
            Ok(stored) => stored,
            Err(e) => {
                // A full disk or a permission problem costs speed, never a deploy.
                tracing::warn!(dir = %self.dir.display(), error = %e, "writing a compile cache entry");
                false
            }
        }
    }
}

fn name_of(key: &[u8]) -> Name {
    Sha256::digest(key).into()
}

fn parse_name(s: &str) -> Option<Name> {
    let mut name = [0u8; 32];
    hex::decode_to_slice(s, &mut name).ok()?;
    Some(name)
}

fn checksum(key: &[u8], value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(value);
    h.finalize()
}

fn encode_header(key: &[u8], value: &[u8]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&checksum(key, value).to_le_bytes());
    header[12..16].copy_from_slice(&(key.len() as u32).to_le_bytes());
    header[16..24].copy_from_slice(&(value.len() as u64).to_le_bytes());
    header
}

/// The value of an entry file, if it is whole, for this key, and its checksum matches.
fn decode(key: &[u8], mut file: Vec<u8>) -> Option<Vec<u8>> {
    if file.len() < HEADER_LEN || &file[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(file[8..12].try_into().ok()?);
    let key_len = u32::from_le_bytes(file[12..16].try_into().ok()?) as usize;
    let value_len = u64::from_le_bytes(file[16..24].try_into().ok()?);
    let body = &file[HEADER_LEN..];
    if key_len != key.len()
        || body.len() as u64 != key_len as u64 + value_len
        || &body[..key_len] != key
    {
        return None;
    }
    if checksum(key, &body[key_len..]) != crc {
        return None;
    }
    file.drain(..HEADER_LEN + key_len);
    Some(file)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn open(dir: &Path, max_bytes: u64) -> DiskCache {
        DiskCache::open(&CompileCacheConfig { dir: dir.to_path_buf(), max_bytes }).unwrap()
    }

    fn entry_files(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for shard in fs::read_dir(dir).unwrap() {
            let shard = shard.unwrap();
            if shard.file_name() == TMP_DIR || !shard.file_type().unwrap().is_dir() {
                continue;
            }
            for e in fs::read_dir(shard.path()).unwrap() {
                files.push(e.unwrap().path());
            }
        }
        files
    }

    #[test]
    fn round_trip_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path(), 1 << 20);
        assert!(cache.get(b"k1").is_none());
        assert!(cache.insert(b"k1", b"value one".to_vec()));
        assert_eq!(cache.get(b"k1").as_deref(), Some(&b"value one"[..]));
        assert!(cache.get(b"k2").is_none());
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.inserts, s.entries), (1, 2, 1, 1));
        assert_eq!(s.bytes, (HEADER_LEN + 2 + 9) as u64);
        drop(cache);

        let cache = open(dir.path(), 1 << 20);
        assert_eq!(cache.get(b"k1").as_deref(), Some(&b"value one"[..]));
        assert_eq!(cache.stats().entries, 1);
    }

    #[test]
    fn corrupt_entries_are_misses_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path(), 1 << 20);
        let value = vec![7u8; 1000];
        for k in [&b"flip"[..], b"torn", b"garbage", b"empty", b"other-key"] {
            assert!(cache.insert(k, value.clone()));
        }
        let path = |k: &[u8]| cache.path_of(&name_of(k));
        // A flipped bit in the value: postcard would still parse it; the checksum does not.
        let mut bytes = fs::read(path(b"flip")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(path(b"flip"), bytes).unwrap();
        // A write torn by a crash.
        let bytes = fs::read(path(b"torn")).unwrap();
        fs::write(path(b"torn"), &bytes[..bytes.len() / 2]).unwrap();
        fs::write(path(b"garbage"), b"not an entry at all, just some bytes here").unwrap();
        fs::write(path(b"empty"), b"").unwrap();
        // An entry whose file holds another key's entry (a misplaced file).
        fs::copy(path(b"flip"), path(b"other-key")).unwrap();

        for k in [&b"flip"[..], b"torn", b"garbage", b"empty", b"other-key"] {
            assert!(cache.get(k).is_none(), "{}", String::from_utf8_lossy(k));
            assert!(!path(k).exists(), "a corrupt entry is deleted");
        }
        let s = cache.stats();
        assert_eq!((s.corrupt, s.hits, s.entries, s.bytes), (5, 0, 0, 0));
        // And a fresh insert of the same key works again.
        assert!(cache.insert(b"torn", value.clone()));
        assert_eq!(cache.get(b"torn").as_deref(), Some(&value[..]));
    }

    #[test]
    fn leftovers_of_a_crash_do_not_break_opening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let cache = open(dir.path(), 1 << 20);
            assert!(cache.insert(b"good", b"good value".to_vec()));
            assert!(cache.insert(b"bad", b"bad value".to_vec()));
        }
        // What a kill -9 can leave: half-written temporary files, a truncated entry, and stray
        // files that are not entries.
        fs::write(dir.path().join(TMP_DIR).join("123-0"), b"half").unwrap();
        let bad =
            dir.path().join(hex::encode(&name_of(b"bad")[..1])).join(hex::encode(name_of(b"bad")));
        fs::write(&bad, b"nimbcc01\x00").unwrap();
        fs::write(dir.path().join("stray"), b"x").unwrap();
        fs::create_dir_all(dir.path().join("zz")).unwrap();
        fs::write(dir.path().join("zz").join("nothex"), b"x").unwrap();

        let cache = open(dir.path(), 1 << 20);
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
        assert_eq!(cache.get(b"good").as_deref(), Some(&b"good value"[..]));
        assert!(cache.get(b"bad").is_none());
        assert_eq!(cache.stats().corrupt, 1);
        assert!(cache.insert(b"bad", b"bad value".to_vec()));
        assert_eq!(cache.get(b"bad").as_deref(), Some(&b"bad value"[..]));
    }

    #[test]
    fn eviction_keeps_the_size_under_the_budget_and_drops_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let entry = (HEADER_LEN + 4 + 1000) as u64;
        let budget = entry * 10;
        let cache = open(dir.path(), budget);
        let key = |i: u32| format!("k{i:03}").into_bytes();
        for i in 0..10 {
            assert!(cache.insert(&key(i), vec![i as u8; 1000]));
        }
        assert_eq!(cache.stats().bytes, budget);
        // k000 used recently: it must survive the eviction k010 causes.
        assert!(cache.get(&key(0)).is_some());
        assert!(cache.insert(&key(10), vec![10; 1000]));
        let s = cache.stats();
        assert!(s.bytes <= budget / 10 * 9, "{s:?}");
        assert!(s.evictions >= 2, "{s:?}");
        assert!(cache.get(&key(0)).is_some(), "recently used entry evicted");
        assert!(cache.get(&key(10)).is_some());
        assert!(cache.get(&key(1)).is_none(), "least recently used entry kept");
        // The files follow the index.
        let on_disk: u64 =
            entry_files(dir.path()).iter().map(|p| p.metadata().unwrap().len()).sum();
        assert_eq!(on_disk, cache.stats().bytes);

        for i in 11..200 {
            assert!(cache.insert(&key(i), vec![1; 1000]));
            assert!(cache.stats().bytes <= budget);
        }
        // An entry larger than the whole budget is refused, not stored.
        assert!(!cache.insert(b"huge", vec![0; budget as usize]));
        // A smaller budget on reopen trims at once.
        drop(cache);
        let cache = open(dir.path(), entry * 3);
        assert!(cache.stats().bytes <= entry * 3);
        let on_disk: u64 =
            entry_files(dir.path()).iter().map(|p| p.metadata().unwrap().len()).sum();
        assert_eq!(on_disk, cache.stats().bytes);
    }

    #[test]
    fn concurrent_inserts_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(open(dir.path(), 1 << 30));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0..200u32 {
                        // Half the keys are shared by every thread: concurrent writes of one entry.
                        let k = if i % 2 == 0 { format!("shared{i}") } else { format!("t{t}-{i}") };
                        let v = k.repeat(50).into_bytes();
                        assert!(cache.insert(k.as_bytes(), v.clone()));
                        assert_eq!(cache.get(k.as_bytes()).as_deref(), Some(&v[..]));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = cache.stats();
        assert_eq!(s.entries, 100 + 8 * 100);
        assert_eq!(s.corrupt, 0);
        assert_eq!(entry_files(dir.path()).len() as u64, s.entries);
        let on_disk: u64 =
            entry_files(dir.path()).iter().map(|p| p.metadata().unwrap().len()).sum();
        assert_eq!(on_disk, s.bytes);
    }

    #[test]
    fn whole_function_lookups_count_hits_but_not_misses() {
        // A miss of the untranslated lookup is followed by the lookup of the translated
        // function, which counts; a hit is the only lookup of that function.
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path(), 1 << 20);
        let whole = |k: &[u8]| [WHOLE_KEY_PREFIX, k].concat();
        cache.insert(&whole(b"a"), b"1".to_vec());
        let scope = Arc::new(CompileScope::default());
        enter_scope(scope.clone());
        assert!(cache.get(&whole(b"a")).is_some());
        assert!(cache.get(&whole(b"b")).is_none());
        assert!(cache.get(b"b").is_none());
        assert_eq!(scope.usage(), CacheUse { hits: 1, misses: 1, untranslated: 1 });
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.untranslated), (1, 1, 1));
    }

    #[test]
    fn lookups_count_in_the_scope_of_their_thread() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path(), 1 << 20);
        cache.insert(b"a", b"1".to_vec());
        let scope = Arc::new(CompileScope::default());
        enter_scope(scope.clone());
        cache.get(b"a");
        cache.get(b"b");
        cache.get(b"a");
        assert_eq!(scope.usage(), CacheUse { hits: 2, misses: 1, untranslated: 0 });
        // Another thread's lookups are not this scope's.
        std::thread::scope(|s| {
            s.spawn(|| cache.get(b"a"));
        });
        assert_eq!(scope.usage(), CacheUse { hits: 2, misses: 1, untranslated: 0 });
    }
}
