//! `nimbus`: run a Nimbus server (`nimbus serve`) and manage its functions through the API.
//!
//! The binary (`src/main.rs`) only calls [`main`]; everything lives here so unit tests run with
//! `cargo test --lib`.

mod client;
mod cmd;
mod config;
mod manifest;
mod output;
mod sse;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nimbus",
    version,
    about = "Nimbus: a self-hosted serverless platform for WASI HTTP components"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every client command understands (`serve` has its own: see `cmd::serve::ClientFlags`).
#[derive(clap::Args, Clone, Debug)]
pub struct GlobalArgs {
    /// URL of the Nimbus server (default: the profile's, else http://127.0.0.1:8080)
    #[arg(long, global = true, env = "NIMBUS_URL")]
    pub url: Option<String>,

    /// Admin token or service API key (default: the profile's, else the server's
    /// <data-dir>/admin-token)
    #[arg(long, global = true, env = "NIMBUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Project to act on (default: the profile's, else the server's default project)
    #[arg(long, global = true, env = "NIMBUS_PROJECT")]
    pub project: Option<String>,

    /// Profile of the CLI config to use (see `nimbus login`; default: the config's default)
    #[arg(long, global = true, env = "NIMBUS_PROFILE")]
    pub profile: Option<String>,

    /// Read the admin token from this server data directory (default: the profile's token,
    /// else ./nimbus-data)
    #[arg(long = "data-dir", value_name = "DIR", global = true, env = "NIMBUS_DATA")]
    pub data_dir: Option<PathBuf>,

    /// Print JSON instead of tables and messages (errors too, on stderr)
    #[arg(long, global = true, env = "NIMBUS_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,
}

impl GlobalArgs {
    /// An API client with the URL, token and project resolved (see [`config`] for the order).
    pub fn client(&self) -> anyhow::Result<client::Client> {
        let r = self.resolve()?;
        Ok(client::Client::new(&r.url, r.token)?.with_project(r.project))
    }

    /// URL, token and project from flags, env, the CLI config's profile and the fallbacks.
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        // A config that cannot be located (no home directory) is an empty one; a broken one is
        // reported, since it was written by someone on purpose.
        let cfg = match config::config_path() {
            Ok(path) => config::Config::load(&path)?,
            Err(_) => config::Config::default(),
        };
        let profile = cfg.profile(self.profile.as_deref())?;
        let url = self
            .url
            .clone()
            .or_else(|| profile.map(|(_, p)| p.url.clone()))
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        // The profile applies only to its own server: its token must never go elsewhere.
        let profile = profile.filter(|(_, p)| config::same_url(&p.url, &url));
        let token = match (&self.token, &self.data_dir, profile.and_then(|(_, p)| p.token.clone()))
        {
            (Some(t), _, _) => t.trim().to_string(),
            (None, Some(dir), _) => client::resolve_token(None, dir)?,
            (None, None, Some(t)) => t,
            (None, None, None) => client::resolve_token(None, std::path::Path::new("./nimbus-data"))
                .map_err(|e| {
                    e.context(format!(
                        "no credentials for {url}: run `nimbus login --url {url}`, or pass \
                         --token/NIMBUS_TOKEN, or --data-dir/NIMBUS_DATA (the server's data directory)"
                    ))
                })?,
        };
        let project = self.project.clone().or_else(|| profile.and_then(|(_, p)| p.project.clone()));
        Ok(Resolved { url, token, project })
    }

    /// The server's URL alone (flag, env, profile, default), for messages.
    pub fn server_url(&self) -> String {
        let cfg = config::config_path().and_then(|p| config::Config::load(&p)).unwrap_or_default();
        let profile = cfg.profile(self.profile.as_deref()).ok().flatten();
        self.url
            .clone()
            .or_else(|| profile.map(|(_, p)| p.url.clone()))
            .unwrap_or_else(|| DEFAULT_URL.to_string())
    }

    /// ` --project P` for commands the CLI suggests, so that they work when pasted.
    pub fn project_flag(&self) -> String {
        let project = self.resolve().ok().and_then(|r| r.project);
        project_flag(project.as_deref())
    }
}

/// ` --project P`, or nothing for the default project.
pub fn project_flag(project: Option<&str>) -> String {
    match project {
        Some(p) if p != "default" => format!(" --project {p}"),
        _ => String::new(),
    }
}

/// The server the CLI talks to when nothing says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Where the CLI's settings came to.
pub struct Resolved {
    pub url: String,
    pub token: String,
    pub project: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Nimbus server
    Serve(Box<cmd::serve::ServeArgs>),
    /// Build (unless --no-build) and upload a function
    Deploy(cmd::deploy::DeployArgs),
    /// Run the build command of a nimbus.toml and check the component it produces
    Build(cmd::deploy::BuildArgs),
    /// Create a new function (Rust, JavaScript, TypeScript or Python)
    New(cmd::new::NewArgs),
    /// Build, deploy and redeploy on every change, streaming logs (starts a local server if none)
    Dev(cmd::dev::DevArgs),
    /// List functions
    #[command(visible_alias = "ls")]
    List,
    /// Show a function's configuration
    Show {
        /// Function name
        name: String,
    },
    /// Delete a function, its versions and secrets
    #[command(visible_alias = "rm")]
    Delete {
        /// Function name
        name: String,
        /// Do not ask for confirmation (needed when stdin is not a terminal)
        #[arg(short = 'y', long, env = "NIMBUS_YES", value_parser = BoolishValueParser::new())]
        yes: bool,
    },
    /// List a function's versions
    Versions {
        /// Function name
        name: String,
    },
    /// Make an earlier version active again
    Rollback {
        /// Function name
        name: String,
        /// Version to activate, as listed: v2 or 2
        #[arg(value_parser = cmd::functions::parse_version)]
        version: u32,
    },
    /// Manage a function's secrets (exposed to it as environment variables)
    #[command(subcommand)]
    Secrets(cmd::secrets::SecretsCommand),
    /// Call a function through the API and print its response
    Invoke(cmd::invoke::InvokeArgs),
    /// Show a function's recent invocations with their output
    Logs(cmd::logs::LogsArgs),
    /// List invocations across functions
    Invocations(cmd::logs::InvocationsArgs),
    /// Metered usage and cost per project, function, day or hour (--project narrows it; without,
    /// the admin token sees every project): a table with a trend line, --json or --csv
    Usage(cmd::usage::UsageArgs),
    /// Create and list projects (admin token only)
    #[command(subcommand)]
    Projects(cmd::projects::ProjectsCommand),
    /// Manage the project's API keys (service and public)
    #[command(subcommand)]
    Keys(cmd::projects::KeysCommand),
    /// Manage the project's end users
    #[command(subcommand)]
    Users(cmd::users::UsersCommand),
    /// Event subscriptions with their backlog; dead letters (dead, show, replay, purge); the
    /// auth event log (log); publish to a queue
    Events(cmd::events::EventsArgs),
    /// Show the emails in the development outbox (when no SMTP server is configured)
    Outbox,
    /// Save a server's URL, token and default project as a profile of the CLI config
    Login(cmd::profile::LoginArgs),
    /// List the CLI config's profiles (tokens masked)
    Profiles,
    /// Print a shell completion script: `nimbus completions bash > /etc/bash_completion.d/nimbus`
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Manage the project's file buckets
    #[command(subcommand)]
    Buckets(cmd::files::BucketsCommand),
    /// Upload, download, list and delete files in a bucket
    #[command(subcommand)]
    Files(cmd::files::FilesCommand),
    /// Push notifications: send, a message's delivery status, replay failed deliveries
    #[command(subcommand)]
    Push(cmd::push::PushCommand),
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Serve(args) => cmd::serve::run(g, *args).await,
        Command::Deploy(args) => cmd::deploy::deploy(g, args).await,
        Command::Build(args) => cmd::deploy::build(g, args),
        Command::New(args) => cmd::new::run(g, args),
        Command::Dev(args) => cmd::dev::run(g, args).await,
        Command::List => cmd::functions::list(g).await,
        Command::Show { name } => cmd::functions::show(g, &name).await,
        Command::Delete { name, yes } => cmd::functions::delete(g, &name, yes).await,
        Command::Versions { name } => cmd::functions::versions(g, &name).await,
        Command::Rollback { name, version } => cmd::functions::rollback(g, &name, version).await,
        Command::Secrets(c) => cmd::secrets::run(g, c).await,
        Command::Invoke(args) => cmd::invoke::run(g, args).await,
        Command::Logs(args) => cmd::logs::logs(g, args).await,
        Command::Invocations(args) => cmd::logs::invocations(g, args).await,
        Command::Usage(args) => cmd::usage::usage(g, args).await,
        Command::Projects(c) => cmd::projects::projects(g, c).await,
        Command::Keys(c) => cmd::projects::keys(g, c).await,
        Command::Users(c) => cmd::users::users(g, c).await,
        Command::Events(args) => cmd::events::run(g, args).await,
        Command::Outbox => cmd::users::outbox(g).await,
        Command::Login(args) => cmd::profile::login(g, args).await,
        Command::Profiles => cmd::profile::list(g),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "nimbus", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Buckets(c) => cmd::files::buckets(g, c).await,
        Command::Files(c) => cmd::files::files(g, c).await,
        Command::Push(c) => cmd::push::run(g, c).await,
    }
}

/// Parse the command line, run the command, print any error; the process's exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A usage error under --json is JSON too; help and version print as usual.
        Err(e) if e.use_stderr() && json_requested() => {
            let message = e.render().to_string();
            let message = message.trim().trim_start_matches("error: ");
            eprintln!(
                "{}",
                serde_json::json!({ "error": { "code": "usage", "message": message } })
            );
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let json = cli.global.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for stray background work (a stdin reader, a half-read response) at exit.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) if json => {
            print_json_error(&err);
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Under `--json`, an error in the API's shape on stderr: `{"error":{"code","message"}}`, with
/// the HTTP `status` when the server refused the request.
fn print_json_error(err: &anyhow::Error) {
    let api = err.chain().find_map(|e| e.downcast_ref::<client::ApiError>());
    let mut body = serde_json::json!({
        "code": api.map_or("cli_error", |a| a.code.as_str()),
        "message": format!("{err:#}"),
    });
    if let Some(a) = api {
        body["status"] = a.status.into();
    }
    eprintln!("{}", serde_json::json!({ "error": body }));
}

/// `--json` on the command line or a true `NIMBUS_JSON`, for errors found before parsing ended.
fn json_requested() -> bool {
    std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a == "--json")
        || std::env::var("NIMBUS_JSON").is_ok_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on" | "y")
        })
}

/// Output piped into `head` and closed early: the reader has what it wanted.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("nimbus").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Build every subcommand's arguments from a real command line: clap only notices some
    /// mistakes (two arguments with one id, a type mismatch) when it extracts values.
    #[test]
    fn representative_command_lines_parse() {
        let cli = parse(&[
            "invoke",
            "f",
            "-d",
            "body",
            "-X",
            "PUT",
            "-H",
            "A: b",
            "-i",
            "--data-dir",
            "/d",
        ]);
        assert_eq!(cli.global.data_dir, Some(PathBuf::from("/d")));
        let Command::Invoke(a) = cli.command else { panic!() };
        assert_eq!(a.body.as_deref(), Some("body"));
        assert!(a.include);
        // curl's long form is the request body, not a data directory.
        let Command::Invoke(a) = parse(&["invoke", "f", "--data", r#"{"a":1}"#]).command else {
            panic!()
        };
        assert_eq!(a.body.as_deref(), Some(r#"{"a":1}"#));
        let Command::Invoke(a) = parse(&["invoke", "f", "--body", "x"]).command else { panic!() };
        assert_eq!(a.body.as_deref(), Some("x"));
        let Command::Rollback { version, .. } = parse(&["rollback", "f", "v2"]).command else {
            panic!()
        };
        assert_eq!(version, 2);
        let Command::Serve(s) = parse(&["serve", "--listen", "8081"]).command else { panic!() };
        assert_eq!(s.listen, "127.0.0.1:8081".parse().unwrap());
        parse(&["delete", "f", "--yes"]);
        parse(&["login", "--url", "http://x:1", "--profile", "p", "--default"]);
        parse(&["profiles"]);
        parse(&["completions", "bash"]);
        let cli = parse(&[
            "deploy",
            "x.wasm",
            "--name",
            "f",
            "--route",
            "/a",
            "--route",
            "/b",
            "--env",
            "A=1",
            "--timeout",
            "5s",
            "--memory",
            "64MiB",
            "--concurrency",
            "2",
            "--queue",
            "0",
            "--max-body",
            "1MB",
            "--allow-host",
            "example.com",
            "--no-build",
            "--json",
        ]);
        assert!(cli.global.json);
        let Command::Deploy(d) = cli.command else { panic!() };
        assert_eq!(d.routes, ["/a", "/b"]);
        assert_eq!(d.memory, Some(64 << 20));
        assert_eq!(d.timeout, Some(5000));
        let Command::Serve(s) = parse(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "/tmp/x",
            "--log-format",
            "json",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(s.data, PathBuf::from("/tmp/x"));
        parse(&["logs", "f", "-f", "--limit", "5"]);
        parse(&["invocations", "--function", "f", "--status", "ok", "--order", "asc"]);
        parse(&["rollback", "f", "3"]);
        parse(&["secrets", "set", "f", "K"]);
        parse(&["secrets", "set", "f", "K", "V"]);
        parse(&["secrets", "rm", "f", "K"]);
        parse(&["secrets", "list", "f"]);
        parse(&["new", "f", "--dir", "x"]);
        parse(&["new", "f", "--lang", "ts"]);
        parse(&["dev", "--debounce", "1s", "--no-server"]);
        parse(&["build", "."]);
        parse(&["ls"]);
        parse(&["rm", "f"]);
        parse(&["show", "f"]);
        parse(&["versions", "f"]);
        parse(&["deploy", "x.wasm", "--name", "f", "--require-auth"]);
        parse(&["projects", "create", "acme", "--name", "Acme Inc"]);
        parse(&["projects", "ls"]);
        let cli = parse(&[
            "--project",
            "acme",
            "keys",
            "create",
            "--scope",
            "service",
            "--expires-in",
            "30d",
        ]);
        assert_eq!(cli.global.project.as_deref(), Some("acme"));
        let Command::Keys(cmd::projects::KeysCommand::Create { expires_in, .. }) = cli.command
        else {
            panic!()
        };
        assert_eq!(expires_in, Some(std::time::Duration::from_secs(30 * 86_400)));
        parse(&["keys", "list"]);
        parse(&["keys", "revoke", "k1"]);
        parse(&["users", "list", "--email", "a@", "--limit", "5", "--after", "u1"]);
        parse(&["users", "show", "u1"]);
        parse(&["users", "disable", "u1"]);
        parse(&["users", "enable", "u1"]);
        parse(&["users", "delete", "u1"]);
        parse(&["users", "revoke-sessions", "u1"]);
        let cli = parse(&[
            "users",
            "set-claims",
            "u1",
            "--role",
            "a",
            "--role",
            "b",
            "--claims",
            r#"{"x":1}"#,
        ]);
        let Command::Users(cmd::users::UsersCommand::SetClaims(a)) = cli.command else { panic!() };
        assert_eq!(a.roles, ["a", "b"]);
        assert_eq!(a.claims.unwrap()["x"], 1);
        parse(&["events"]);
        parse(&["events", "log", "--after", "41", "--limit", "3"]);
        parse(&["events", "dead", "--function", "f"]);
        parse(&["events", "replay", "--all", "--function", "f"]);
        parse(&["events", "purge", "7", "--yes"]);
        parse(&["events", "publish", "jobs", r#"{"n":1}"#, "--delay", "5s"]);
        parse(&["outbox"]);
    }

    /// The `sh` code blocks of docs/guide, in reading order: (file, info string, text).
    pub(crate) fn guide_blocks() -> Vec<(String, String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/guide");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        files.sort();
        let mut blocks = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                let Some(info) = line.strip_prefix("```") else { continue };
                let body: Vec<&str> =
                    lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
                if info == "sh" || info.starts_with("sh ") {
                    let name = f.file_name().unwrap().to_string_lossy().into_owned();
                    blocks.push((name, info.to_string(), body.join("\n")));
                }
            }
        }
        blocks
    }

    /// Every `nimbus` command of the guide, run or not (`sh norun`), parses with the real CLI.
    #[test]
    fn guide_commands_parse() {
        let mut parsed = 0;
        for (file, _, text) in guide_blocks() {
            for line in text.replace("\\\n", " ").lines() {
                let words =
                    shlex::split(line).unwrap_or_else(|| panic!("{file}: cannot split {line}"));
                let mut i = 0;
                while i < words.len() {
                    let starts = words[i] == "nimbus" || words[i].ends_with("$(nimbus");
                    let at_command =
                        i == 0 || ["|", "&&", "||", ";"].contains(&words[i - 1].as_str());
                    if !(starts && (at_command || words[i].ends_with("$(nimbus"))) {
                        i += 1;
                        continue;
                    }
                    let args: Vec<&str> = words[i + 1..]
                        .iter()
                        .map(String::as_str)
                        .take_while(|w| {
                            !["|", "&&", "||", ";"].contains(w)
                                && !w.starts_with('>')
                                && !w.starts_with("2>")
                        })
                        .collect();
                    match Cli::try_parse_from(std::iter::once("nimbus").chain(args.iter().copied()))
                    {
                        Ok(_) => {}
                        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {}
                        Err(e) => {
                            panic!("{file}: `nimbus {}` does not parse:\n{e}", args.join(" "))
                        }
                    }
                    parsed += 1;
                    i += args.len() + 1;
                }
            }
        }
        assert!(parsed >= 30, "only {parsed} nimbus commands found in the guide");
    }

    #[test]
    fn broken_pipe_is_recognised_through_context() {
        let err = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing output");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
