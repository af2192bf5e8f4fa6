//! `invoke`: call a function through `/v1/functions/{name}/invoke` and stream its answer to stdout.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use futures::StreamExt as _;
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};

use crate::GlobalArgs;
use crate::client::{ApiError, Client, field};
use crate::output::{outln, print_json};

/// The header the server adds to every function response.
const INVOCATION_ID_HEADER: &str = "x-nimbus-invocation-id";

#[derive(Args)]
pub struct InvokeArgs {
    /// Function name
    pub name: String,

    /// Request path (and query) the function sees
    #[arg(long, env = "NIMBUS_INVOKE_PATH", default_value = "/")]
    pub path: String,

    /// HTTP method (default: GET, or POST with --data)
    #[arg(short = 'X', long = "request", value_name = "METHOD", env = "NIMBUS_INVOKE_METHOD")]
    pub method: Option<String>,

    /// Request body, as curl's -d/--data: @FILE reads a file, @- reads stdin
    #[arg(
        short = 'd',
        long = "data",
        visible_alias = "body",
        value_name = "DATA",
        env = "NIMBUS_INVOKE_BODY"
    )]
    pub body: Option<String>,

    /// Request header, as 'Name: value' (repeatable)
    #[arg(
        short = 'H',
        long = "header",
        value_name = "HEADER",
        env = "NIMBUS_INVOKE_HEADERS",
        value_delimiter = '\n'
    )]
    pub headers: Vec<String>,

    /// Print the response status and headers before the body
    #[arg(short = 'i', long = "include", env = "NIMBUS_INVOKE_INCLUDE", value_parser = clap::builder::BoolishValueParser::new())]
    pub include: bool,

    /// Run it asynchronously: the server queues the request (retried like an event) and answers
    /// with an invocation id at once; see the result with `nimbus invoke --result ID`
    #[arg(long = "async", env = "NIMBUS_INVOKE_ASYNC", value_parser = clap::builder::BoolishValueParser::new())]
    pub run_async: bool,

    /// With --async: wait until it finished, then print its response as a plain invoke does
    #[arg(long, requires = "run_async")]
    pub wait: bool,

    /// With --async: a URL the server POSTs the outcome to when it finished
    #[arg(long, requires = "run_async", env = "NIMBUS_INVOKE_CALLBACK_URL")]
    pub callback_url: Option<String>,

    /// With --async: the same key within 24 hours returns the first invocation instead of
    /// running again
    #[arg(long, requires = "run_async")]
    pub idempotency_key: Option<String>,

    /// Show an asynchronous invocation by id (NAME is ignored): its status, then its response
    /// once it finished
    #[arg(long, value_name = "ID", conflicts_with_all = ["run_async", "body"])]
    pub result: Option<String>,
}

/// How often `--wait` asks whether an asynchronous invocation finished.
const POLL: std::time::Duration = std::time::Duration::from_millis(250);

pub async fn run(g: &GlobalArgs, args: InvokeArgs) -> Result<ExitCode> {
    let client = g.client()?;
    if let Some(id) = &args.result {
        return show_async(g, &client, id, args.include, false).await;
    }
    let method = match &args.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .with_context(|| format!("invalid HTTP method {m:?}"))?,
        None if args.body.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut req = client.request(method, &Client::invoke_path(&args.name, &args.path));
    for h in &args.headers {
        let (name, value) = parse_header(h)?;
        req = req.header(name, value);
    }
    if let Some(data) = &args.body {
        req = req.body(read_body(data)?);
    }
    if args.run_async {
        return run_async(g, &client, req, &args).await;
    }
    let resp = client.send_raw(req).await?;
    let status = resp.status();

    // An error the API itself raised (unknown function, bad token) rather than the function's own answer.
    if !status.is_success() && !resp.headers().contains_key(INVOCATION_ID_HEADER) {
        let body = resp.bytes().await.unwrap_or_default();
        let err = ApiError::from_body(status, &body);
        if err.code != "http_error" {
            return Err(err.into());
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&body)?;
        out.flush()?;
        return Ok(ExitCode::FAILURE);
    }

    let mut out = std::io::stdout().lock();
    if args.include {
        writeln!(out, "{:?} {}", resp.version(), status)?;
        for (name, value) in resp.headers() {
            writeln!(out, "{}: {}", name, String::from_utf8_lossy(value.as_bytes()))?;
        }
        writeln!(out)?;
    }
    drop(out);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| client.transport_error(e)).context("reading the response body")?;
        let mut out = std::io::stdout().lock();
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(if status.as_u16() >= 400 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `--async`: queue the request, print its id (or, with `--wait`, its response once finished).
async fn run_async(
    g: &GlobalArgs,
    client: &Client,
    mut req: reqwest::RequestBuilder,
    args: &InvokeArgs,
) -> Result<ExitCode> {
    req = req.header("prefer", "respond-async");
    if let Some(url) = &args.callback_url {
        req = req.header("x-nimbus-callback-url", url);
    }
    if let Some(key) = &args.idempotency_key {
        req = req.header("idempotency-key", key);
    }
    let accepted = client.json(req).await?;
    let id: String = field(&accepted, "id")?;
    if args.wait {
        return show_async(g, client, &id, args.include, true).await;
    }
    if g.json {
        print_json(&accepted)?;
    } else {
        let again =
            if accepted["repeated"] == true { " (an earlier call with this key)" } else { "" };
        outln!("queued {id}{again}");
        eprintln!("see its result: nimbus invoke {} --result {id}", args.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// An asynchronous invocation: its status while queued or running (or, with `wait`, polled until
/// it finished); once finished, its response body on stdout as a plain invoke prints it. Exits
/// non-zero when it failed or the function answered an error.
async fn show_async(
    g: &GlobalArgs,
    client: &Client,
    id: &str,
    include: bool,
    wait: bool,
) -> Result<ExitCode> {
    let path = format!("/v1/async-invocations/{}", crate::client::segment(id));
    let status = loop {
        let v = client.json(client.request(Method::GET, &path)).await?;
        let finished = matches!(v["status"].as_str(), Some("succeeded" | "failed"));
        if finished || !wait {
            break v;
        }
        tokio::time::sleep(POLL).await;
    };
    let state = status["status"].as_str().unwrap_or_default();
    let response = &status["response"];
    let failed = state == "failed" || response["status"].as_u64().is_some_and(|s| s >= 400);
    if g.json {
        print_json(&status)?;
    } else if response.is_object() && matches!(state, "succeeded" | "failed") {
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD
            .decode(response["body_base64"].as_str().unwrap_or_default())
            .context("the server sent a response body that is not base64")?;
        let mut out = std::io::stdout().lock();
        if include {
            writeln!(
                out,
                "{} ({state} after {} attempts)",
                response["status"], status["attempts"]
            )?;
            for pair in response["headers"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{}: {}",
                    pair[0].as_str().unwrap_or(""),
                    pair[1].as_str().unwrap_or("")
                )?;
            }
            writeln!(out)?;
        }
        out.write_all(&body)?;
        out.flush()?;
        if response["truncated"] == true {
            eprintln!("(the response was longer than what the server keeps; cut here)");
        }
    } else {
        outln!("{id}: {state} ({} attempts)", status["attempts"]);
        if let Some(e) = status["error"].as_str() {
            outln!("last error: {e}");
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn parse_header(h: &str) -> Result<(HeaderName, HeaderValue)> {
    let Some((name, value)) = h.split_once(':') else {
        bail!("invalid header {h:?}: write it as 'Name: value'");
    };
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("invalid header name in {h:?}"))?;
    let value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("invalid header value in {h:?}"))?;
    Ok((name, value))
}

/// `-d` as curl reads it: a literal, `@file`, or `@-` for stdin.
fn read_body(data: &str) -> Result<Vec<u8>> {
    match data.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .context("cannot read the body from stdin")?;
            Ok(buf)
        }
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read the body from {path}"))
        }
        None => Ok(data.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let (n, v) = parse_header("Content-Type:  text/plain ").unwrap();
        assert_eq!(n, "content-type");
        assert_eq!(v, "text/plain");
        assert_eq!(parse_header("X-A: b: c").unwrap().1, "b: c");
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }

    #[test]
    fn body_sources() {
        assert_eq!(read_body("hi").unwrap(), b"hi");
        let path = std::env::temp_dir().join(format!("nimbus-body-test-{}", std::process::id()));
        std::fs::write(&path, b"from file").unwrap();
        assert_eq!(read_body(&format!("@{}", path.display())).unwrap(), b"from file");
        std::fs::remove_file(&path).unwrap();
        assert!(read_body("@/nonexistent/nimbus/file").is_err());
    }
}
