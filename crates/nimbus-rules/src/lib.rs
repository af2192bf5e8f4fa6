#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable
    )
)]
#![warn(missing_docs)]

mod ast;
mod compile;
mod env;
mod error;
mod eval;
mod lexer;
mod parser;
mod rule;
mod ruleset;

pub use ast::{CompareOp, Expr, Function, Literal, Path, Segment};
pub use env::{Auth, Caller, Context, Env, MAX_ROOTS};
pub use error::{EnvError, ParseError, ParseErrorKind, RuleSetError, UnknownRoot};
pub use rule::Rule;
pub use ruleset::{Decision, Operation, RuleSet, RuleSources, UnknownOperation};

/// Longest rule source accepted, in bytes.
pub const MAX_SOURCE_LEN: usize = 4096;

/// Deepest nesting of parentheses, list literals, calls, indexes and `!` accepted. Together with
/// [`MAX_SOURCE_LEN`] this bounds the parser's and the evaluator's recursion.
pub const MAX_DEPTH: usize = 64;

/// Parses `source` against `env` into a syntax tree, with the same checks as
/// [`Rule::compile`]. Printing the tree (`Display`) gives canonical source that parses back to
/// an equal tree.
pub fn parse(source: &str, env: &Env) -> Result<Expr, ParseError> {
    parser::parse(source, env).map(|(expr, _)| expr)
}
