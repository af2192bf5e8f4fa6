//! The rules of one resource (a collection, a bucket): one optional rule per operation.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::env::{Caller, Context, Env};
use crate::error::{ParseError, RuleSetError};
use crate::rule::Rule;

/// What a caller wants to do with a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Read many; the rule is evaluated per item (`doc` bound to each), and items it denies are
    /// left out.
    List,
    /// Read one.
    Get,
    /// Make one; `request.body` is the incoming data.
    Create,
    /// Change one; `doc` is the stored item, `request.body` the incoming data.
    Update,
    /// Remove one.
    Delete,
}

impl Operation {
    /// All operations, in the order of [`RuleSources`]' fields.
    pub const ALL: [Operation; 5] =
        [Operation::List, Operation::Get, Operation::Create, Operation::Update, Operation::Delete];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::List => "list",
            Operation::Get => "get",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A name that is not an [`Operation`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation `{0}`; the operations are list, get, create, update, delete")]
pub struct UnknownOperation(pub String);

impl FromStr for Operation {
    type Err = UnknownOperation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Operation::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| UnknownOperation(s.to_owned()))
    }
}

/// The rules of a resource as stored and edited: source text per operation, `None` for "no rule"
/// (end users are denied; use the rule `true` to let everyone in).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleSources {
    /// Rule for [`Operation::List`].
    pub list: Option<String>,
    /// Rule for [`Operation::Get`].
    pub get: Option<String>,
    /// Rule for [`Operation::Create`].
    pub create: Option<String>,
    /// Rule for [`Operation::Update`].
    pub update: Option<String>,
    /// Rule for [`Operation::Delete`].
    pub delete: Option<String>,
}

impl RuleSources {
    /// The source for `op`.
    pub fn get(&self, op: Operation) -> Option<&str> {
        match op {
            Operation::List => self.list.as_deref(),
            Operation::Get => self.get.as_deref(),
            Operation::Create => self.create.as_deref(),
            Operation::Update => self.update.as_deref(),
            Operation::Delete => self.delete.as_deref(),
        }
    }

    /// Replaces the source for `op`.
    pub fn set(&mut self, op: Operation, source: Option<String>) {
        let slot = match op {
            Operation::List => &mut self.list,
            Operation::Get => &mut self.get,
            Operation::Create => &mut self.create,
            Operation::Update => &mut self.update,
            Operation::Delete => &mut self.delete,
        };
        *slot = source;
    }
}

/// The outcome of [`RuleSet::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A [`Caller::Service`]: rules do not apply.
    Bypassed,
    /// The operation's rule evaluated to exactly `true`.
    Allowed,
    /// The operation's rule evaluated to anything else (false, null, an error).
    Denied,
    /// The operation has no rule, so end users are denied.
    NoRule,
}

impl Decision {
    /// Whether the operation may go ahead.
    #[must_use]
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Bypassed | Decision::Allowed)
    }
}

/// A compiled rule per operation, all against one [`Env`]. Compile it when the rules are saved
/// (that is where parse errors are reported) and keep it; checking is then cheap.
///
/// ```
/// # use nimbus_rules::{Caller, Decision, Env, Operation, RuleSet, RuleSources};
/// # use serde_json::json;
/// let env = Env::documents();
/// let sources = RuleSources {
///     get: Some("doc.public == true || doc.owner == auth.id".into()),
///     create: Some("auth.id != null && request.body.owner == auth.id".into()),
///     ..RuleSources::default()
/// };
/// let rules = RuleSet::compile(&env, &sources)?;
/// let doc = json!({"owner": "u1", "public": false});
/// let ctx = env.context().bind("doc", &doc)?;
/// let alice = json!({"id": "u1", "roles": []});
/// assert_eq!(rules.check(Operation::Get, Caller::User(&alice), &ctx), Decision::Allowed);
/// assert_eq!(rules.check(Operation::Get, Caller::anonymous(), &ctx), Decision::Denied);
/// assert_eq!(rules.check(Operation::Delete, Caller::User(&alice), &ctx), Decision::NoRule);
/// assert_eq!(rules.check(Operation::Delete, Caller::Service, &ctx), Decision::Bypassed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct RuleSet {
    env: Env,
    rules: [Option<Rule>; 5],
}

impl RuleSet {
    /// No rules: end users are denied everything.
    pub fn deny_all(env: &Env) -> RuleSet {
        RuleSet { env: env.clone(), rules: Default::default() }
    }

    /// Compiles every source; the first one that does not parse is the error.
    pub fn compile(env: &Env, sources: &RuleSources) -> Result<RuleSet, RuleSetError> {
        let mut set = RuleSet::deny_all(env);
        for op in Operation::ALL {
            set.set(op, sources.get(op)).map_err(|error| RuleSetError { operation: op, error })?;
        }
        Ok(set)
    }

    /// Replaces the rule for `op` with `source` compiled, or removes it.
    pub fn set(&mut self, op: Operation, source: Option<&str>) -> Result<(), ParseError> {
        let rule = source.map(|s| Rule::compile(s, &self.env)).transpose()?;
        if let Some(slot) = self.rules.get_mut(op.index()) {
            *slot = rule;
        }
        Ok(())
    }

    /// The rule for `op`, if any.
    pub fn rule(&self, op: Operation) -> Option<&Rule> {
        self.rules.get(op.index()).and_then(Option::as_ref)
    }

    /// The sources, e.g. to store or show them.
    pub fn sources(&self) -> RuleSources {
        let mut sources = RuleSources::default();
        for op in Operation::ALL {
            sources.set(op, self.rule(op).map(|r| r.source().to_owned()));
        }
        sources
    }

    /// The environment the rules were compiled against; make contexts with it.
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// May `caller` do `op`? A [`Caller::Service`] always may. For a [`Caller::User`], the
    /// user's value is bound to the `auth` root (over whatever `ctx` had there) and the
    /// operation's rule must evaluate to exactly `true`; no rule denies.
    #[must_use]
    pub fn check<'a>(&self, op: Operation, caller: Caller<'a>, ctx: &Context<'a>) -> Decision {
        let auth = match caller {
            Caller::Service => return Decision::Bypassed,
            Caller::User(auth) => auth,
        };
        let Some(rule) = self.rule(op) else { return Decision::NoRule };
        let mut ctx = *ctx;
        if let Some(slot) = ctx.env().auth_slot() {
            ctx.set_slot(slot, auth);
        }
        if rule.allows(&ctx) { Decision::Allowed } else { Decision::Denied }
    }
}
