//! Builds the guest workspace in `crates/test-programs` for `wasm32-wasip2`
//! and generates `$OUT_DIR/gen.rs` with one path constant per guest.
//!
//! The nested cargo gets its own `--target-dir` under `OUT_DIR`: sharing the
//! outer target directory would wait forever on the lock the outer cargo holds.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let programs = manifest_dir.parent().expect("crates/ directory").join("test-programs");
    let programs = programs
        .canonicalize()
        .unwrap_or_else(|e| panic!("cannot find {}: {e}", programs.display()));

    // Rerun when a guest changes. Only the sources are listed (not the whole
    // directory) so that a `target/` left by building the guests by hand does
    // not trigger rebuilds.
    for rel in ["Cargo.toml", "Cargo.lock", "common", "guests"] {
        println!("cargo:rerun-if-changed={}", programs.join(rel).display());
    }
    // Example functions that guests build from their sources.
    println!(
        "cargo:rerun-if-changed={}",
        programs.join("../../examples/upload-summary/src").display()
    );
    // The guest SDK, which some guests use.
    let sdk = programs.join("../../sdk/rust");
    for rel in ["Cargo.toml", "src"] {
        println!("cargo:rerun-if-changed={}", sdk.join(rel).display());
    }

    let guests = list_guests(&programs.join("guests"));
    assert!(!guests.is_empty(), "no guests found in {}", programs.display());

    check_target_installed();

    let target_dir = out_dir.join("guests-target");
    let mut cmd = nested_cargo();
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(programs.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Keep the build script's stdout for `cargo:` directives only.
        .stdout(std::io::stderr());
    eprintln!("running: {cmd:?}");
    let status = cmd.status().unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    if !status.success() {
        panic!(
            "building the test guests failed ({status}); run \
             `cargo build --release --target {TARGET}` in {} to see why",
            programs.display()
        );
    }

    let release = target_dir.join(TARGET).join("release");
    let mut code = String::new();
    let mut all = String::from("const ALL: &[(&str, &str)] = &[\n");
    for name in &guests {
        let wasm = release.join(format!("{}.wasm", name.replace('-', "_")));
        assert!(wasm.is_file(), "guest `{name}` did not produce {}", wasm.display());
        let path = wasm.to_str().expect("non-UTF-8 path");
        let konst = shouty_snake(name);
        writeln!(code, "/// Path of the `{name}` guest component.").unwrap();
        writeln!(code, "pub const {konst}: &str = {path:?};").unwrap();
        writeln!(all, "    ({name:?}, {konst}),").unwrap();
    }
    all.push_str("];\n");
    code.push_str(&all);
    fs::write(out_dir.join("gen.rs"), code).unwrap();
}

/// Guest directory names (each `guests/<name>/Cargo.toml`), sorted.
fn list_guests(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn shouty_snake(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '-' | '.' | ' ' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// A `cargo` command for the nested build, cleaned of the environment the
/// outer cargo set up for *this* package's build (flags for the host target,
/// coverage/clippy wrappers, target-dir overrides, ...).
fn nested_cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
        "CARGO_LLVM_COV_TARGET_DIR",
        "LLVM_PROFILE_FILE",
        "__CARGO_FIX_PLZ",
    ] {
        cmd.env_remove(var);
    }
    // `CARGO_BUILD_*` (target, target-dir, rustflags, ...) and `CARGO_PROFILE_*`
    // would override the guest workspace's own settings.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_BUILD_") || key.starts_with("CARGO_PROFILE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Fails with an actionable message when the standard library for
/// `wasm32-wasip2` is not installed in the active toolchain.
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .unwrap_or_else(|e| panic!("failed to run {rustc:?} --print sysroot: {e}"));
    assert!(
        output.status.success(),
        "{rustc:?} --print sysroot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sysroot = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    let target_lib = sysroot.join("lib").join("rustlib").join(TARGET);
    if !target_lib.is_dir() {
        panic!(
            "\n\nThe Rust target `{TARGET}` is not installed in the toolchain at {}.\n\
             The test guests are built for it. Install it with:\n\n    \
             rustup target add {TARGET}\n\n",
            sysroot.display()
        );
    }
}
