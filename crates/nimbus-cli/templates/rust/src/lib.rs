//! {{name}}: a Nimbus function in Rust. `nimbus build` (or `nimbus deploy`, `nimbus dev`) runs
//! `cargo build --release --target wasm32-wasip2`; Nimbus runs the result as a
//! `wasi:http/proxy` component. Whatever it prints shows up in `nimbus logs {{name}}`.

use nimbus_sdk::Client;
use nimbus_sdk::http::{respond, respond_json};
use serde_json::{Value, json};
use wasi::http::types::{IncomingRequest, ResponseOutparam};

wasi::http::proxy::export!(Function);

struct Function;

impl wasi::exports::http::incoming_handler::Guest for Function {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        match handle(&request) {
            Ok(body) => respond_json(response_out, 200, &body),
            Err(e) => {
                eprintln!("error: {e}");
                let body = format!("internal error: {e}\n");
                respond(response_out, 500, &[("content-type", "text/plain")], body.as_bytes());
            }
        }
    }
}

/// Answers one request. Env vars ([env] in nimbus.toml) and secrets (`nimbus secrets set
/// {{name}} KEY`) are plain environment variables; `Client::from_env` reads NIMBUS_API_URL and
/// NIMBUS_API_TOKEN to reach the project's data services as its service role.
fn handle(request: &IncomingRequest) -> Result<Value, nimbus_sdk::Error> {
    let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
    println!("handling {path}");
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());

    let nimbus = Client::from_env()?;
    // A document per call in collection `visits` (created on first use: 409 means it exists),
    // and a counter in the key-value store.
    let created = nimbus.request(
        "POST",
        "/v1/collections",
        &[("content-type", "application/json")],
        Some(br#"{"name": "visits"}"#.as_slice()),
    )?;
    if created.status != 409 {
        created.error_for_status()?;
    }
    let doc = nimbus.collection("visits").create(&json!({"path": path, "lang": "rust"}))?;
    let visits = nimbus.kv("app").increment("visits", 1)?;
    Ok(json!({
        "message": format!("{greeting} from {{name}}!"),
        "lang": "rust",
        "visits": visits,
        "document": doc.id,
        // A secret is an env var like any other; never echo its value.
        "api_key_set": std::env::var("API_KEY").is_ok_and(|k| !k.is_empty()),
    }))
}
