//! The domain model of Nimbus: plain data that every layer (store, services, API, CLI) agrees on.
//!
//! Architecture invariant: this crate knows nothing of HTTP servers, SQL or Wasmtime. It holds data,
//! validation of that data, and nothing that does I/O.

mod function;
mod invocation;
pub mod lifecycle;
pub mod net;
pub mod retry;
mod route;
mod trigger;
pub mod usage;

pub use function::*;
pub use invocation::*;
pub use route::*;
pub use trigger::*;

/// Milliseconds since the Unix epoch; the one time representation stored and sent over the API.
pub type UnixMillis = i64;

/// The current time as [`UnixMillis`].
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
