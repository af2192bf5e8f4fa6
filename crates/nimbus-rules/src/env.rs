//! Which root variables a rule may name ([`Env`]), and the borrowed values they stand for
//! during one evaluation ([`Context`]).

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::ast::{Function, is_identifier};
use crate::error::{EnvError, UnknownRoot};

/// Most root variables an [`Env`] may have; a [`Context`] is a fixed array of this many slots.
pub const MAX_ROOTS: usize = 8;

/// The `null` every unbound root reads as.
pub(crate) static NULL: Value = Value::Null;

/// The set of root variables rules may name, e.g. `auth`, `doc`, `request`. A rule is compiled
/// against one `Env`, which resolves each root to a slot number; evaluation then reads slots, not
/// names. Cheap to clone (shared).
#[derive(Clone)]
pub struct Env {
    inner: Arc<EnvInner>,
}

struct EnvInner {
    roots: Box<[Box<str>]>,
    /// Hash of the root names: lets a rule check in one compare that a context was built for an
    /// environment with the same slots.
    id: u64,
    auth: Option<usize>,
}

impl Env {
    /// An environment with the given roots, in slot order. Names must be identifiers, not keywords
    /// or function names, unique, and at most [`MAX_ROOTS`].
    pub fn new<I, S>(roots: I) -> Result<Env, EnvError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut names: Vec<Box<str>> = Vec::new();
        for name in roots {
            let name = name.as_ref();
            if !is_identifier(name) {
                return Err(EnvError::InvalidName(name.to_owned()));
            }
            if matches!(name, "true" | "false" | "null" | "in")
                || Function::from_name(name).is_some()
            {
                return Err(EnvError::Reserved(name.to_owned()));
            }
            if names.iter().any(|n| &**n == name) {
                return Err(EnvError::Duplicate(name.to_owned()));
            }
            names.push(name.into());
        }
        if names.len() > MAX_ROOTS {
            return Err(EnvError::TooMany { count: names.len(), max: MAX_ROOTS });
        }
        // FNV-1a over the names, each followed by a separator.
        let mut id: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in names.iter().flat_map(|n| n.bytes().chain([0xff])) {
            id = (id ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        let auth = names.iter().position(|n| &**n == "auth");
        Ok(Env { inner: Arc::new(EnvInner { roots: names.into_boxed_slice(), id, auth }) })
    }

    /// `auth`, `doc`, `request`: rules of a document collection.
    pub fn documents() -> Env {
        Self::fixed(&["auth", "doc", "request"])
    }

    /// `auth`, `file`, `request`: rules of a file bucket.
    pub fn files() -> Env {
        Self::fixed(&["auth", "file", "request"])
    }

    fn fixed(roots: &[&str]) -> Env {
        match Env::new(roots) {
            Ok(env) => env,
            // The fixed lists above are valid; this arm only keeps the function total.
            Err(_) => Env { inner: Arc::new(EnvInner { roots: Box::new([]), id: 0, auth: None }) },
        }
    }

    /// The root names, in slot order.
    pub fn roots(&self) -> impl ExactSizeIterator<Item = &str> {
        self.inner.roots.iter().map(|r| &**r)
    }

    /// The slot of root `name`.
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.inner.roots.iter().position(|r| &**r == name)
    }

    /// A context for this environment with every root bound to `null`.
    pub fn context<'a>(&'a self) -> Context<'a> {
        Context { env: self, slots: [&NULL; MAX_ROOTS] }
    }

    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    pub(crate) fn auth_slot(&self) -> Option<usize> {
        self.inner.auth
    }

    pub(crate) fn root_names(&self) -> Vec<String> {
        self.roots().map(str::to_owned).collect()
    }
}

impl PartialEq for Env {
    fn eq(&self, other: &Env) -> bool {
        self.inner.roots == other.inner.roots
    }
}

impl Eq for Env {}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Env").field(&self.inner.roots).finish()
    }
}

/// The values of the roots for one evaluation, borrowed: building one copies a few pointers,
/// evaluating reads through them, nothing is cloned. Unbound roots are `null`.
///
/// ```
/// # use nimbus_rules::{Env, Rule};
/// # use serde_json::json;
/// let env = Env::documents();
/// let rule = Rule::compile("doc.owner == auth.id", &env)?;
/// let (auth, doc) = (json!({"id": "u1"}), json!({"owner": "u1"}));
/// let ctx = env.context().bind("auth", &auth)?.bind("doc", &doc)?;
/// assert!(rule.allows(&ctx));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy)]
pub struct Context<'a> {
    env: &'a Env,
    slots: [&'a Value; MAX_ROOTS],
}

impl<'a> Context<'a> {
    /// Binds root `name` to `value`.
    pub fn bind(mut self, name: &str, value: &'a Value) -> Result<Self, UnknownRoot> {
        self.set(name, value)?;
        Ok(self)
    }

    /// Binds root `name` to `value` in place.
    pub fn set(&mut self, name: &str, value: &'a Value) -> Result<(), UnknownRoot> {
        let slot = self
            .env
            .slot(name)
            .ok_or_else(|| UnknownRoot { name: name.to_owned(), roots: self.env.root_names() })?;
        self.set_slot(slot, value);
        Ok(())
    }

    /// Binds the root in `slot` (see [`Env::slot`]) without a name lookup; out-of-range slots are
    /// ignored.
    pub fn set_slot(&mut self, slot: usize, value: &'a Value) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = value;
        }
    }

    /// The environment this context was made for.
    pub fn env(&self) -> &'a Env {
        self.env
    }

    #[inline]
    pub(crate) fn root(&self, slot: u8) -> &'a Value {
        self.slots.get(usize::from(slot)).copied().unwrap_or(&NULL)
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, value) in self.env.roots().zip(self.slots.iter()) {
            m.entry(&name, value);
        }
        m.finish()
    }
}

/// Who is asking. Rules apply to end users only.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// An admin or a trusted service (an admin key, a service token, the platform itself).
    /// **Bypasses every rule**, including "no rule": construct it only after verifying such
    /// credentials, never from anything an end user sends.
    Service,
    /// An end user, signed in or anonymous; the value is bound to the `auth` root (see
    /// [`Auth`] for its shape, and [`Caller::anonymous`]).
    User(&'a Value),
}

impl Caller<'static> {
    /// An end user who is not signed in: `auth` is `null`, so `auth.id` is `null` and
    /// `"x" in auth.roles` is false.
    pub fn anonymous() -> Caller<'static> {
        Caller::User(&NULL)
    }
}

/// The conventional shape of the `auth` value, so every service exposes the same fields:
/// `auth.id`, `auth.roles`, `auth.claims.<name>`, `auth.project`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Auth {
    /// The user's id; `None` for an anonymous caller.
    pub id: Option<String>,
    /// Role names, e.g. `admin`, `editor`.
    pub roles: Vec<String>,
    /// Custom claims of the user's token.
    pub claims: serde_json::Map<String, Value>,
    /// The project the token was issued for.
    pub project: Option<String>,
}

impl Auth {
    /// The JSON value to bind to `auth` (pass it to [`Caller::User`]).
    pub fn to_value(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), self.id.clone().map_or(Value::Null, Value::String));
        m.insert(
            "roles".into(),
            Value::Array(self.roles.iter().cloned().map(Value::String).collect()),
        );
        m.insert("claims".into(), Value::Object(self.claims.clone()));
        m.insert("project".into(), self.project.clone().map_or(Value::Null, Value::String));
        Value::Object(m)
    }
}
