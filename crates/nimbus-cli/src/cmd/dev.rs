//! `dev`: the inner loop in a function's folder. Build, deploy to a local server (starting one as
//! a child process if none answers at `--url`), watch the sources, rebuild and redeploy on every
//! change, and stream the function's logs. A failed build leaves the last good version serving.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::mpsc;

use super::deploy::{check_component, run_build};
use super::route_url;
use crate::GlobalArgs;
use crate::client::{Client, DeployResponse, invocations_of, parse};
use crate::manifest::{LoadedManifest, Overrides};
use crate::output::short_sha;

#[derive(Args)]
pub struct DevArgs {
    /// The function's directory (with its nimbus.toml)
    #[arg(default_value = ".")]
    pub path: PathBuf,

    /// Quiet time after a change before rebuilding (changes within it are taken together)
    #[arg(long, value_name = "DURATION", env = "NIMBUS_DEV_DEBOUNCE", default_value = "300ms", value_parser = crate::manifest::parse_duration)]
    pub debounce: Duration,

    /// Never start a local server; fail if none answers at --url
    #[arg(long, env = "NIMBUS_DEV_NO_SERVER", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_server: bool,
}

/// Directories never watched: build outputs, dependencies, VCS and tool state. A change under
/// them is the build's own doing (or a tool's), not the developer's.
const IGNORED_DIRS: &[&str] = &[
    "target",
    "node_modules",
    "build",
    "dist",
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    ".venv",
    "venv",
    ".mypy_cache",
    ".pytest_cache",
    ".idea",
    ".vscode",
    "nimbus-data",
];

/// Whether a change at `path` (inside `root`) should trigger a rebuild.
pub fn is_watched(root: &Path, data_dir: Option<&Path>, path: &Path) -> bool {
    if data_dir.is_some_and(|d| path.starts_with(d)) {
        return false;
    }
    let Ok(rel) = path.strip_prefix(root) else { return false };
    let mut parts = rel.components().peekable();
    while let Some(part) = parts.next() {
        let name = part.as_os_str().to_string_lossy();
        let is_file = parts.peek().is_none();
        if !is_file && IGNORED_DIRS.contains(&name.as_ref()) {
            return false;
        }
        if is_file
            && (name.ends_with('~')
                || name.ends_with(".swp")
                || name.ends_with(".swx")
                || name.ends_with(".tmp")
                || name.starts_with(".#")
                || name.ends_with(".pyc"))
        {
            return false;
        }
        // An ignored directory itself (created or removed) is not a change either.
        if is_file && IGNORED_DIRS.contains(&name.as_ref()) {
            return false;
        }
    }
    true
}

/// A `nimbus serve` this command started; stopped (gracefully, then for good) when dropped.
struct ChildServer {
    child: tokio::process::Child,
    log: PathBuf,
}

impl ChildServer {
    /// Start `nimbus serve` on the address of `url`, with the data directory `data`; wait until
    /// it answers.
    async fn start(url: &str, data: &Path) -> Result<ChildServer> {
        let listen = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|addr| !addr.contains('/'))
            .with_context(|| {
                format!("cannot start a server for {url}: expected http://HOST:PORT")
            })?;
        let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
        if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            bail!(
                "no Nimbus server answers at {url}, and `nimbus dev` only starts one on this machine \
                 (a loopback --url such as http://127.0.0.1:8080)"
            );
        }
        let listen = listen.replacen("localhost", "127.0.0.1", 1);
        std::fs::create_dir_all(data)
            .with_context(|| format!("cannot create the data directory {}", data.display()))?;
        let log = data.join("dev-server.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let exe = std::env::current_exe().context("cannot find the nimbus executable")?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("serve")
            .arg("--listen")
            .arg(&listen)
            .arg("--data")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        // Its own process group: a Ctrl-C in the terminal reaches `nimbus dev` only, which then
        // stops the server itself (and reports doing so).
        #[cfg(unix)]
        cmd.process_group(0);
        // And it ends with `nimbus dev` even when that is killed without a chance to stop it
        // (SIGKILL, a crash): Linux sends it SIGTERM, a graceful stop. The parent-death signal
        // follows the thread that forked, which is a runtime worker living as long as the CLI.
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id();
            // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid, _exit).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent may have died before the prctl: then no signal would come.
                    if libc::getppid() as u32 != parent {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("cannot start `nimbus serve`")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let started = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("nimbus listening on ") {
                    return true;
                }
            }
            false
        })
        .await;
        // Keep draining its stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let server = ChildServer { child, log };
        if started != Ok(true) {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            bail!("the local server did not start; its log ({}):\n{log}", server.log.display());
        }
        Ok(server)
    }

    /// SIGTERM (the server shuts down gracefully), bounded; then kill.
    async fn stop(mut self) {
        #[cfg(unix)]
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// What the loop last deployed, to skip redeploying identical bytes and spec.
struct Deployed {
    module: Vec<u8>,
    spec: nimbus_model::FunctionSpec,
    version: u32,
}

pub async fn run(g: &GlobalArgs, args: DevArgs) -> Result<ExitCode> {
    let root = std::fs::canonicalize(&args.path)
        .with_context(|| format!("{} does not exist", args.path.display()))?;
    let name = LoadedManifest::load(&root)?.manifest.to_spec(&Overrides::default())?.name;

    // A server: the one at --url, or one started here.
    let mut server = None;
    let url = g.server_url();
    let data = g.data_dir.clone().unwrap_or_else(|| PathBuf::from("./nimbus-data"));
    let probe = Client::new(&url, String::new())?;
    if probe.health().await.is_err() {
        if args.no_server {
            bail!("no Nimbus server answers at {url} (and --no-server was given)");
        }
        eprintln!("No server answers at {url}; starting one (data: {})", data.display());
        let s = ChildServer::start(&url, &data).await?;
        eprintln!("Local server started at {url} (its log: {})", s.log.display());
        server = Some(s);
    }
    let result = dev_loop(g, &args, &root, &name).await;
    if let Some(s) = server {
        eprintln!("Stopping the local server");
        s.stop().await;
    }
    result
}

async fn dev_loop(g: &GlobalArgs, args: &DevArgs, root: &Path, name: &str) -> Result<ExitCode> {
    let client = g.client()?;
    let data_dir =
        std::fs::canonicalize(g.data_dir.clone().unwrap_or_else(|| PathBuf::from("./nimbus-data")))
            .ok();

    // File events arrive on notify's thread; forward writes (creations, modifications, removals)
    // into the async loop, which debounces them. Not notify-debouncer-mini: it drops the event
    // kind, and a build *reading* the sources (inotify's open/close events) would then look like
    // a change and rebuild forever.
    let (tx, mut changes) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                let write = match event.kind {
                    EventKind::Create(_) | EventKind::Remove(_) => true,
                    EventKind::Modify(notify::event::ModifyKind::Metadata(_)) => false,
                    EventKind::Modify(_) => true,
                    EventKind::Access(notify::event::AccessKind::Close(
                        notify::event::AccessMode::Write,
                    )) => true,
                    _ => false,
                };
                if write {
                    let _ = tx.send(event.paths);
                }
            }
            Err(e) => eprintln!("[nimbus dev] watching failed: {e}"),
        })
        .context("cannot watch for file changes")?;
    watcher
        .watch(root, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", root.display()))?;

    let mut last: Option<Deployed> = None;
    let mut logs_task: Option<tokio::task::JoinHandle<()>> = None;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut reason = "starting".to_string();
    loop {
        eprintln!("\n[nimbus dev] {reason}: building {name}");
        match tokio::select! {
            r = build_and_deploy(&client, root, last.as_ref()) => Some(r),
            _ = &mut ctrl_c => None,
        } {
            None => break,
            Some(Ok(Some((deployed, response)))) => {
                eprintln!(
                    "[nimbus dev] deployed {} v{} (sha256 {})",
                    response.function.name,
                    response.version.version,
                    short_sha(&response.version.module_sha256)
                );
                for r in &response.function.routes {
                    eprintln!("  {}", route_url(client.base_url(), r));
                }
                if logs_task.is_none() {
                    logs_task = Some(spawn_logs(client.clone(), name.to_string(), g.json).await);
                }
                last = Some(deployed);
            }
            Some(Ok(None)) => eprintln!("[nimbus dev] unchanged; nothing to deploy"),
            Some(Err(e)) => {
                eprintln!("[nimbus dev] error: {e:#}");
                match &last {
                    Some(d) => {
                        eprintln!("[nimbus dev] still serving v{} (the last good build)", d.version)
                    }
                    None => eprintln!("[nimbus dev] nothing deployed yet"),
                }
            }
        }
        eprintln!("[nimbus dev] watching {} for changes (Ctrl-C to stop)", root.display());
        // Wait for a change worth rebuilding for, then until the files are quiet for the
        // debounce time (an editor's save, a `git checkout`: one rebuild).
        let mut changed: Vec<PathBuf> = Vec::new();
        let stop = loop {
            let quiet = async {
                if changed.is_empty() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(args.debounce).await
                }
            };
            tokio::select! {
                batch = changes.recv() => {
                    let Some(batch) = batch else { bail!("the file watcher stopped") };
                    for p in batch {
                        if is_watched(root, data_dir.as_deref(), &p) && !changed.contains(&p) {
                            changed.push(p);
                        }
                    }
                }
                () = quiet => break false,
                _ = &mut ctrl_c => break true,
            }
        };
        if stop {
            break;
        }
        let first = changed[0].strip_prefix(root).unwrap_or(&changed[0]).display().to_string();
        reason = if changed.len() == 1 {
            format!("{first} changed")
        } else {
            format!("{first} and {} more changed", changed.len() - 1)
        };
    }
    if let Some(t) = logs_task {
        t.abort();
    }
    eprintln!("\n[nimbus dev] stopped");
    Ok(ExitCode::SUCCESS)
}

/// Build (on a blocking thread: the compiler's output goes straight to the terminal) and deploy,
/// unless the component and spec are what `last` already deployed. The manifest is read again
/// each time, so edits to nimbus.toml apply too.
async fn build_and_deploy(
    client: &Client,
    root: &Path,
    last: Option<&Deployed>,
) -> Result<Option<(Deployed, DeployResponse)>> {
    let m = LoadedManifest::load(root)?;
    let spec = m
        .manifest
        .to_spec(&Overrides::default())
        .with_context(|| format!("invalid function in {}", m.path.display()))?;
    if let Some(command) = m.build_command().map(str::to_string) {
        let dir = m.dir.clone();
        tokio::task::spawn_blocking(move || run_build(&command, &dir, true))
            .await
            .context("the build task failed")??;
    }
    let component = m.component_path()?;
    let module = std::fs::read(&component)
        .with_context(|| format!("cannot read {} after the build", component.display()))?;
    check_component(&component, &module)?;
    if last.is_some_and(|d| d.module == module && d.spec == spec) {
        return Ok(None);
    }
    let part = reqwest::multipart::Part::bytes(module.clone())
        .file_name("module.wasm")
        .mime_str("application/wasm")?;
    let value = client.deploy(&spec, part).await?;
    let response: DeployResponse = parse(&value)?;
    let version = response.version.version;
    Ok(Some((Deployed { module, spec, version }, response)))
}

/// Follow the function's logs from now on (what `logs -f` prints), in the background.
async fn spawn_logs(client: Client, name: String, json: bool) -> tokio::task::JoinHandle<()> {
    // Start after the newest record: earlier invocations are not this session's.
    let after = match client.logs(&name, None, Some(1)).await {
        Ok(v) => invocations_of(&v).ok().and_then(|r| r.iter().map(|r| r.seq).max()).unwrap_or(0),
        Err(_) => 0,
    };
    tokio::spawn(async move {
        if let Err(e) = super::logs::follow(&client, &name, after, json, &Default::default()).await
        {
            eprintln!("[nimbus dev] log stream stopped: {e:#}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_paths() {
        let root = Path::new("/w/fn");
        let data = Path::new("/w/fn/data");
        for (path, want) in [
            ("/w/fn/src/lib.rs", true),
            ("/w/fn/nimbus.toml", true),
            ("/w/fn/src/app.ts", true),
            ("/w/fn/target/wasm32-wasip2/release/fn.wasm", false),
            ("/w/fn/node_modules/x/index.js", false),
            ("/w/fn/build/fn.wasm", false),
            ("/w/fn/build", false),
            ("/w/fn/src/__pycache__/app.cpython-312.pyc", false),
            ("/w/fn/.git/index", false),
            ("/w/fn/src/.lib.rs.swp", false),
            ("/w/fn/src/lib.rs~", false),
            ("/w/fn/data/nimbus.db-wal", false),
            ("/w/fn/nimbus-data/nimbus.db", false),
            ("/elsewhere/x.rs", false),
            // Only whole names are ignored.
            ("/w/fn/src/build.rs", true),
            ("/w/fn/src/targets/a.rs", true),
        ] {
            assert_eq!(is_watched(root, Some(data), Path::new(path)), want, "{path}");
        }
    }
}
