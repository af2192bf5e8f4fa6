//! `secrets set|rm|list`: values are write-only on the server; only names come back.

use std::io::{IsTerminal as _, Read as _};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use nimbus_model::FunctionInfo;
use serde_json::json;

use crate::GlobalArgs;
use crate::client::parse;
use crate::output::{outln, print_json};

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Set a secret. Without VALUE it is read from stdin, so it stays out of shell history
    Set {
        /// Function name
        name: String,
        /// Secret name (becomes an environment variable of the function)
        key: String,
        /// The value; omit it to read from stdin
        value: Option<String>,
    },
    /// Remove a secret
    #[command(visible_alias = "delete")]
    Rm {
        /// Function name
        name: String,
        /// Secret name
        key: String,
    },
    /// List a function's secret names
    #[command(visible_alias = "ls")]
    List {
        /// Function name
        name: String,
    },
}

pub async fn run(g: &GlobalArgs, command: SecretsCommand) -> Result<ExitCode> {
    match command {
        SecretsCommand::Set { name, key, value } => {
            let value = match value {
                Some(v) => v,
                None => read_stdin_value(&key)?,
            };
            g.client()?.set_secret(&name, &key, &value).await?;
            if g.json {
                print_json(&json!({ "function": name, "set": key }))?;
            } else {
                outln!("Set secret {key} on {name}");
            }
        }
        SecretsCommand::Rm { name, key } => {
            g.client()?.delete_secret(&name, &key).await?;
            if g.json {
                print_json(&json!({ "function": name, "removed": key }))?;
            } else {
                outln!("Removed secret {key} from {name}");
            }
        }
        SecretsCommand::List { name } => {
            let value = g.client()?.get_function(&name).await?;
            let f: FunctionInfo = parse(&value)?;
            if g.json {
                print_json(&json!({ "function": f.name, "secrets": f.secrets }))?;
            } else if f.secrets.is_empty() {
                eprintln!("{name} has no secrets");
            } else {
                for s in &f.secrets {
                    outln!("{s}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Read a secret from stdin: everything up to EOF, without the final line break.
fn read_stdin_value(key: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Enter the value of {key}, then press Enter and Ctrl-D:");
    }
    let mut value = String::new();
    stdin.lock().read_to_string(&mut value).context("cannot read the secret value from stdin")?;
    let value =
        value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value);
    if value.is_empty() {
        bail!(
            "empty secret value on stdin (pass VALUE as an argument to set an empty secret on purpose)"
        );
    }
    Ok(value.to_string())
}
