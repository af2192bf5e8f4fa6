//! The REST API under `/v1`, one file per resource.

pub(crate) mod functions;
pub(crate) mod invocations;
