//! The smallest useful Nimbus function: answers every request with
//! `200 text/plain` "Hello from Nimbus!\n".
//!
//! A Nimbus function is a WASI 0.2 `wasi:http/proxy` component. With the `wasi`
//! crate, implementing `incoming_handler::Guest` and calling
//! `wasi::http::proxy::export!` is all it takes; `cargo build --target
//! wasm32-wasip2` emits the component directly.

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

const BODY: &[u8] = b"Hello from Nimbus!\n";

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = Fields::from_list(&[
            ("content-type".to_string(), b"text/plain; charset=utf-8".to_vec()),
            ("content-length".to_string(), BODY.len().to_string().into_bytes()),
        ])
        .unwrap();
        let response = OutgoingResponse::new(headers);
        response.set_status_code(200).unwrap();
        let body = response.body().unwrap();
        // Send the status and headers; the body follows.
        ResponseOutparam::set(response_out, Ok(response));

        let stream = body.write().unwrap();
        stream.blocking_write_and_flush(BODY).unwrap();
        drop(stream); // the stream must be dropped before the body is finished
        OutgoingBody::finish(body, None).unwrap();
    }
}

wasi::http::proxy::export!(Hello);
