//! `push`: send a notification (`send`), see how a message's deliveries went (`status`), and
//! queue failed deliveries again (`replay`). Subscriptions are registered by apps over the API
//! (docs/push.md); this is the operator's side.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::GlobalArgs;
use crate::client::field;
use crate::output::{Table, format_time, outln, print_json};

#[derive(Subcommand)]
pub enum PushCommand {
    /// Send a notification to a user, a topic or one subscription (queued durably)
    Send(SendArgs),
    /// A message's delivery counts and its deliveries, one per subscription
    Status {
        /// The message id `send` printed
        message: String,
    },
    /// Queue the failed deliveries of a message (or of a subscription) again
    Replay {
        /// The message whose failed deliveries to replay
        message: Option<String>,
        /// Replay this subscription's failed deliveries instead
        #[arg(long, conflicts_with = "message")]
        subscription: Option<String>,
    },
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["user", "topic", "subscription"])))]
pub struct SendArgs {
    /// Every subscription of this user id (and their live in-app connections)
    #[arg(long)]
    user: Option<String>,
    /// Every subscription that joined this topic
    #[arg(long)]
    topic: Option<String>,
    /// One subscription, by id
    #[arg(long)]
    subscription: Option<String>,
    /// The payload: JSON, or text (a bare word is sent as it is)
    payload: String,
    /// Seconds the push service keeps it (default 1 day)
    #[arg(long)]
    ttl: Option<u32>,
    /// very-low, low, normal or high
    #[arg(long)]
    urgency: Option<String>,
    /// RFC 8030 Topic: replaces an undelivered message with the same one
    #[arg(long = "replace-topic")]
    replace_topic: Option<String>,
}

pub async fn run(g: &GlobalArgs, command: PushCommand) -> Result<ExitCode> {
    let c = g.client()?;
    let value = match command {
        PushCommand::Send(a) => {
            let to = match (a.user, a.topic, a.subscription) {
                (Some(u), None, None) => json!({"user": u}),
                (None, Some(t), None) => json!({"topic": t}),
                (None, None, Some(s)) => json!({"subscription": s}),
                _ => bail!("give one of --user, --topic, --subscription"),
            };
            let payload: Value =
                serde_json::from_str(&a.payload).unwrap_or(Value::String(a.payload));
            let body = json!({
                "to": to, "payload": payload, "ttl": a.ttl, "urgency": a.urgency,
                "topic": a.replace_topic,
            });
            let v = c.json(c.request(Method::POST, "/v1/push/messages").json(&body)).await?;
            if !g.json {
                outln!(
                    "Queued message {} for {} subscription(s).",
                    text(&v["id"]),
                    v["deliveries"]
                );
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
        PushCommand::Status { message } => {
            let m = c.json(c.request(Method::GET, &format!("/v1/push/messages/{message}"))).await?;
            let d = c
                .json(c.request(Method::GET, &format!("/v1/push/messages/{message}/deliveries")))
                .await?;
            if !g.json {
                let n = &m["deliveries"];
                outln!(
                    "Message {message} to {} {}: {} queued, {} sent, {} failed, {} expired",
                    text(&m["target_kind"]),
                    text(&m["target"]),
                    n["queued"],
                    n["sent"],
                    n["failed"],
                    n["expired"]
                );
                let list: Vec<Value> = field(&d, "deliveries")?;
                let mut t = Table::new(&[
                    "SUBSCRIPTION",
                    "STATE",
                    "ATTEMPTS",
                    "STATUS",
                    "UPDATED",
                    "ERROR",
                ]);
                for d in &list {
                    t.row(vec![
                        text(&d["subscription"]),
                        text(&d["state"]),
                        d["attempts"].to_string(),
                        text(&d["last_status"]),
                        format_time(d["updated_at"].as_i64().unwrap_or(0)),
                        text(&d["last_error"]),
                    ]);
                }
                t.print()?;
                if d["cursor"].is_string() || d["cursor"].is_number() {
                    outln!("(first {} deliveries; more with the API's cursor)", list.len());
                }
                return Ok(ExitCode::SUCCESS);
            }
            json!({"message": m, "deliveries": d["deliveries"], "cursor": d["cursor"]})
        }
        PushCommand::Replay { message, subscription } => {
            let path = match (message, subscription) {
                (Some(m), None) => format!("/v1/push/messages/{m}/replay"),
                (None, Some(s)) => format!("/v1/push/subscriptions/{s}/replay"),
                _ => bail!("give a message id, or --subscription <id>"),
            };
            let v = c.json(c.request(Method::POST, &path)).await?;
            if !g.json {
                outln!("Queued {} failed delivery(ies) again.", v["count"]);
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
