//! Integration tests, linked into one binary: one link of the full dependency graph
//! instead of one per file (each link is hundreds of MB and most of the build time).

mod auth;
mod boundaries;
mod common;
mod compile_cache;
mod contract;
mod documents;
mod files;
mod foreign;
mod functions;
mod hostile;
mod in_process;
mod kv;
mod logs;
mod projects;
mod push;
mod realtime;
mod s3;
mod scaling;
mod triggers;
mod usage;
