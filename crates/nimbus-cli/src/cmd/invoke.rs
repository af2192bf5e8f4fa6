//! `invoke`: call a function through `/v1/functions/{name}/invoke` and stream its answer to stdout.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use futures::StreamExt as _;
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};

use crate::GlobalArgs;
use crate::client::{ApiError, Client};

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
}

pub async fn run(g: &GlobalArgs, args: InvokeArgs) -> Result<ExitCode> {
    let client = g.client()?;
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
