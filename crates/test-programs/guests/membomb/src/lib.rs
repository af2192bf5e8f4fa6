//! `membomb`: allocates (and touches) 1 MiB blocks without bound until memory
//! runs out; the allocation failure aborts the guest with a trap. Used to test
//! the host's per-instance memory limit.

use guest_common::wasi;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct MemBomb;

impl wasi::exports::http::incoming_handler::Guest for MemBomb {
    fn handle(_request: IncomingRequest, _out: ResponseOutparam) {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            // `vec![1; N]` writes every byte, so the pages are really used.
            blocks.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&blocks);
        }
    }
}

wasi::http::proxy::export!(MemBomb);
