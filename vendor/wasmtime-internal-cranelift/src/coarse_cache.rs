//! NIMBUS PATCH (see vendor/README.md): a function cache keyed *before* translation.
//!
//! Cranelift's incremental cache keys a function by its IR, so every function of a module is
//! translated from Wasm (and validated) before its lookup: for the 20,000 functions of a
//! JavaScript or Python engine that is seconds, even when every lookup hits. An edit of the
//! user's code in those languages changes only the data segments of the engine's snapshot.
//!
//! This cache keys a function by its body's bytes and everything else its code depends on (the
//! module context, below), so a hit skips translation, validation and code generation. The
//! context is hashed once per module and compile:
//! - every section of the module except the code section (each body is in its own key), the
//!   data section's contents, and the custom sections that only name things (`name`,
//!   `producers`, DWARF); the memory section's minimum size and the globals' initializers are
//!   included, because bounds checks and constant globals are compiled against them;
//! - what the component's translation adds: the interned type of each type index (a
//!   `call_indirect` checks against it), the statically known imports (direct calls to another
//!   module's functions), and which data and element segments are passive;
//! - the module's index in its component, the Wasm features, the ISA and its flags, Wasmtime's
//!   tunables and this crate's version.
//!
//! Skipping validation is sound because the key covers everything validation reads: an entry is
//! only written after its function was validated and compiled in an identical context.
//!
//! An entry holds Cranelift's own cache value for the function (the incremental cache's bytes,
//! read or written while compiling it), whose source locations are relative to the function's
//! base location. The code does not depend on where the module sits in its component, but the
//! locations do (they are offsets in the component's bytes, for traps and backtraces): an entry
//! keeps the body's offset it was compiled at, and a hit moves the base by the difference. A
//! Python component's engine module moves whenever the snapshot module before it changes size.
//!
//! The result is the same `CompiledFunction` a compile would build, so the artifact is identical
//! byte for byte (Nimbus's `nimbus-runtime` tests compare them).

use cranelift_codegen::CompiledCode;
use cranelift_codegen::incremental_cache::try_finish_recompile;
use cranelift_codegen::ir::{self, SourceLoc, UserExternalName, UserExternalNameRef};
use cranelift_codegen::isa::TargetIsa;
use cranelift_entity::PrimaryMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use wasmparser::{BinaryReader, FunctionBody, WasmFeatures};
use wasmtime_environ::{
    CacheStore, DefinedFuncIndex, EngineOrModuleTypeIndex, ModuleTranslation, ModuleTypesBuilder,
    PassiveElemIndex, RuntimeDataIndex, Tunables,
};

/// Prefix of every key of this cache in the shared [`CacheStore`] (Cranelift's own keys are
/// SHA-256 digests of 32 bytes, so they never start with it). Nimbus's store counts the two
/// kinds apart by it.
pub const KEY_PREFIX: &[u8] = b"nimbus-coarse-v1\0";

/// Bumped when the entry's layout or meaning changes; part of every key.
const FORMAT: u32 = 1;

/// How many module contexts are remembered (a component has a handful of modules; concurrent
/// compiles add theirs).
const MEMO_LEN: usize = 64;

/// Whether a compile with these settings may use the cache: what it stores is what
/// `finish_with_info` builds without debug info, guest debugging or inlining.
pub fn applies(tunables: &Tunables) -> bool {
    !tunables.debug_native
        && !tunables.debug_guest
        && tunables.inlining == wasmtime_environ::Inlining::No
}

/// The module contexts of recent compiles. Functions of one module are compiled in parallel
/// and each needs its module's context hash; computing it reads all of the module's non-code
/// sections, so it is remembered. The addresses of the translation are only a hint (a later
/// compile can reuse them): every use compares the inputs themselves.
#[derive(Default)]
pub struct Memo {
    recent: Mutex<Vec<Arc<ModuleContext>>>,
}

pub struct ModuleContext {
    hint: (usize, usize, usize, usize),
    /// The inputs of the hash, compared (not hashed or formatted again) on every use: the byte
    /// ranges of the module hashed and a copy of their bytes, the interned types, the known
    /// imports (as text: `KnownFunc` has no equality, and they are few) and which segments are
    /// passive.
    ranges: Vec<Range<usize>>,
    bytes: Vec<u8>,
    types: Vec<EngineOrModuleTypeIndex>,
    known: String,
    data_segments: Vec<Option<RuntimeDataIndex>>,
    elem_segments: Vec<Option<PassiveElemIndex>>,
    hash: [u8; 32],
}

impl ModuleContext {
    fn new(
        translation: &ModuleTranslation<'_>,
        types: &ModuleTypesBuilder,
        settings: &[u8],
    ) -> Option<ModuleContext> {
        let ranges = hashed_ranges(translation.wasm)?;
        let mut bytes = Vec::with_capacity(ranges.iter().map(|r| r.len()).sum());
        for r in &ranges {
            bytes.extend_from_slice(&translation.wasm[r.clone()]);
        }
        let module_types: Vec<_> = translation.module.types.values().copied().collect();
        let known = known_imports(translation);
        let data_segments: Vec<_> = translation.runtime_data_map.values().copied().collect();
        let elem_segments: Vec<_> = translation.passive_elem_map.values().copied().collect();

        let mut h = Sha256::new();
        h.update(settings);
        h.update((ranges.len() as u64).to_le_bytes());
        for r in &ranges {
            h.update((r.len() as u64).to_le_bytes());
            h.update(&translation.wasm[r.clone()]);
        }
        h.update(format!("{module_types:?}").as_bytes());
        h.update((known.len() as u64).to_le_bytes());
        h.update(known.as_bytes());
        h.update(format!("{data_segments:?}{elem_segments:?}").as_bytes());
        Some(ModuleContext {
            hint: hint(translation, types),
            ranges,
            bytes,
            types: module_types,
            known,
            data_segments,
            elem_segments,
            hash: h.finalize().into(),
        })
    }

    /// Whether this context is exactly the one of `translation`.
    fn matches(&self, translation: &ModuleTranslation<'_>) -> bool {
        let wasm = translation.wasm;
        let mut at = 0;
        for r in &self.ranges {
            let Some(now) = wasm.get(r.clone()) else { return false };
            if now != &self.bytes[at..at + r.len()] {
                return false;
            }
            at += r.len();
        }
        at == self.bytes.len()
            && translation.module.types.values().copied().eq(self.types.iter().copied())
            && translation.runtime_data_map.values().eq(self.data_segments.iter())
            && translation.passive_elem_map.values().eq(self.elem_segments.iter())
            && known_imports(translation) == self.known
    }
}

fn hint(
    translation: &ModuleTranslation<'_>,
    types: &ModuleTypesBuilder,
) -> (usize, usize, usize, usize) {
    (
        translation as *const _ as usize,
        translation.wasm.as_ptr() as usize,
        translation.wasm.len(),
        types as *const _ as usize,
    )
}

/// The statically known imports, as text (they are few: intrinsics and direct calls between
/// a component's modules).
fn known_imports(translation: &ModuleTranslation<'_>) -> String {
    let mut out = String::new();
    for (index, known) in translation.known_imported_functions.iter() {
        if let Some(known) = known {
            out.push_str(&format!("{}={known:?};", index.as_u32()));
        }
    }
    out
}

/// The byte ranges of the module's sections that its functions' code may depend on: all but
/// the code section, the data section and naming custom sections. `None` if the module does
/// not parse (then it is compiled without this cache; validation reports the error).
fn hashed_ranges(wasm: &[u8]) -> Option<Vec<Range<usize>>> {
    const CUSTOM: u8 = 0;
    const CODE: u8 = 10;
    const DATA: u8 = 11;
    let mut reader = BinaryReader::new(wasm, 0);
    let header = reader.read_bytes(8).ok()?;
    let mut ranges = vec![0..header.len()];
    while !reader.eof() {
        let start = reader.current_position();
        let id = reader.read_u8().ok()?;
        let len = reader.read_var_u32().ok()? as usize;
        let body_start = reader.current_position();
        let body = reader.read_bytes(len).ok()?;
        let keep = match id {
            CODE | DATA => false,
            CUSTOM => {
                let name = BinaryReader::new(body, 0).read_string().ok()?;
                !(name == "name" || name == "producers" || name.starts_with(".debug"))
            }
            _ => true,
        };
        if keep {
            ranges.push(start..body_start + len);
        } else {
            // The section's id still counts: a module with a data section differs from one
            // without.
            ranges.push(start..start + 1);
        }
    }
    Some(ranges)
}

impl Memo {
    pub fn context(
        &self,
        translation: &ModuleTranslation<'_>,
        types: &ModuleTypesBuilder,
        settings: &[u8],
    ) -> Option<Arc<ModuleContext>> {
        let hint = hint(translation, types);
        let found = self.recent.lock().unwrap().iter().find(|c| c.hint == hint).cloned();
        if let Some(found) = found {
            if found.matches(translation) {
                return Some(found);
            }
        }
        let fresh = Arc::new(ModuleContext::new(translation, types, settings)?);
        let mut recent = self.recent.lock().unwrap();
        recent.retain(|c| c.hint != hint);
        if recent.len() >= MEMO_LEN {
            recent.remove(0);
        }
        recent.push(fresh.clone());
        Some(fresh)
    }
}

/// The compiler settings every key includes.
pub fn settings(isa: &dyn TargetIsa, tunables: &Tunables) -> Vec<u8> {
    let mut s = format!(
        "{FORMAT}|{}|{}|{:?}|{}|",
        env!("CARGO_PKG_VERSION"),
        isa.triple(),
        tunables,
        isa.flags(),
    );
    for flag in isa.isa_flags() {
        s.push_str(&format!("{flag};"));
    }
    s.into_bytes()
}

/// The key of one function: its module context, module and function index, features and body.
pub fn key(
    context: &ModuleContext,
    module_index: u32,
    def_func_index: DefinedFuncIndex,
    features: WasmFeatures,
    body: &FunctionBody<'_>,
) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(context.hash);
    h.update(module_index.to_le_bytes());
    h.update(def_func_index.as_u32().to_le_bytes());
    h.update(features.bits().to_le_bytes());
    h.update(body.as_bytes());
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(&h.finalize());
    key
}

/// An entry: Cranelift's own cache value for the function (its code with source locations
/// relative to the function's base location), the names its relocations refer to, and where
/// the body was when it was compiled.
#[derive(Serialize, Deserialize)]
struct Entry {
    body_offset: u32,
    base_srcloc: u32,
    needs_gc_heap: bool,
    name_map: PrimaryMap<UserExternalNameRef, UserExternalName>,
    cached: Vec<u8>,
}

/// A function taken from the cache.
pub struct Hit {
    pub code: CompiledCode,
    pub name_map: PrimaryMap<UserExternalNameRef, UserExternalName>,
    pub needs_gc_heap: bool,
}

pub fn lookup(store: &dyn CacheStore, key: &[u8], body_offset: u32) -> Option<Hit> {
    let bytes = store.get(key)?;
    let entry: Entry = postcard::from_bytes(&bytes).ok()?;
    // The function's locations are relative to its base location, which moved with the body.
    let mut func = ir::Function::new();
    let base = SourceLoc::new(entry.base_srcloc);
    if !base.is_default() {
        let moved = SourceLoc::new(
            entry.base_srcloc.wrapping_add(body_offset.wrapping_sub(entry.body_offset)),
        );
        if moved.is_default() {
            return None;
        }
        func.params.ensure_base_srcloc(moved);
    }
    let code = try_finish_recompile(&func, &entry.cached).ok()?;
    Some(Hit { code, name_map: entry.name_map, needs_gc_heap: entry.needs_gc_heap })
}

/// What `compile_function` found out for `finish_with_info` to store after a miss.
pub struct Pending {
    pub key: Vec<u8>,
    pub body_offset: u32,
    pub needs_gc_heap: bool,
}

pub fn store(
    store: &dyn CacheStore,
    pending: Pending,
    base_srcloc: SourceLoc,
    name_map: &PrimaryMap<UserExternalNameRef, UserExternalName>,
    cached: Vec<u8>,
) {
    let entry = Entry {
        body_offset: pending.body_offset,
        base_srcloc: base_srcloc.bits(),
        needs_gc_heap: pending.needs_gc_heap,
        name_map: name_map.clone(),
        cached,
    };
    if let Ok(bytes) = postcard::to_allocvec(&entry) {
        store.insert(&pending.key, bytes);
    }
}
