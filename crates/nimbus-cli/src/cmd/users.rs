//! `users ...` (a project's end users), `events` (auth events) and `outbox` (the development
//! email outbox). They act on `--project`, or the key's own project when `--token` is a service key.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use nimbus_model::UnixMillis;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::GlobalArgs;
use crate::client::{field, parse};
use crate::output::{Table, format_time, outln, print_json};

#[derive(Subcommand)]
pub enum UsersCommand {
    /// List or search users, oldest first
    #[command(visible_alias = "ls")]
    List {
        /// Only users whose email starts with this
        #[arg(long, value_name = "PREFIX", env = "NIMBUS_USERS_EMAIL")]
        email: Option<String>,
        /// How many users to show (the server caps it)
        #[arg(short = 'n', long, env = "NIMBUS_USERS_LIMIT")]
        limit: Option<u32>,
        /// Show the page after this user id (printed at the end of a full page)
        #[arg(long, value_name = "ID", env = "NIMBUS_USERS_AFTER")]
        after: Option<String>,
    },
    /// Show a user
    Show {
        /// User id
        id: String,
    },
    /// Disable a user: they can no longer sign in or refresh their session
    Disable {
        /// User id
        id: String,
    },
    /// Enable a disabled user again
    Enable {
        /// User id
        id: String,
    },
    /// Delete a user and their sessions
    #[command(visible_alias = "rm")]
    Delete {
        /// User id
        id: String,
        /// Do not ask for confirmation (needed when stdin is not a terminal)
        #[arg(short = 'y', long, env = "NIMBUS_YES", value_parser = clap::builder::BoolishValueParser::new())]
        yes: bool,
    },
    /// Revoke all of a user's sessions (their tokens stop working at once)
    RevokeSessions {
        /// User id
        id: String,
    },
    /// Set a user's roles and custom claims, as they appear in access tokens
    SetClaims(SetClaimsArgs),
}

#[derive(Args)]
pub struct SetClaimsArgs {
    /// User id
    pub id: String,
    /// A role (repeatable; replaces the user's roles)
    #[arg(long = "role", value_name = "ROLE", env = "NIMBUS_USERS_ROLES", value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Remove all of the user's roles
    #[arg(long, conflicts_with = "roles", env = "NIMBUS_USERS_CLEAR_ROLES", value_parser = clap::builder::BoolishValueParser::new())]
    pub clear_roles: bool,
    /// Custom claims as a JSON object, like '{"plan":"pro"}' (replaces the user's claims)
    #[arg(long, value_name = "JSON", env = "NIMBUS_USERS_CLAIMS", value_parser = parse_claims)]
    pub claims: Option<Map<String, Value>>,
}

#[derive(Args)]
pub struct EventsArgs {
    /// Only events recorded after this position (the SEQ of the last event seen)
    #[arg(long, value_name = "SEQ", env = "NIMBUS_EVENTS_AFTER")]
    pub after: Option<u64>,
    /// How many events to show
    #[arg(short = 'n', long, env = "NIMBUS_EVENTS_LIMIT")]
    pub limit: Option<u32>,
}

fn parse_claims(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("claims must be a JSON object, like '{\"plan\":\"pro\"}'".into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

#[derive(Deserialize)]
struct UserView {
    id: String,
    project: String,
    email: Option<String>,
    #[serde(default)]
    email_verified: bool,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    anon: bool,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    claims: Map<String, Value>,
    created_at: UnixMillis,
    updated_at: UnixMillis,
}

impl UserView {
    fn email_cell(&self) -> String {
        match &self.email {
            Some(e) => e.clone(),
            None if self.anon => "(anonymous)".into(),
            None => "-".into(),
        }
    }
}

#[derive(Deserialize)]
struct EventView {
    seq: u64,
    id: String,
    #[serde(rename = "type")]
    kind: String,
    subject: String,
    #[serde(default)]
    data: Value,
    created_at: UnixMillis,
}

#[derive(Deserialize)]
struct MessageView {
    to: String,
    subject: String,
    kind: Value,
    link: Option<String>,
    created_at: UnixMillis,
}

fn yes_no(b: bool) -> String {
    if b { "yes".into() } else { "no".into() }
}

fn print_user(u: &UserView) -> Result<()> {
    outln!("id:             {}", u.id);
    outln!("project:        {}", u.project);
    outln!("email:          {}", u.email_cell());
    outln!("email verified: {}", yes_no(u.email_verified));
    outln!("disabled:       {}", yes_no(u.disabled));
    outln!("anonymous:      {}", yes_no(u.anon));
    outln!(
        "roles:          {}",
        if u.roles.is_empty() { "none".into() } else { u.roles.join(", ") }
    );
    if u.claims.is_empty() {
        outln!("claims:         none");
    } else {
        outln!("claims:         {}", Value::Object(u.claims.clone()));
    }
    outln!("created:        {}", format_time(u.created_at));
    outln!("updated:        {}", format_time(u.updated_at));
    Ok(())
}

pub async fn users(g: &GlobalArgs, command: UsersCommand) -> Result<ExitCode> {
    let client = g.client()?;
    match command {
        UsersCommand::List { email, limit, after } => {
            let value = client.list_users(email.as_deref(), after.as_deref(), limit).await?;
            if g.json {
                print_json(&value)?;
                return Ok(ExitCode::SUCCESS);
            }
            let users: Vec<UserView> = field(&value, "users")?;
            let next: Option<String> = field(&value, "next").unwrap_or(None);
            if users.is_empty() {
                eprintln!("No users.");
            } else {
                let mut table =
                    Table::new(&["ID", "EMAIL", "VERIFIED", "DISABLED", "CREATED", "ROLES"]);
                for u in &users {
                    table.row(vec![
                        u.id.clone(),
                        u.email_cell(),
                        yes_no(u.email_verified),
                        yes_no(u.disabled),
                        format_time(u.created_at),
                        if u.roles.is_empty() { "-".into() } else { u.roles.join(",") },
                    ]);
                }
                table.print()?;
            }
            if let Some(next) = next {
                // The hint repeats the filters and the project, so the next page is of the same list.
                let mut hint = format!("nimbus{} users list", g.project_flag());
                if let Some(e) = &email {
                    hint.push_str(&format!(" --email '{e}'"));
                }
                if let Some(l) = limit {
                    hint.push_str(&format!(" --limit {l}"));
                }
                eprintln!("More users: `{hint} --after {next}`");
            }
        }
        UsersCommand::Show { id } => {
            let value = client.get_user(&id).await?;
            if g.json {
                print_json(&value)?;
            } else {
                print_user(&parse(&value)?)?;
            }
        }
        UsersCommand::Disable { id } => set_disabled(g, &id, true).await?,
        UsersCommand::Enable { id } => set_disabled(g, &id, false).await?,
        UsersCommand::Delete { id, yes } => {
            crate::output::confirm(&format!("Delete user {id} and their sessions?"), yes)?;
            client.delete_user(&id).await?;
            if g.json {
                print_json(&json!({ "deleted": id }))?;
            } else {
                outln!("Deleted user {id}");
            }
        }
        UsersCommand::RevokeSessions { id } => {
            let value = client.revoke_user_sessions(&id).await?;
            if g.json {
                print_json(&value)?;
            } else {
                let n: u64 = field(&value, "sessions")?;
                outln!("Revoked {n} session{} of user {id}", if n == 1 { "" } else { "s" });
            }
        }
        UsersCommand::SetClaims(a) => {
            if a.roles.is_empty() && !a.clear_roles && a.claims.is_none() {
                bail!("nothing to set: pass --role (repeatable), --clear-roles or --claims JSON");
            }
            let mut patch = Map::new();
            if !a.roles.is_empty() || a.clear_roles {
                patch.insert("roles".into(), json!(a.roles));
            }
            if let Some(c) = a.claims {
                patch.insert("claims".into(), Value::Object(c));
            }
            let value = client
                .patch_user(&a.id, &Value::Object(patch))
                .await
                .with_context(|| format!("cannot set the claims of user {}", a.id))?;
            if g.json {
                print_json(&value)?;
            } else {
                let u: UserView = parse(&value)?;
                outln!("Updated user {}", u.id);
                print_user(&u)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_disabled(g: &GlobalArgs, id: &str, disabled: bool) -> Result<()> {
    let value = g.client()?.patch_user(id, &json!({ "disabled": disabled })).await?;
    if g.json {
        print_json(&value)?;
    } else {
        let u: UserView = parse(&value)?;
        let who = u.email.as_deref().unwrap_or(&u.id);
        if disabled {
            outln!("Disabled user {} ({who}): they can no longer sign in", u.id);
        } else {
            outln!("Enabled user {} ({who})", u.id);
        }
    }
    Ok(())
}

pub async fn events(g: &GlobalArgs, args: EventsArgs) -> Result<ExitCode> {
    let value = g.client()?.events(args.after, args.limit).await?;
    if g.json {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let events: Vec<EventView> = field(&value, "events")?;
    if events.is_empty() {
        eprintln!("No events.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["SEQ", "TIME", "ID", "TYPE", "SUBJECT", "DATA"]);
    for e in &events {
        let data = match &e.data {
            Value::Null => String::new(),
            Value::Object(m) if m.is_empty() => String::new(),
            d => d.to_string(),
        };
        table.row(vec![
            e.seq.to_string(),
            format_time(e.created_at),
            e.id.clone(),
            e.kind.clone(),
            e.subject.clone(),
            data,
        ]);
    }
    table.print()?;
    // A full page (the server's default is 100): there may be more after the last position.
    if let Some(last) = events.last()
        && events.len() == args.limit.unwrap_or(100) as usize
    {
        eprintln!("More events: `nimbus events --after {}`", last.seq);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn outbox(g: &GlobalArgs) -> Result<ExitCode> {
    let value = g.client()?.outbox().await?;
    if g.json {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let messages: Vec<MessageView> = field(&value, "messages")?;
    if messages.is_empty() {
        eprintln!("The outbox is empty.");
        return Ok(ExitCode::SUCCESS);
    }
    for m in &messages {
        let kind = m.kind.as_str().map_or_else(|| m.kind.to_string(), str::to_string);
        outln!("{} {kind} to {}: {}", format_time(m.created_at), m.to, m.subject);
        if let Some(link) = &m.link {
            outln!("  {link}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_must_be_an_object() {
        assert_eq!(parse_claims(r#"{"plan":"pro"}"#).unwrap()["plan"], "pro");
        assert!(parse_claims("[1]").unwrap_err().contains("JSON object"));
        assert!(parse_claims("{").unwrap_err().contains("not valid JSON"));
    }
}
