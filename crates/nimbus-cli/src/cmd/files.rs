//! `buckets ls|create|delete` (management) and `files put|get|ls|rm` (objects of a bucket of
//! `--project`, default `default`). Bodies stream both ways: `put` sends the file as it reads it,
//! `get` writes the answer as it arrives, so large files never sit in memory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::GlobalArgs;
use crate::client::segment;
use crate::output::{Table, format_bytes, format_time, outln, print_json};

#[derive(Subcommand)]
pub enum BucketsCommand {
    /// List the project's buckets with their usage
    #[command(visible_alias = "list")]
    Ls,
    /// Create a bucket
    Create {
        /// 3-63 of a-z 0-9 - . (S3's rules)
        name: String,
        /// private (default), public-read, signed-in or owner-only
        #[arg(long, default_value = "private")]
        access: String,
        /// Largest object, in bytes
        #[arg(long, value_name = "BYTES")]
        max_object_bytes: Option<u64>,
        /// Total bytes the bucket may hold
        #[arg(long, value_name = "BYTES")]
        quota_bytes: Option<u64>,
    },
    /// Delete a bucket (one that holds objects only with --force)
    #[command(visible_alias = "rm")]
    Delete {
        name: String,
        /// Delete its objects too
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum FilesCommand {
    /// Upload a file (or stdin with `-`) as BUCKET/KEY
    Put {
        bucket: String,
        key: String,
        /// The file to upload; `-` reads stdin
        file: PathBuf,
        /// Content type (default: application/octet-stream)
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Download BUCKET/KEY to stdout, or to a file with -o
    Get {
        bucket: String,
        key: String,
        /// Write to this file instead of stdout
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List the objects of a bucket
    #[command(visible_alias = "list")]
    Ls {
        bucket: String,
        /// Only keys starting with this
        #[arg(long, default_value = "")]
        prefix: String,
        /// Group keys by this delimiter (like directories with `/`)
        #[arg(long)]
        delimiter: Option<String>,
        /// Objects per page (the server caps it)
        #[arg(short = 'n', long)]
        limit: Option<u32>,
        /// The page after this cursor (printed at the end of a full page)
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Delete BUCKET/KEY
    #[command(visible_alias = "delete")]
    Rm { bucket: String, key: String },
}

fn objects_path(g: &GlobalArgs, bucket: &str) -> String {
    let project = g.project.as_deref().unwrap_or("default");
    format!("/v1/projects/{}/buckets/{}/objects", segment(project), segment(bucket))
}

/// A key in a URL path: each `/`-separated part encoded, the slashes kept (the API takes the
/// rest of the path as the key).
fn key_path(g: &GlobalArgs, bucket: &str, key: &str) -> String {
    let parts: Vec<String> = key.split('/').map(segment).collect();
    format!("{}/{}", objects_path(g, bucket), parts.join("/"))
}

pub async fn buckets(g: &GlobalArgs, command: BucketsCommand) -> Result<ExitCode> {
    let client = g.client()?;
    match command {
        BucketsCommand::Ls => {
            let value = client.json(client.request(Method::GET, "/v1/buckets")).await?;
            if g.json {
                print_json(&value)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&["NAME", "ACCESS", "OBJECTS", "BYTES", "CREATED"]);
            for b in value["buckets"].as_array().into_iter().flatten() {
                let access = match &b["access"] {
                    Value::String(s) => s.clone(),
                    _ => "rules".into(),
                };
                table.row(vec![
                    b["name"].as_str().unwrap_or("").into(),
                    access,
                    b["objects"].as_u64().unwrap_or(0).to_string(),
                    format_bytes(b["bytes"].as_u64().unwrap_or(0)),
                    format_time(b["created_at"].as_i64().unwrap_or(0)),
                ]);
            }
            table.print()?;
        }
        BucketsCommand::Create { name, access, max_object_bytes, quota_bytes } => {
            let mut body = json!({"name": name, "access": access});
            if let Some(n) = max_object_bytes {
                body["max_object_bytes"] = n.into();
            }
            if let Some(n) = quota_bytes {
                body["quota_bytes"] = n.into();
            }
            let value =
                client.json(client.request(Method::POST, "/v1/buckets").json(&body)).await?;
            if g.json {
                print_json(&value)?;
            } else {
                outln!("Created bucket {name}");
            }
        }
        BucketsCommand::Delete { name, force } => {
            let path =
                format!("/v1/buckets/{}{}", segment(&name), if force { "?force=true" } else { "" });
            let value = client.json(client.request(Method::DELETE, &path)).await?;
            if g.json {
                print_json(&value)?;
            } else {
                let n = value["deleted_objects"].as_u64().unwrap_or(0);
                outln!("Deleted bucket {name} ({n} objects)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn files(g: &GlobalArgs, command: FilesCommand) -> Result<ExitCode> {
    let client = g.client()?;
    match command {
        FilesCommand::Put { bucket, key, file, content_type } => {
            let (body, len) = if file.as_os_str() == "-" {
                let stdin = tokio_util::io::ReaderStream::new(tokio::io::stdin());
                (reqwest::Body::wrap_stream(stdin), None)
            } else {
                let f = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("cannot open {}", file.display()))?;
                let len = f.metadata().await.map(|m| m.len()).ok();
                let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 << 10);
                (reqwest::Body::wrap_stream(stream), len)
            };
            let mut req = client
                .request(Method::PUT, &key_path(g, &bucket, &key))
                .header(
                    "content-type",
                    content_type.as_deref().unwrap_or("application/octet-stream"),
                )
                .body(body);
            // A known length lets the server refuse an over-limit upload before reading it.
            if let Some(n) = len {
                req = req.header("content-length", n);
            }
            let value = client.json(req).await?;
            if g.json {
                print_json(&value)?;
            } else {
                let size = value["size"].as_u64().unwrap_or(0);
                outln!(
                    "Stored {bucket}/{key} ({}, etag {})",
                    format_bytes(size),
                    value["etag"].as_str().unwrap_or("")
                );
            }
        }
        FilesCommand::Get { bucket, key, output } => {
            let resp =
                client.send(client.request(Method::GET, &key_path(g, &bucket, &key))).await?;
            let mut stream = resp.bytes_stream();
            let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = match &output {
                Some(path) => Box::new(
                    tokio::fs::File::create(path)
                        .await
                        .with_context(|| format!("cannot create {}", path.display()))?,
                ),
                None => Box::new(tokio::io::stdout()),
            };
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| client.transport_error(e))?;
                out.write_all(&chunk).await.context("writing the download")?;
            }
            out.flush().await.context("writing the download")?;
            if let (Some(path), false) = (&output, g.json) {
                eprintln!("Saved {bucket}/{key} to {}", path.display());
            }
        }
        FilesCommand::Ls { bucket, prefix, delimiter, limit, cursor } => {
            let mut query = vec![("prefix", prefix)];
            if let Some(d) = delimiter {
                query.push(("delimiter", d));
            }
            if let Some(n) = limit {
                query.push(("limit", n.to_string()));
            }
            if let Some(c) = cursor {
                query.push(("cursor", c));
            }
            let req = client.request(Method::GET, &objects_path(g, &bucket)).query(&query);
            let value = client.json(req).await?;
            if g.json {
                print_json(&value)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&["KEY", "SIZE", "TYPE", "CREATED"]);
            for p in value["common_prefixes"].as_array().into_iter().flatten() {
                table.row(vec![
                    p.as_str().unwrap_or("").into(),
                    "-".into(),
                    "(prefix)".into(),
                    "-".into(),
                ]);
            }
            for o in value["objects"].as_array().into_iter().flatten() {
                table.row(vec![
                    o["key"].as_str().unwrap_or("").into(),
                    format_bytes(o["size"].as_u64().unwrap_or(0)),
                    o["content_type"].as_str().unwrap_or("").into(),
                    format_time(o["created_at"].as_i64().unwrap_or(0)),
                ]);
            }
            table.print()?;
            if let Some(c) = value["cursor"].as_str() {
                eprintln!("more: --cursor {c}");
            }
        }
        FilesCommand::Rm { bucket, key } => {
            client.send(client.request(Method::DELETE, &key_path(g, &bucket, &key))).await?;
            if !g.json {
                outln!("Deleted {bucket}/{key}");
            } else {
                print_json(&json!({"deleted": format!("{bucket}/{key}")}))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
