//! Integration tests, linked into one binary: one link of the full dependency graph
//! instead of one per file (each link is hundreds of MB and most of the build time).

mod auth;
mod common;
mod deletion;
mod smtp;
