//! `events`: the project's event subscriptions with their backlog (default), the dead-letter
//! queue (`dead`, `show`, `replay`, `purge`), the event log (`log`, auth events), and `publish`
//! to a queue.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::GlobalArgs;
use crate::client::field;
use crate::output::{Table, confirm, format_time, outln, print_json};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: Option<EventsCommand>,
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// The project's auth events (user.created, user.signed_in, ...), oldest first
    Log(crate::cmd::users::EventsArgs),
    /// Dead letters: events whose delivery failed every attempt
    Dead(Filter),
    /// One delivery with its event and every attempt
    Show { id: u64 },
    /// Deliver dead letters again (one by id, or all matching the filters with --all)
    Replay {
        id: Option<u64>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Delete dead letters (one by id, or all matching the filters with --all)
    Purge {
        id: Option<u64>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: Filter,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
    /// Publish a message (JSON) to a queue of the project
    Publish {
        queue: String,
        /// The message, as JSON (a bare word is sent as a string)
        message: String,
        /// Deliver after this long (e.g. 30s, 5m)
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Messages with the same key reach `ordered` subscribers one at a time, in order
        #[arg(long)]
        ordering_key: Option<String>,
        /// The same key within 24 hours returns the first publish instead of queueing again
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

#[derive(Args, Default)]
pub struct Filter {
    /// Only this function's deliveries
    #[arg(long, env = "NIMBUS_EVENTS_FUNCTION")]
    pub function: Option<String>,
    /// Only this trigger's (by name; `async` for asynchronous invocations)
    #[arg(long)]
    pub trigger: Option<String>,
}

impl Filter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(f) = &self.function {
            q.push(("function", f.clone()));
        }
        if let Some(t) = &self.trigger {
            q.push(("trigger", t.clone()));
        }
        q
    }
}

pub async fn run(g: &GlobalArgs, args: EventsArgs) -> Result<ExitCode> {
    let c = g.client()?;
    let value = match args.command {
        None => {
            let v = c.json(c.request(Method::GET, "/v1/triggers")).await?;
            if !g.json {
                let subs: Vec<Value> = field(&v, "subscriptions")?;
                if subs.is_empty() {
                    eprintln!(
                        "No function subscribes to events. Add [[triggers]] to a nimbus.toml."
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                let mut t = Table::new(&[
                    "FUNCTION",
                    "TRIGGER",
                    "KIND",
                    "PENDING",
                    "RETRYING",
                    "DEAD",
                    "OLDEST PENDING",
                ]);
                for s in &subs {
                    t.row(vec![
                        text(&s["function"]),
                        text(&s["trigger"]),
                        match (&s["spec"]["kind"], s["trigger"].as_str()) {
                            (Value::String(k), _) => k.clone(),
                            (_, Some("async")) => "async".into(),
                            _ => "(removed)".into(),
                        },
                        s["pending"].to_string(),
                        s["retrying"].to_string(),
                        s["dead"].to_string(),
                        s["oldest_pending_at"].as_i64().map(format_time).unwrap_or_default(),
                    ]);
                }
                t.print()?;
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
        Some(EventsCommand::Log(a)) => return crate::cmd::users::events(g, a).await,
        Some(EventsCommand::Dead(f)) => {
            let mut q = f.query();
            q.push(("state", "dead".into()));
            let v = c.json(c.request(Method::GET, "/v1/deliveries").query(&q)).await?;
            if !g.json {
                let list: Vec<Value> = field(&v, "deliveries")?;
                if list.is_empty() {
                    eprintln!("No dead letters.");
                    return Ok(ExitCode::SUCCESS);
                }
                let mut t = Table::new(&[
                    "ID",
                    "FUNCTION",
                    "TRIGGER",
                    "EVENT",
                    "SUBJECT",
                    "ATTEMPTS",
                    "LAST ERROR",
                ]);
                for d in &list {
                    t.row(vec![
                        d["id"].to_string(),
                        text(&d["function"]),
                        text(&d["trigger"]),
                        text(&d["event"]["type"]),
                        text(&d["event"]["subject"]),
                        d["attempts"].to_string(),
                        text(&d["last_error"]),
                    ]);
                }
                t.print()?;
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
        Some(EventsCommand::Show { id }) => {
            let v = c.json(c.request(Method::GET, &format!("/v1/deliveries/{id}"))).await?;
            if !g.json {
                let d = &v["delivery"];
                outln!(
                    "Delivery {id} of {} to {}/{}: {}",
                    text(&d["event"]["type"]),
                    text(&d["function"]),
                    text(&d["trigger"]),
                    text(&d["state"])
                );
                outln!(
                    "Event {} ({}), subject {}",
                    text(&d["event"]["id"]),
                    format_time(d["event"]["time"].as_i64().unwrap_or(0)),
                    text(&d["event"]["subject"])
                );
                outln!("Data: {}", d["event"]["data"]);
                let mut t = Table::new(&[
                    "ATTEMPT",
                    "STARTED",
                    "DURATION",
                    "STATUS",
                    "INVOCATION",
                    "ERROR",
                ]);
                for a in v["attempts"].as_array().into_iter().flatten() {
                    t.row(vec![
                        a["attempt"].to_string(),
                        format_time(a["started_at"].as_i64().unwrap_or(0)),
                        format!("{} ms", a["duration_ms"]),
                        a["http_status"].as_u64().map(|s| s.to_string()).unwrap_or_default(),
                        text(&a["invocation_id"]),
                        text(&a["error"]),
                    ]);
                }
                t.print()?;
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
        Some(EventsCommand::Replay { id, all, filter }) => {
            let req = match (id, all) {
                (Some(id), false) => {
                    c.request(Method::POST, &format!("/v1/deliveries/{id}/replay"))
                }
                (None, true) => {
                    c.request(Method::POST, "/v1/deliveries/replay").query(&filter.query())
                }
                _ => bail!("give a delivery id, or --all (with --function/--trigger to narrow it)"),
            };
            let v = c.json(req).await?;
            if !g.json {
                outln!("Replayed {} dead letter(s).", v["count"]);
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
        Some(EventsCommand::Purge { id, all, filter, yes }) => {
            let req = match (id, all) {
                (Some(id), false) => c.request(Method::DELETE, &format!("/v1/deliveries/{id}")),
                (None, true) => {
                    confirm("Delete every matching dead letter for good?", yes)?;
                    c.request(Method::DELETE, "/v1/deliveries").query(&filter.query())
                }
                _ => bail!("give a delivery id, or --all (with --function/--trigger to narrow it)"),
            };
            let v = c.json(req).await?;
            if !g.json {
                outln!("Purged {} dead letter(s).", v["count"]);
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
        Some(EventsCommand::Publish { queue, message, delay, ordering_key, idempotency_key }) => {
            let body: Value = serde_json::from_str(&message).unwrap_or(Value::String(message));
            let mut req =
                c.request(Method::POST, &format!("/v1/queues/{queue}/messages")).json(&json!({
                    "body": body,
                    "delay_seconds": delay.map_or(0, |d| d.as_secs()),
                    "ordering_key": ordering_key,
                }));
            if let Some(k) = idempotency_key {
                req = req.header("idempotency-key", k);
            }
            let v = c.json(req).await?;
            if !g.json {
                let repeated = if v["repeated"] == true {
                    " (repeated idempotency key: nothing new queued)"
                } else {
                    ""
                };
                outln!("Published {} to {queue}{repeated}.", text(&v["id"]));
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
    };
    print_json(&value)?;
    Ok(ExitCode::SUCCESS)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
