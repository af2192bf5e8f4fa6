//! `nimbus`: run a Nimbus server (`nimbus serve`) and manage its functions through the API.
//!
//! The binary (`src/main.rs`) only calls [`main`]; everything lives here so unit tests run with
//! `cargo test --lib`.

mod client;
mod cmd;
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

/// Flags every command understands.
#[derive(clap::Args, Clone, Debug)]
pub struct GlobalArgs {
    /// URL of the Nimbus server
    #[arg(long, global = true, env = "NIMBUS_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Data directory: where `serve` keeps its state, and where the admin token is read from
    #[arg(long, global = true, env = "NIMBUS_DATA", default_value = "./nimbus-data")]
    pub data: PathBuf,

    /// Admin token (default: read from <data>/admin-token)
    #[arg(long, global = true, env = "NIMBUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Project to act on (default: the server's default project)
    #[arg(long, global = true, env = "NIMBUS_PROJECT")]
    pub project: Option<String>,

    /// Print the API's JSON instead of tables and messages
    #[arg(long, global = true, env = "NIMBUS_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,
}

impl GlobalArgs {
    /// An API client with the admin token resolved.
    pub fn client(&self) -> anyhow::Result<client::Client> {
        let token = client::resolve_token(self.token.as_deref(), &self.data)?;
        Ok(client::Client::new(&self.url, token)?.with_project(self.project.clone()))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the Nimbus server
    Serve(cmd::serve::ServeArgs),
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
        /// Version number to activate
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
    /// Create and list projects (admin token only)
    #[command(subcommand)]
    Projects(cmd::projects::ProjectsCommand),
    /// Manage the project's API keys (service and public)
    #[command(subcommand)]
    Keys(cmd::projects::KeysCommand),
    /// Manage the project's end users
    #[command(subcommand)]
    Users(cmd::users::UsersCommand),
    /// List the project's auth events (user.created, user.signed_in, ...), oldest first
    Events(cmd::users::EventsArgs),
    /// Show the emails in the development outbox (when no SMTP server is configured)
    Outbox,
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Serve(args) => cmd::serve::run(g, args).await,
        Command::Deploy(args) => cmd::deploy::deploy(g, args).await,
        Command::Build(args) => cmd::deploy::build(g, args),
        Command::New(args) => cmd::new::run(g, args),
        Command::Dev(args) => cmd::dev::run(g, args).await,
        Command::List => cmd::functions::list(g).await,
        Command::Show { name } => cmd::functions::show(g, &name).await,
        Command::Delete { name } => cmd::functions::delete(g, &name).await,
        Command::Versions { name } => cmd::functions::versions(g, &name).await,
        Command::Rollback { name, version } => cmd::functions::rollback(g, &name, version).await,
        Command::Secrets(c) => cmd::secrets::run(g, c).await,
        Command::Invoke(args) => cmd::invoke::run(g, args).await,
        Command::Logs(args) => cmd::logs::logs(g, args).await,
        Command::Invocations(args) => cmd::logs::invocations(g, args).await,
        Command::Projects(c) => cmd::projects::projects(g, c).await,
        Command::Keys(c) => cmd::projects::keys(g, c).await,
        Command::Users(c) => cmd::users::users(g, c).await,
        Command::Events(args) => cmd::users::events(g, args).await,
        Command::Outbox => cmd::users::outbox(g).await,
    }
}

/// Parse the command line, run the command, print any error; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
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
        let cli =
            parse(&["invoke", "f", "-d", "body", "-X", "PUT", "-H", "A: b", "-i", "--data", "/d"]);
        assert_eq!(cli.global.data, PathBuf::from("/d"));
        let Command::Invoke(a) = cli.command else { panic!() };
        assert_eq!(a.body.as_deref(), Some("body"));
        assert!(a.include);
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
        parse(&["serve", "--listen", "127.0.0.1:0", "--data", "/tmp/x", "--log-format", "json"]);
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
        parse(&["events", "--after", "41", "--limit", "3"]);
        parse(&["outbox"]);
    }

    #[test]
    fn broken_pipe_is_recognised_through_context() {
        let err = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing output");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
