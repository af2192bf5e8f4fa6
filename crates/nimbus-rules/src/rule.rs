//! One compiled rule.

use std::fmt;

use serde_json::Value;

use crate::ast::Expr;
use crate::compile::{Program, compile};
use crate::env::{Context, Env};
use crate::error::ParseError;
use crate::eval::Val;
use crate::parser::parse;

/// A rule parsed and compiled once, evaluated many times. `Send + Sync`, cheap to evaluate,
/// never panics.
#[derive(Clone)]
pub struct Rule {
    source: Box<str>,
    expr: Expr,
    program: Program,
    env: Env,
    env_id: u64,
}

impl Rule {
    /// Parses and compiles `source` for `env`. Every error the language can detect without data
    /// is reported here: syntax, unknown variables and functions, arity, bad regexes, size and
    /// nesting limits.
    pub fn compile(source: &str, env: &Env) -> Result<Rule, ParseError> {
        let (expr, regexes) = parse(source, env)?;
        let program = compile(&expr, env, regexes);
        Ok(Rule { source: source.into(), expr, program, env: env.clone(), env_id: env.id() })
    }

    /// Whether the rule evaluates to exactly `true` in `ctx`. Anything else (false, null, a
    /// string, a type error), and a context made for a different environment, is `false`.
    #[inline]
    #[must_use]
    pub fn allows(&self, ctx: &Context<'_>) -> bool {
        ctx.env().id() == self.env_id && matches!(self.program.run(ctx), Val::Bool(true))
    }

    /// What the rule evaluates to, as JSON; `None` when it is an error (a type mismatch, an
    /// overflow) or the context belongs to another environment. For tools and tests; it
    /// allocates.
    #[must_use]
    pub fn evaluate(&self, ctx: &Context<'_>) -> Option<Value> {
        if ctx.env().id() != self.env_id {
            return None;
        }
        self.program.run(ctx).to_json()
    }

    /// The source as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The syntax tree.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// The environment it was compiled for.
    pub fn env(&self) -> &Env {
        &self.env
    }
}

/// The canonical form of the rule (see [`Expr`]'s `Display`).
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.expr)
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("source", &self.source)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}
