//! `upload-summary`: the classic serverless example (the test suite builds this very file as its
//! `upload-summary` guest, crates/test-programs/guests/upload-summary). Subscribed to a bucket's object-created events, it reads the
//! uploaded text file through the in-process API, counts its lines, words and bytes, and writes a
//! document `{bucket, key, etag, lines, words, bytes, first_line}` (id = the event id, so a
//! retried delivery writes the same document) into the `summaries` collection.

use nimbus_sdk::Client;
use nimbus_sdk::events::Event;
use serde_json::json;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Summary;

fn summarise(request: &IncomingRequest) -> Result<String, String> {
    let (event, envelope) = Event::from_request(request).map_err(|e| e.to_string())?;
    let Event::ObjectCreated(object) = event else {
        return Ok(format!("ignored {}", envelope.kind));
    };
    let nimbus = Client::from_env().map_err(|e| e.to_string())?;
    let Some(file) = nimbus.bucket(&object.bucket).get(&object.key).map_err(|e| e.to_string())?
    else {
        // Deleted since the event: nothing to summarise.
        return Ok(format!("{} is gone", object.key));
    };
    let text = String::from_utf8_lossy(&file.body);
    let summary = json!({
        "bucket": object.bucket,
        "key": object.key,
        "etag": object.etag,
        "lines": text.lines().count(),
        "words": text.split_whitespace().count(),
        "bytes": file.body.len(),
        "first_line": text.lines().next().unwrap_or(""),
    });
    nimbus
        .collection("summaries")
        .put(&envelope.id, &summary)
        .map_err(|e| e.to_string())?;
    Ok(format!("summarised {}", object.key))
}

impl wasi::exports::http::incoming_handler::Guest for Summary {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match summarise(&request) {
            Ok(message) => nimbus_sdk::http::respond(out, 200, &[], message.as_bytes()),
            // A failure answers 500, so the delivery is retried.
            Err(e) => {
                eprintln!("upload-summary: {e}");
                nimbus_sdk::http::respond(out, 500, &[], e.as_bytes())
            }
        }
    }
}

wasi::http::proxy::export!(Summary);
