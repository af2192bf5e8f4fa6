//! `new`: scaffold a function that builds to a `wasi:http/proxy` component, in Rust, JavaScript,
//! TypeScript or Python. The templates live in `crates/nimbus-cli/templates/` and are embedded
//! in the binary; the JavaScript toolchain's pins are those of
//! `crates/test-programs/foreign/js-tools` and the componentize-py pin that of
//! `scripts/build-foreign-guests.sh` (a unit test checks it), so there is one set of pins.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::GlobalArgs;
use crate::manifest::MANIFEST_FILE;
use crate::output::{outln, print_json};

#[derive(Args)]
pub struct NewArgs {
    /// Function name (a-z, 0-9 and '-', starting with a letter)
    pub name: String,

    /// Directory to create (default: ./NAME)
    #[arg(long, env = "NIMBUS_NEW_DIR")]
    pub dir: Option<PathBuf>,

    /// Language of the function
    #[arg(long, value_enum, env = "NIMBUS_NEW_LANG", default_value = "rust")]
    pub lang: Lang,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Ts,
    Python,
}

pub const BUILD_COMMAND: &str = "cargo build --release --target wasm32-wasip2";

/// The componentize-py release Python functions build with; the same as the test guests'.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

macro_rules! template {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/", $path))
    };
}
macro_rules! repo_file {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../", $path))
    };
}

/// The WIT every non-Rust template builds against: the host's WASI 0.2.12 interfaces, verbatim.
const WIT_DEPS: &[(&str, &str)] = &[
    ("wit/deps/cli.wit", repo_file!("crates/test-programs/foreign/wit/deps/cli.wit")),
    ("wit/deps/clocks.wit", repo_file!("crates/test-programs/foreign/wit/deps/clocks.wit")),
    ("wit/deps/filesystem.wit", repo_file!("crates/test-programs/foreign/wit/deps/filesystem.wit")),
    ("wit/deps/http.wit", repo_file!("crates/test-programs/foreign/wit/deps/http.wit")),
    ("wit/deps/io.wit", repo_file!("crates/test-programs/foreign/wit/deps/io.wit")),
    ("wit/deps/random.wit", repo_file!("crates/test-programs/foreign/wit/deps/random.wit")),
    ("wit/deps/sockets.wit", repo_file!("crates/test-programs/foreign/wit/deps/sockets.wit")),
];

const JS_TOOLS_PACKAGE: &str = repo_file!("crates/test-programs/foreign/js-tools/package.json");
const JS_TOOLS_LOCK: &str = repo_file!("crates/test-programs/foreign/js-tools/package-lock.json");
const JS_TOOLS_NAME: &str = "nimbus-foreign-guest-tools";

impl Lang {
    pub fn build_command(self) -> &'static str {
        match self {
            Lang::Rust => BUILD_COMMAND,
            Lang::Js | Lang::Ts => "node build.mjs",
            Lang::Python => "python3 build.py",
        }
    }

    fn component(self, name: &str) -> String {
        match self {
            Lang::Rust => format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_")),
            _ => format!("build/{name}.wasm"),
        }
    }

    /// What the user needs installed to build.
    fn needs(self) -> &'static str {
        match self {
            Lang::Rust => "the wasm32-wasip2 target: rustup target add wasm32-wasip2",
            Lang::Js | Lang::Ts => {
                "Node.js 18+ and npm; the first build installs the locked toolchain into node_modules"
            }
            Lang::Python => {
                "Python 3.10+ with pip; the first build installs componentize-py into ~/.cache/nimbus/tools"
            }
        }
    }
}

/// The files of a new function, as (relative path, contents).
pub fn scaffold(name: &str, lang: Lang) -> Result<Vec<(&'static str, String)>> {
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{componentize_py_version}}", COMPONENTIZE_PY_VERSION)
            .replace("{{build_command}}", lang.build_command())
            .replace("{{component}}", &lang.component(name))
    };
    let mut files = vec![(MANIFEST_FILE, fill(template!("manifest.toml")))];
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml", fill(template!("rust/Cargo.toml"))));
            files.push(("src/lib.rs", fill(template!("rust/src/lib.rs"))));
            files.push((".gitignore", "/target\n/nimbus-data\n".to_string()));
            // The SDK is not on crates.io: each function carries a copy (sdk/rust, verbatim).
            files.push(("nimbus-sdk/Cargo.toml", repo_file!("sdk/rust/Cargo.toml").to_string()));
            files.push(("nimbus-sdk/src/lib.rs", repo_file!("sdk/rust/src/lib.rs").to_string()));
            files.push(("nimbus-sdk/src/http.rs", repo_file!("sdk/rust/src/http.rs").to_string()));
            files.push((
                "nimbus-sdk/src/events.rs",
                repo_file!("sdk/rust/src/events.rs").to_string(),
            ));
        }
        Lang::Js | Lang::Ts => {
            files.push(("package.json", package_json(name)?));
            files.push(("package-lock.json", JS_TOOLS_LOCK.replace(JS_TOOLS_NAME, name)));
            files.push(("build.mjs", fill(template!("js/build.mjs"))));
            files.push((".gitignore", "/node_modules\n/build\n/nimbus-data\n".to_string()));
            if lang == Lang::Js {
                files.push(("src/app.js", fill(template!("js/app.js"))));
            } else {
                files.push(("src/app.ts", fill(template!("ts/app.ts"))));
                files.push(("src/runtime.d.ts", template!("ts/runtime.d.ts").to_string()));
                files.push(("tsconfig.json", template!("ts/tsconfig.json").to_string()));
            }
        }
        Lang::Python => {
            files.push(("src/app.py", fill(template!("python/app.py"))));
            files.push(("build.py", fill(template!("python/build.py"))));
            files.push((".gitignore", "/build\n__pycache__/\n/nimbus-data\n".to_string()));
        }
    }
    if lang != Lang::Rust {
        files.push(("wit/world.wit", template!("world.wit").to_string()));
        files.extend(WIT_DEPS.iter().map(|(p, t)| (*p, t.to_string())));
    }
    Ok(files)
}

/// The function's package.json: the locked toolchain's dependencies under the function's name
/// (`npm ci` refuses a package.json that does not match its lock).
fn package_json(name: &str) -> Result<String> {
    let tools: serde_json::Value =
        serde_json::from_str(JS_TOOLS_PACKAGE).context("embedded js-tools/package.json")?;
    let package = json!({
        "name": name,
        "private": true,
        "description": "A Nimbus function. `node build.mjs` builds it; package-lock.json pins its toolchain.",
        "scripts": { "build": "node build.mjs" },
        "dependencies": tools["dependencies"],
    });
    Ok(serde_json::to_string_pretty(&package)? + "\n")
}

pub fn run(g: &GlobalArgs, args: NewArgs) -> Result<ExitCode> {
    nimbus_model::validate_name(&args.name)?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    ensure_empty(&dir)?;
    for (rel, contents) in scaffold(&args.name, args.lang)? {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if g.json {
        print_json(
            &json!({ "name": args.name, "dir": dir, "lang": args.lang.to_possible_value().map(|v| v.get_name().to_string()) }),
        )?;
    } else {
        outln!("Created {} in {}", args.name, dir.display());
        outln!();
        outln!("Next steps:");
        outln!("  cd {}", dir.display());
        outln!("  nimbus deploy        # builds with `{}` and uploads", args.lang.build_command());
        outln!("  nimbus dev           # or: rebuild and redeploy on every change, with logs");
        outln!("  curl {}/{}", g.server_url().trim_end_matches('/'), args.name);
        outln!();
        outln!("Building needs {}", args.lang.needs());
    }
    Ok(ExitCode::SUCCESS)
}

fn ensure_empty(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("{} already exists and is not empty; pick another --dir", dir.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("{} exists and is not a directory", dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Manifest, Overrides};

    fn file<'a>(files: &'a [(&str, String)], path: &str) -> &'a str {
        &files.iter().find(|(p, _)| *p == path).unwrap_or_else(|| panic!("no {path}")).1
    }

    /// The Rust template carries the whole SDK: a module added to `sdk/rust/src` must be copied
    /// too, or every new Rust function fails to build.
    #[test]
    fn the_rust_template_copies_every_sdk_source_file() {
        let files = scaffold("f", Lang::Rust).unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/rust/src");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let path = format!("nimbus-sdk/src/{name}");
            assert!(files.iter().any(|(p, _)| *p == path), "the template lacks {path}");
        }
    }

    #[test]
    fn scaffold_manifest_is_valid() {
        let files = scaffold("hello-world", Lang::Rust).unwrap();
        let m = Manifest::parse(file(&files, MANIFEST_FILE)).unwrap();
        assert_eq!(
            m.component.as_deref(),
            Some(Path::new("target/wasm32-wasip2/release/hello_world.wasm"))
        );
        let spec = m.to_spec(&Overrides::default()).unwrap();
        assert_eq!(spec.name, "hello-world");
        assert_eq!(spec.routes[0].path, "/hello-world");
        let cargo: toml::Table = toml::from_str(file(&files, "Cargo.toml")).unwrap();
        assert!(cargo.contains_key("workspace"));
        assert_eq!(cargo["lib"]["crate-type"][0].as_str(), Some("cdylib"));
        // Release builds keep the name section, so traps name their functions.
        assert_eq!(cargo["profile"]["release"]["strip"].as_bool(), Some(false));
        assert_eq!(cargo["package"]["name"].as_str(), Some("hello-world"));
        assert!(file(&files, "src/lib.rs").contains("from hello-world!"));
        let sdk: toml::Table = toml::from_str(file(&files, "nimbus-sdk/Cargo.toml")).unwrap();
        assert_eq!(sdk["package"]["name"].as_str(), Some("nimbus-sdk"));
    }

    #[test]
    fn every_language_scaffolds_a_valid_manifest_and_no_placeholder() {
        for (lang, source) in [
            (Lang::Rust, "src/lib.rs"),
            (Lang::Js, "src/app.js"),
            (Lang::Ts, "src/app.ts"),
            (Lang::Python, "src/app.py"),
        ] {
            let files = scaffold("fn-1", lang).unwrap();
            let m = Manifest::parse(file(&files, MANIFEST_FILE)).unwrap();
            assert_eq!(m.build.as_ref().unwrap().command, lang.build_command());
            assert_eq!(m.to_spec(&Overrides::default()).unwrap().env["GREETING"], "Hello");
            for (path, text) in &files {
                assert!(!text.contains("{{"), "{lang:?} {path} keeps a placeholder");
            }
            let src = file(&files, source);
            // Each handler reads env and secrets and calls the data APIs.
            for needle in ["GREETING", "API_KEY", "/v1/kv/app/visits/incr", "visits"] {
                let needle = if lang == Lang::Rust && needle.starts_with("/v1") {
                    "increment(\"visits\""
                } else {
                    needle
                };
                assert!(src.contains(needle), "{lang:?}: {needle}");
            }
            if lang != Lang::Rust {
                assert!(file(&files, "wit/world.wit").contains("include wasi:http/proxy@0.2.12"));
                assert!(file(&files, "wit/deps/http.wit").contains("world proxy"));
            }
        }
    }

    /// The JavaScript templates lock exactly the toolchain the test guests are built with.
    #[test]
    fn js_templates_reuse_the_js_tools_lock() {
        for lang in [Lang::Js, Lang::Ts] {
            let files = scaffold("web", lang).unwrap();
            let package: serde_json::Value =
                serde_json::from_str(file(&files, "package.json")).unwrap();
            let lock: serde_json::Value =
                serde_json::from_str(file(&files, "package-lock.json")).unwrap();
            let tools: serde_json::Value = serde_json::from_str(JS_TOOLS_PACKAGE).unwrap();
            assert_eq!(package["name"], "web");
            assert_eq!(package["dependencies"], tools["dependencies"]);
            // `npm ci` refuses a package.json whose dependencies differ from the lock's root.
            assert_eq!(lock["packages"][""]["dependencies"], package["dependencies"]);
            assert_eq!(lock["packages"][""]["name"], "web");
            assert!(package["dependencies"]["typescript"].is_string());
        }
    }

    #[test]
    fn componentize_py_pin_matches_the_test_guests() {
        let script = repo_file!("scripts/build-foreign-guests.sh");
        assert!(
            script.contains(&format!("\nCOMPONENTIZE_PY_VERSION={COMPONENTIZE_PY_VERSION}\n")),
            "scripts/build-foreign-guests.sh pins another componentize-py than COMPONENTIZE_PY_VERSION"
        );
        let files = scaffold("py", Lang::Python).unwrap();
        assert!(
            file(&files, "build.py")
                .contains(&format!("COMPONENTIZE_PY_VERSION = \"{COMPONENTIZE_PY_VERSION}\""))
        );
    }

    #[test]
    fn refuses_non_empty_dirs() {
        let dir = std::env::temp_dir().join(format!("nimbus-new-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(ensure_empty(&dir).is_ok());
        std::fs::write(dir.join("x"), "").unwrap();
        assert!(ensure_empty(&dir).unwrap_err().to_string().contains("not empty"));
        assert!(ensure_empty(&dir.join("x")).is_err());
        assert!(ensure_empty(&dir.join("missing")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
