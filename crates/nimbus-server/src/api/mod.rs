//! The REST API under `/v1`, one file per resource.

pub(crate) mod auth;
pub(crate) mod documents;
pub(crate) mod files;
pub(crate) mod functions;
pub(crate) mod invocations;
pub(crate) mod kv;
pub(crate) mod projects;
pub(crate) mod push;
pub(crate) mod realtime;
pub(crate) mod triggers;
pub(crate) mod usage;
pub(crate) mod users;
