//! `projects create|list|delete` (operator, admin token) and `keys create|list|revoke` (a project's API
//! keys; the project is `--project`, or the key's own project when `--token` is a service key).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use clap::Subcommand;
use nimbus_model::UnixMillis;
use serde::Deserialize;

use crate::GlobalArgs;
use crate::client::{field, parse};
use crate::output::{Table, format_time, outln, print_json};

#[derive(Subcommand)]
pub enum ProjectsCommand {
    /// Create a project (admin token only)
    Create {
        /// Slug: lowercase letters, digits and dashes; also the project's id. Immutable
        slug: String,
        /// Display name (default: the slug)
        #[arg(long, env = "NIMBUS_PROJECT_NAME")]
        name: Option<String>,
    },
    /// List projects (admin token only)
    #[command(visible_alias = "ls")]
    List,
    /// Delete a project with its functions, records, users, keys and events (admin token only);
    /// its usage history is kept, under `<slug>~deleted-<ms>` (see `nimbus usage`)
    #[command(visible_alias = "rm")]
    Delete {
        slug: String,
        /// Confirm: nothing of the project can be recovered afterwards
        #[arg(long, env = "NIMBUS_YES")]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an API key for the project; the key is printed once and never again
    Create {
        /// `service`: full access to the project's APIs, keep it on servers;
        /// `public`: identifies the project to apps, end users act under access rules
        #[arg(long, env = "NIMBUS_KEY_SCOPE", value_parser = ["service", "public"])]
        scope: String,
        /// A name to recognise the key by
        #[arg(long, env = "NIMBUS_KEY_NAME", default_value = "")]
        name: String,
        /// Expire the key after this long, like 30d or 12h (default: never)
        #[arg(long, value_name = "DURATION", env = "NIMBUS_KEY_EXPIRES_IN", value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List the project's API keys (prefixes only; secrets are never shown again)
    #[command(visible_alias = "ls")]
    List,
    /// Revoke an API key, with immediate effect
    #[command(visible_alias = "rm")]
    Revoke {
        /// Key id (see `nimbus keys list`)
        id: String,
    },
}

#[derive(Deserialize)]
struct ProjectView {
    id: String,
    slug: String,
    name: String,
    created_at: UnixMillis,
}

#[derive(Deserialize)]
struct KeyView {
    id: String,
    project: String,
    prefix: String,
    scope: String,
    #[serde(default)]
    name: String,
    created_at: UnixMillis,
    expires_at: Option<UnixMillis>,
    revoked_at: Option<UnixMillis>,
}

pub async fn projects(g: &GlobalArgs, command: ProjectsCommand) -> Result<ExitCode> {
    let client = g.client()?;
    match command {
        ProjectsCommand::Create { slug, name } => {
            let value = client
                .create_project(&slug, name.as_deref())
                .await
                .with_context(|| format!("cannot create project {slug:?}"))?;
            if g.json {
                print_json(&value)?;
            } else {
                let p: ProjectView = parse(&value)?;
                outln!("Created project {} ({})", p.slug, p.name);
                outln!(
                    "Act on it with `nimbus --project {} ...` or NIMBUS_PROJECT={}",
                    p.slug,
                    p.slug
                );
            }
        }
        ProjectsCommand::List => {
            let value = client.list_projects().await?;
            if g.json {
                print_json(&value)?;
                return Ok(ExitCode::SUCCESS);
            }
            let projects: Vec<ProjectView> = field(&value, "projects")?;
            let mut table = Table::new(&["SLUG", "ID", "CREATED", "NAME"]);
            for p in &projects {
                table.row(vec![
                    p.slug.clone(),
                    p.id.clone(),
                    format_time(p.created_at),
                    p.name.clone(),
                ]);
            }
            table.print()?;
        }
        ProjectsCommand::Delete { slug, yes } => {
            if !yes {
                anyhow::bail!(
                    "deleting project {slug:?} removes its functions, invocation records, users, \
                     API keys and events for good; add --yes to confirm"
                );
            }
            client
                .delete_project(&slug)
                .await
                .with_context(|| format!("cannot delete project {slug:?}"))?;
            if g.json {
                print_json(&serde_json::json!({ "deleted": slug }))?;
            } else {
                outln!("Deleted project {slug}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `now + d` in milliseconds since the epoch.
fn expiry(d: Duration) -> Result<UnixMillis> {
    let at = SystemTime::now()
        .checked_add(d)
        .context("--expires-in is too far in the future")?
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    UnixMillis::try_from(at.as_millis()).context("--expires-in is too far in the future")
}

fn key_state(k: &KeyView, now: UnixMillis) -> String {
    if let Some(r) = k.revoked_at {
        format!("revoked {}", format_time(r))
    } else if k.expires_at.is_some_and(|e| e <= now) {
        "expired".into()
    } else {
        "active".into()
    }
}

pub async fn keys(g: &GlobalArgs, command: KeysCommand) -> Result<ExitCode> {
    let client = g.client()?;
    match command {
        KeysCommand::Create { scope, name, expires_in } => {
            let expires_at = expires_in.map(expiry).transpose()?;
            let value = client.create_key(&scope, &name, expires_at).await?;
            if g.json {
                print_json(&value)?;
                return Ok(ExitCode::SUCCESS);
            }
            let key: String = field(&value, "key")?;
            let info: KeyView = field(&value, "info")?;
            outln!("Created {} key {} for project {}:", info.scope, info.id, info.project);
            outln!();
            outln!("    {key}");
            outln!();
            match info.expires_at {
                Some(e) => outln!("It expires at {}.", format_time(e)),
                None => {
                    outln!(
                        "It does not expire; revoke it with `nimbus{} keys revoke {}`.",
                        crate::project_flag(Some(&info.project)),
                        info.id
                    )
                }
            }
            outln!("Copy it now: it is shown only once (the server keeps only a hash).");
        }
        KeysCommand::List => {
            let value = client.list_keys().await?;
            if g.json {
                print_json(&value)?;
                return Ok(ExitCode::SUCCESS);
            }
            let keys: Vec<KeyView> = field(&value, "keys")?;
            if keys.is_empty() {
                eprintln!(
                    "No API keys yet. Create one with `nimbus{} keys create --scope service`.",
                    g.project_flag()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| UnixMillis::try_from(d.as_millis()).unwrap_or(UnixMillis::MAX));
            let mut table =
                Table::new(&["ID", "PREFIX", "SCOPE", "CREATED", "EXPIRES", "STATE", "NAME"]);
            for k in &keys {
                table.row(vec![
                    k.id.clone(),
                    k.prefix.clone(),
                    k.scope.clone(),
                    format_time(k.created_at),
                    k.expires_at.map_or_else(|| "never".into(), format_time),
                    key_state(k, now),
                    k.name.clone(),
                ]);
            }
            table.print()?;
        }
        KeysCommand::Revoke { id } => {
            let value = client.revoke_key(&id).await?;
            if g.json {
                print_json(&value)?;
            } else {
                let k: KeyView = parse(&value)?;
                outln!("Revoked key {} ({}) of project {}", k.id, k.prefix, k.project);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_in_the_future() {
        let now = expiry(Duration::ZERO).unwrap();
        let later = expiry(humantime::parse_duration("30d").unwrap()).unwrap();
        let delta = later - now;
        assert!((30 * 86_400_000..30 * 86_400_000 + 60_000).contains(&delta), "{delta}");
    }
}
