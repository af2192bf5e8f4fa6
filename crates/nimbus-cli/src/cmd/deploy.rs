//! `deploy` and `build`.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::route_url_in;
use crate::GlobalArgs;
use crate::client::{CompileReport, DeployResponse, parse};
use crate::manifest::{
    LoadedManifest, Manifest, Overrides, parse_duration_ms, parse_key_value, parse_size,
};
use crate::output::{format_bytes, outln, print_json, short_sha};

#[derive(Args)]
pub struct DeployArgs {
    /// A directory with a nimbus.toml, a nimbus.toml, or a .wasm component
    #[arg(default_value = ".")]
    pub path: PathBuf,

    /// Function name (required for a .wasm file; overrides the manifest)
    #[arg(long, env = "NIMBUS_DEPLOY_NAME")]
    pub name: Option<String>,

    /// Route to serve, like /hello or /api/... (repeatable; added to the manifest's)
    #[arg(
        long = "route",
        value_name = "ROUTE",
        env = "NIMBUS_DEPLOY_ROUTES",
        value_delimiter = ','
    )]
    pub routes: Vec<String>,

    /// Environment variable KEY=VALUE (repeatable; overrides the manifest's)
    #[arg(long = "env", value_name = "KEY=VALUE", env = "NIMBUS_DEPLOY_ENV", value_delimiter = '\n', value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,

    /// Wall-clock limit per invocation, like 5s or 500ms
    #[arg(long, value_name = "DURATION", env = "NIMBUS_DEPLOY_TIMEOUT", value_parser = parse_duration_ms)]
    pub timeout: Option<u64>,

    /// Memory limit per instance, like 64MiB
    #[arg(long, value_name = "SIZE", env = "NIMBUS_DEPLOY_MEMORY", value_parser = parse_size)]
    pub memory: Option<u64>,

    /// Instances running at once
    #[arg(long, env = "NIMBUS_DEPLOY_CONCURRENCY")]
    pub concurrency: Option<u32>,

    /// Requests that may wait for a free instance
    #[arg(long, env = "NIMBUS_DEPLOY_QUEUE")]
    pub queue: Option<u32>,

    /// Largest request body accepted, like 10MiB
    #[arg(long, value_name = "SIZE", env = "NIMBUS_DEPLOY_MAX_BODY", value_parser = parse_size)]
    pub max_body: Option<u64>,

    /// Host the function may reach with outbound HTTP (repeatable; added to the manifest's)
    #[arg(
        long = "allow-host",
        value_name = "HOST",
        env = "NIMBUS_DEPLOY_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub allow_hosts: Vec<String>,

    /// Refuse unauthenticated callers with 401 before the function runs
    #[arg(long, env = "NIMBUS_DEPLOY_REQUIRE_AUTH", value_parser = clap::builder::BoolishValueParser::new())]
    pub require_auth: bool,

    /// Do not run the manifest's build command
    #[arg(long, env = "NIMBUS_NO_BUILD", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_build: bool,
}

impl DeployArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            name: self.name.clone(),
            routes: self.routes.clone(),
            env: self.env.clone(),
            allow_hosts: self.allow_hosts.clone(),
            require_auth: self.require_auth,
            timeout_ms: self.timeout,
            memory_bytes: self.memory,
            max_concurrency: self.concurrency,
            max_queue: self.queue,
            max_body_bytes: self.max_body,
        }
    }
}

#[derive(Args)]
pub struct BuildArgs {
    /// A directory with a nimbus.toml, or a nimbus.toml
    #[arg(default_value = ".")]
    pub path: PathBuf,
}

/// What the PATH argument names.
enum Target {
    Manifest(Box<LoadedManifest>),
    Component(PathBuf),
}

fn resolve_target(path: &Path) -> Result<Target> {
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    if path.is_dir() || is_toml {
        Ok(Target::Manifest(Box::new(LoadedManifest::load(path)?)))
    } else {
        Ok(Target::Component(path.to_path_buf()))
    }
}

pub async fn deploy(g: &GlobalArgs, args: DeployArgs) -> Result<ExitCode> {
    let overrides = args.overrides();
    let (spec, component) = match resolve_target(&args.path)? {
        Target::Component(path) => {
            if args.name.is_none() {
                bail!(
                    "deploying a .wasm file needs --name (or deploy a directory with a nimbus.toml)"
                );
            }
            (Manifest::default().to_spec(&overrides)?, path)
        }
        Target::Manifest(m) => {
            // Check the spec before spending time on a build.
            let spec = m
                .manifest
                .to_spec(&overrides)
                .with_context(|| format!("invalid function in {}", m.path.display()))?;
            // And that the server can be authenticated to (a missing token is quick to report).
            g.client()?;
            if let Some(command) = m.build_command().filter(|_| !args.no_build) {
                eprintln!("Building {}: {command}", spec.name);
                // Build output goes to stderr so stdout stays clean for --json.
                run_build(command, &m.dir, true)?;
            }
            let component = m.component_path()?;
            if !component.exists() {
                bail!(
                    "{} does not exist{}",
                    component.display(),
                    if args.no_build {
                        " (build it first, or drop --no-build)"
                    } else {
                        " after the build (check `component` in the manifest)"
                    }
                );
            }
            (spec, component)
        }
    };

    let module = std::fs::read(&component)
        .with_context(|| format!("cannot read {}", component.display()))?;
    check_component(&component, &module)?;
    let client = g.client()?;

    let show_progress = !g.json && std::io::stderr().is_terminal();
    let bar =
        if show_progress { ProgressBar::new(module.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("uploading");
    let part = upload_part(Bytes::from(module), bar.clone())?;
    let result = client.deploy(&spec, part).await;
    bar.finish_and_clear();
    let value = result?;

    if g.json {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let d: DeployResponse = parse(&value)?;
    if d.unchanged {
        outln!(
            "Unchanged: {} v{} already has this component (sha256 {}) and settings; no new version",
            d.function.name,
            d.version.version,
            short_sha(&d.version.module_sha256),
        );
    } else {
        outln!(
            "Deployed {} v{} (sha256 {}, {}, compiled in {} ms)",
            d.function.name,
            d.version.version,
            short_sha(&d.version.module_sha256),
            format_bytes(d.version.module_size),
            d.compile_ms.round() as u64,
        );
    }
    if let Some(c) = &d.compile {
        outln!("  {}", describe_compile(c));
    }
    if d.function.routes.is_empty() {
        outln!(
            "  no routes; call it with `nimbus{} invoke {}`",
            crate::project_flag(Some(&d.function.project)),
            d.function.name
        );
    }
    for r in &d.function.routes {
        outln!("  {}", route_url_in(client.base_url(), &d.function.project, r));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line on the path the compile took: how much came from the compile cache.
fn describe_compile(c: &CompileReport) -> String {
    // Even a first compile finds some functions in the cache: a component repeats equal code.
    match (c.cached_functions, c.compiled_functions) {
        (Some(cached), Some(fresh)) => {
            let untranslated = match c.untranslated_functions {
                Some(n) if n > 0 => format!(" ({n} without translation)"),
                _ => String::new(),
            };
            format!(
                "compile: {fresh} functions compiled, {cached} from the compile cache{untranslated}, in {} ms",
                c.ms.round() as u64
            )
        }
        _ => format!("compile: {} ms (no compile cache)", c.ms.round() as u64),
    }
}

/// The module as a multipart part streamed through [`progress_stream`].
fn upload_part(module: Bytes, bar: ProgressBar) -> Result<reqwest::multipart::Part> {
    let total = module.len() as u64;
    let body = reqwest::Body::wrap_stream(progress_stream(module, bar));
    Ok(reqwest::multipart::Part::stream_with_length(body, total)
        .file_name("module.wasm")
        .mime_str("application/wasm")?)
}

/// The module in chunks, advancing `bar` as each is taken by the HTTP client; once the last one
/// has gone the bar turns into a "compiling…" spinner until the server answers.
fn progress_stream(
    module: Bytes,
    bar: ProgressBar,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    const CHUNK: usize = 64 * 1024;
    let total = module.len();
    let chunks: Vec<Bytes> = (0..total)
        .step_by(CHUNK)
        .map(|start| module.slice(start..(start + CHUNK).min(total)))
        .collect();
    futures::stream::iter(chunks).map(move |chunk| {
        bar.inc(chunk.len() as u64);
        if bar.position() >= total as u64 {
            bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
            bar.set_message("compiling…");
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        Ok(chunk)
    })
}

/// Catch the common mistakes before uploading: not wasm at all, or a core module instead of a component.
pub(crate) fn check_component(path: &Path, bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!(
            "{} is not a WebAssembly file (it does not start with the \\0asm magic bytes)",
            path.display()
        );
    }
    // Bytes 4..8: version 1 with layer 0 is a core module; components use layer 1.
    if bytes[6..8] == [0, 0] {
        bail!(
            "{} is a core WebAssembly module, not a component: build it for the wasm32-wasip2 target \
             (or convert it with `wasm-tools component new`)",
            path.display()
        );
    }
    Ok(())
}

/// Run a build command with the platform shell in `dir`.
pub(crate) fn run_build(command: &str, dir: &Path, stdout_to_stderr: bool) -> Result<()> {
    let mut cmd = if cfg!(windows) {
        let mut c = std::process::Command::new("cmd");
        c.arg("/C").arg(command);
        c
    } else {
        let mut c = std::process::Command::new("sh");
        c.arg("-c").arg(command);
        c
    };
    // The manifest names its artifact relative to the project (`target/wasm32-wasip2/...`): a
    // target dir from the caller's environment (a workspace's, CI's) would build it elsewhere.
    cmd.current_dir(dir).stdin(Stdio::null()).env_remove("CARGO_TARGET_DIR");
    if stdout_to_stderr {
        cmd.stdout(Stdio::from(std::io::stderr()));
    }
    let status =
        cmd.status().with_context(|| format!("cannot run the build command `{command}`"))?;
    if !status.success() {
        bail!("the build command `{command}` failed ({status})");
    }
    Ok(())
}

pub fn build(g: &GlobalArgs, args: BuildArgs) -> Result<ExitCode> {
    let m = LoadedManifest::load(&args.path)?;
    match m.build_command() {
        Some(command) => {
            eprintln!("Building in {}: {command}", m.dir.display());
            run_build(command, &m.dir, g.json)?;
        }
        None => {
            eprintln!("{} has no [build] command; checking the component only", m.path.display())
        }
    }
    let component = m.component_path()?;
    let meta = std::fs::metadata(&component).with_context(|| {
        format!(
            "the build did not produce {} (check `component` in {})",
            component.display(),
            m.path.display()
        )
    })?;
    let bytes = std::fs::read(&component)
        .with_context(|| format!("cannot read {}", component.display()))?;
    check_component(&component, &bytes)?;
    if g.json {
        print_json(&json!({ "component": component, "size": meta.len() }))?;
    } else {
        outln!("{} ({})", component.display(), format_bytes(meta.len()));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_checks() {
        let p = Path::new("x.wasm");
        assert!(
            check_component(p, b"hello world")
                .unwrap_err()
                .to_string()
                .contains("not a WebAssembly")
        );
        assert!(check_component(p, b"\0asm\x01\0\0\0").unwrap_err().to_string().contains("core"));
        assert!(check_component(p, b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[tokio::test]
    async fn upload_stream_reports_progress() {
        let data = Bytes::from((0..200 * 1024).map(|i| i as u8).collect::<Vec<u8>>());
        let bar = ProgressBar::hidden();
        bar.set_length(data.len() as u64);
        bar.set_message("uploading");
        let mut stream = std::pin::pin!(progress_stream(data.clone(), bar.clone()));
        let mut got = Vec::new();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
            assert_eq!(bar.position(), got.len() as u64);
            let want = if got.len() == data.len() { "compiling…" } else { "uploading" };
            assert_eq!(bar.message(), want);
        }
        assert_eq!(got, data);
        bar.finish_and_clear();
        assert!(upload_part(data, ProgressBar::hidden()).is_ok());
    }
}
