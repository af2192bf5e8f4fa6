//! `login` (save a server's URL, token and default project as a profile of the CLI config) and
//! `profiles` (list them, tokens masked).

use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::json;

use crate::client::{self, Client};
use crate::config::{Config, Profile, config_path, mask_token};
use crate::output::{Table, outln, print_json};
use crate::{DEFAULT_URL, GlobalArgs};

#[derive(Args)]
pub struct LoginArgs {
    /// Make this profile the default one (the first profile saved always is)
    #[arg(long = "default", env = "NIMBUS_LOGIN_DEFAULT", value_parser = clap::builder::BoolishValueParser::new())]
    pub make_default: bool,
}

/// The profile `login` writes when `--profile` names none.
const DEFAULT_PROFILE: &str = "default";

pub async fn login(g: &GlobalArgs, args: LoginArgs) -> Result<ExitCode> {
    let name = g.profile.clone().unwrap_or_else(|| DEFAULT_PROFILE.to_string());
    let url = g.url.clone().unwrap_or_else(|| DEFAULT_URL.to_string());
    let token = match (&g.token, &g.data_dir) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(dir)) => client::resolve_token(None, dir)?,
        (None, None) => read_token_from_stdin(&url)?,
    };
    // Check the credentials before saving them: a typo found now is cheaper than later.
    let c = Client::new(&url, token.clone())?.with_project(g.project.clone());
    c.list_functions().await.with_context(|| format!("cannot log in to {url}"))?;

    let path = config_path()?;
    let mut cfg = Config::load(&path)?;
    cfg.profiles.insert(
        name.clone(),
        Profile { url: url.clone(), token: Some(token.clone()), project: g.project.clone() },
    );
    let is_default = args.make_default || cfg.default_profile.is_none();
    if is_default {
        cfg.default_profile = Some(name.clone());
    }
    cfg.save(&path)?;
    if g.json {
        print_json(&json!({
            "profile": name, "url": url, "project": g.project, "default": is_default,
            "config": path,
        }))?;
    } else {
        outln!(
            "Logged in to {url} as profile {name} (token {}){}; saved in {}",
            mask_token(&token),
            g.project.as_deref().map(|p| format!(", project {p}")).unwrap_or_default(),
            path.display()
        );
        if !is_default {
            outln!(
                "Use it with `nimbus --profile {name} ...`, or make it the default with `nimbus --profile {name} login --default`"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The token from stdin: prompted on a terminal, else the first line of what is piped in.
fn read_token_from_stdin(url: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!(
            "Paste the admin token (in the server's <data>/admin-token) or a service API key for {url}, then press Enter:"
        );
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("cannot read the token from stdin")?;
    let token = line.trim().to_string();
    if token.is_empty() {
        bail!(
            "no token: pass --token, --data-dir (the server's data directory), or the token on stdin"
        );
    }
    Ok(token)
}

pub fn list(g: &GlobalArgs) -> Result<ExitCode> {
    let path = config_path()?;
    let cfg = Config::load(&path)?;
    if g.json {
        let profiles: serde_json::Map<String, serde_json::Value> = cfg
            .profiles
            .iter()
            .map(|(n, p)| {
                (
                    n.clone(),
                    json!({
                        "url": p.url, "project": p.project,
                        "token": p.token.as_deref().map(mask_token),
                        "default": cfg.default_profile.as_deref() == Some(n),
                    }),
                )
            })
            .collect();
        print_json(&json!({ "config": path, "profiles": profiles }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if cfg.profiles.is_empty() {
        eprintln!(
            "No profiles in {} yet. `nimbus serve` saves one on its first start; `nimbus login --url URL` adds others.",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["PROFILE", "DEFAULT", "URL", "PROJECT", "TOKEN"]);
    for (n, p) in &cfg.profiles {
        table.row(vec![
            n.clone(),
            if cfg.default_profile.as_deref() == Some(n) { "*".into() } else { String::new() },
            p.url.clone(),
            p.project.clone().unwrap_or_else(|| "-".into()),
            p.token.as_deref().map_or_else(|| "-".into(), mask_token),
        ]);
    }
    table.print()?;
    Ok(ExitCode::SUCCESS)
}
