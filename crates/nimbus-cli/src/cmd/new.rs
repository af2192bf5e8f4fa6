//! `new`: scaffold a Rust function that builds to a `wasi:http/proxy` component for wasm32-wasip2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Args;
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
}

pub const BUILD_COMMAND: &str = "cargo build --release --target wasm32-wasip2";

/// The files of a new project, as (relative path, contents).
pub fn scaffold(name: &str) -> Vec<(&'static str, String)> {
    let lib = name.replace('-', "_");
    let cargo_toml = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
wasi = "0.14"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true

# Build on its own, even when created inside another Cargo workspace.
[workspace]
"#
    );
    let lib_rs = format!(
        r#"//! {name}: a Nimbus function. `nimbus deploy` builds it and uploads it to the server.
//!
//! Nimbus runs it as a `wasi:http/proxy` component: `handle` gets each HTTP request and answers it.
//! Whatever it prints to stdout or stderr shows up in `nimbus logs {name}`.

use std::io::Write as _;

use wasi::http::types::{{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
}};

wasi::http::proxy::export!(Function);

struct Function;

impl wasi::exports::http::incoming_handler::Guest for Function {{
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {{
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        println!("handling {{path}}");

        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        )])
        .unwrap();
        let response = OutgoingResponse::new(headers);
        response.set_status_code(200).unwrap();
        let body = response.body().unwrap();
        ResponseOutparam::set(response_out, Ok(response));

        let mut out = body.write().unwrap();
        out.write_all(b"Hello from {name}!\n").unwrap();
        out.flush().unwrap();
        drop(out);
        OutgoingBody::finish(body, None).unwrap();
    }}
}}
"#
    );
    let manifest = format!(
        r#"# Nimbus function manifest: `nimbus deploy` in this directory builds and uploads the function.
name = "{name}"
component = "target/wasm32-wasip2/release/{lib}.wasm"
routes = ["/{name}"]
# Hosts the function may call with outbound HTTP, e.g. ["api.example.com"].
outbound_hosts = []

[build]
command = "{BUILD_COMMAND}"

[env]
# GREETING = "hello"

[limits]
# timeout = "10s"
# memory = "64MiB"
# max_concurrency = 64
# max_queue = 256
# max_body = "10MiB"
"#
    );
    vec![
        ("Cargo.toml", cargo_toml),
        ("src/lib.rs", lib_rs),
        (MANIFEST_FILE, manifest),
        (".gitignore", "/target\n".to_string()),
    ]
}

pub fn run(g: &GlobalArgs, args: NewArgs) -> Result<ExitCode> {
    nimbus_model::validate_name(&args.name)?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    ensure_empty(&dir)?;
    for (rel, contents) in scaffold(&args.name) {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if g.json {
        print_json(&json!({ "name": args.name, "dir": dir }))?;
    } else {
        outln!("Created {} in {}", args.name, dir.display());
        outln!();
        outln!("Next steps:");
        outln!("  cd {}", dir.display());
        outln!("  nimbus deploy        # builds with `{BUILD_COMMAND}` and uploads");
        outln!("  curl {}/{}", g.server_url().trim_end_matches('/'), args.name);
        outln!();
        outln!("Building needs the wasm32-wasip2 target: rustup target add wasm32-wasip2");
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

    #[test]
    fn scaffold_manifest_is_valid() {
        let files = scaffold("hello-world");
        let (_, manifest) = files.iter().find(|(p, _)| *p == MANIFEST_FILE).unwrap();
        let m = Manifest::parse(manifest).unwrap();
        assert_eq!(
            m.component.as_deref(),
            Some(Path::new("target/wasm32-wasip2/release/hello_world.wasm"))
        );
        let spec = m.to_spec(&Overrides::default()).unwrap();
        assert_eq!(spec.name, "hello-world");
        assert_eq!(spec.routes[0].path, "/hello-world");
        let (_, cargo) = files.iter().find(|(p, _)| *p == "Cargo.toml").unwrap();
        let cargo: toml::Table = toml::from_str(cargo).unwrap();
        assert!(cargo.contains_key("workspace"));
        assert_eq!(cargo["lib"]["crate-type"][0].as_str(), Some("cdylib"));
        let (_, lib) = files.iter().find(|(p, _)| *p == "src/lib.rs").unwrap();
        assert!(lib.contains("Hello from hello-world!"));
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
