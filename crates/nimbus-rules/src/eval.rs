//! Evaluation of a [`Program`] against a [`Context`]. Values borrow from the program and the
//! context; only string concatenation and non-constant list literals allocate.
//!
//! Every operation is total: a value of the wrong type gives [`Val::Err`], which propagates and
//! never equals `true`, so a rule that hits one denies (even under `!`).

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::ast::CompareOp;
use crate::compile::{Const, Node, NodeId, Program, Seg};
use crate::env::Context;

/// How deep `==` descends into nested lists and objects before it gives up (unequal).
const MAX_EQ_DEPTH: u32 = 64;

/// A value during evaluation.
#[derive(Debug)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    String(String),
    /// A JSON array or object from the context.
    Json(&'a Value),
    Consts(&'a [Const]),
    List(Vec<Val<'a>>),
    /// A type error, an overflow, a bad index expression: denies.
    Err,
}

/// A borrowed view of any value, so operations need one implementation, not one per pairing.
#[derive(Debug, Clone, Copy)]
enum VRef<'x> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'x str),
    Array(&'x [Value]),
    Object(&'x Map<String, Value>),
    Consts(&'x [Const]),
    Vals(&'x [Val<'x>]),
    Err,
}

#[derive(Debug, Clone, Copy)]
enum Num {
    I(i64),
    F(f64),
}

#[derive(Debug, Clone, Copy)]
enum ListRef<'x> {
    Json(&'x [Value]),
    Consts(&'x [Const]),
    Vals(&'x [Val<'x>]),
}

/// Where a path leads.
enum Resolved<'a> {
    Found(&'a Value),
    Missing,
    Err,
}

fn number(n: &serde_json::Number) -> Option<Num> {
    n.as_i64().map(Num::I).or_else(|| n.as_f64().map(Num::F))
}

impl<'a> Val<'a> {
    fn from_json(v: &'a Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => match number(n) {
                Some(Num::I(i)) => Val::Int(i),
                Some(Num::F(x)) => Val::Float(x),
                None => Val::Err,
            },
            Value::String(s) => Val::Str(s),
            Value::Array(_) | Value::Object(_) => Val::Json(v),
        }
    }

    fn from_const(c: &'a Const) -> Val<'a> {
        match c {
            Const::Null => Val::Null,
            Const::Bool(b) => Val::Bool(*b),
            Const::Int(i) => Val::Int(*i),
            Const::Float(x) => Val::Float(*x),
            Const::Str(s) => Val::Str(s),
        }
    }

    fn from_num(n: Num) -> Val<'a> {
        match n {
            Num::I(i) => Val::Int(i),
            Num::F(x) if x.is_finite() => Val::Float(x),
            Num::F(_) => Val::Err,
        }
    }

    fn view(&self) -> VRef<'_> {
        match self {
            Val::Null => VRef::Null,
            Val::Bool(b) => VRef::Bool(*b),
            Val::Int(i) => VRef::Int(*i),
            Val::Float(x) => VRef::Float(*x),
            Val::Str(s) => VRef::Str(s),
            Val::String(s) => VRef::Str(s),
            Val::Json(v) => VRef::from_json(v),
            Val::Consts(c) => VRef::Consts(c),
            Val::List(v) => VRef::Vals(v),
            Val::Err => VRef::Err,
        }
    }

    /// The value as JSON, or `None` for an error (or a list holding one).
    pub(crate) fn to_json(&self) -> Option<Value> {
        self.view().to_json()
    }
}

impl<'x> VRef<'x> {
    fn from_json(v: &'x Value) -> VRef<'x> {
        match v {
            Value::Null => VRef::Null,
            Value::Bool(b) => VRef::Bool(*b),
            Value::Number(n) => match number(n) {
                Some(Num::I(i)) => VRef::Int(i),
                Some(Num::F(x)) => VRef::Float(x),
                None => VRef::Err,
            },
            Value::String(s) => VRef::Str(s),
            Value::Array(a) => VRef::Array(a),
            Value::Object(m) => VRef::Object(m),
        }
    }

    fn from_const(c: &'x Const) -> VRef<'x> {
        match c {
            Const::Null => VRef::Null,
            Const::Bool(b) => VRef::Bool(*b),
            Const::Int(i) => VRef::Int(*i),
            Const::Float(x) => VRef::Float(*x),
            Const::Str(s) => VRef::Str(s),
        }
    }

    fn num(self) -> Option<Num> {
        match self {
            VRef::Int(i) => Some(Num::I(i)),
            VRef::Float(x) => Some(Num::F(x)),
            _ => None,
        }
    }

    fn list(self) -> Option<ListRef<'x>> {
        match self {
            VRef::Array(a) => Some(ListRef::Json(a)),
            VRef::Consts(c) => Some(ListRef::Consts(c)),
            VRef::Vals(v) => Some(ListRef::Vals(v)),
            _ => None,
        }
    }

    fn to_json(self) -> Option<Value> {
        Some(match self {
            VRef::Null => Value::Null,
            VRef::Bool(b) => Value::Bool(b),
            VRef::Int(i) => Value::from(i),
            VRef::Float(x) => Value::Number(serde_json::Number::from_f64(x)?),
            VRef::Str(s) => Value::String(s.to_owned()),
            VRef::Object(m) => Value::Object(m.clone()),
            VRef::Array(a) => Value::Array(a.to_vec()),
            VRef::Consts(_) | VRef::Vals(_) => {
                let list = self.list()?;
                let mut out = Vec::with_capacity(list.len());
                for i in 0..list.len() {
                    out.push(list.get(i).to_json()?);
                }
                Value::Array(out)
            }
            VRef::Err => return None,
        })
    }
}

impl<'x> ListRef<'x> {
    fn len(self) -> usize {
        match self {
            ListRef::Json(a) => a.len(),
            ListRef::Consts(c) => c.len(),
            ListRef::Vals(v) => v.len(),
        }
    }

    /// Element `i`, or an error past the end (callers stay in range).
    fn get(self, i: usize) -> VRef<'x> {
        let found = match self {
            ListRef::Json(a) => a.get(i).map(VRef::from_json),
            ListRef::Consts(c) => c.get(i).map(VRef::from_const),
            ListRef::Vals(v) => v.get(i).map(Val::view),
        };
        found.unwrap_or(VRef::Err)
    }

    fn any(self, mut f: impl FnMut(VRef<'x>) -> bool) -> bool {
        match self {
            ListRef::Json(a) => a.iter().any(|v| f(VRef::from_json(v))),
            ListRef::Consts(c) => c.iter().any(|v| f(VRef::from_const(v))),
            ListRef::Vals(v) => v.iter().any(|v| f(v.view())),
        }
    }
}

fn num_eq(a: Num, b: Num) -> bool {
    match (a, b) {
        (Num::I(x), Num::I(y)) => x == y,
        (Num::F(x), Num::F(y)) => x == y,
        // Exact: 2^53 + 1 is not equal to the float 2^53.
        (Num::I(i), Num::F(x)) | (Num::F(x), Num::I(i)) => {
            x == i as f64 && x as i128 == i128::from(i)
        }
    }
}

fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::I(x), Num::I(y)) => Some(x.cmp(&y)),
        (Num::I(x), Num::F(y)) => (x as f64).partial_cmp(&y),
        (Num::F(x), Num::I(y)) => x.partial_cmp(&(y as f64)),
        (Num::F(x), Num::F(y)) => x.partial_cmp(&y),
    }
}

fn num_add(a: Num, b: Num) -> Option<Num> {
    match (a, b) {
        (Num::I(x), Num::I(y)) => x.checked_add(y).map(Num::I),
        (Num::I(x), Num::F(y)) => Some(Num::F(x as f64 + y)),
        (Num::F(x), Num::I(y)) => Some(Num::F(x + y as f64)),
        (Num::F(x), Num::F(y)) => Some(Num::F(x + y)),
    }
}

/// Deep equality across types: numbers by value (`1 == 1.0`), everything else only within its
/// own type; different types are unequal. Nesting deeper than [`MAX_EQ_DEPTH`] is unequal.
fn equal(a: VRef<'_>, b: VRef<'_>, depth: u32) -> bool {
    match (a, b) {
        (VRef::Null, VRef::Null) => true,
        (VRef::Bool(x), VRef::Bool(y)) => x == y,
        (VRef::Str(x), VRef::Str(y)) => x == y,
        (VRef::Object(x), VRef::Object(y)) => {
            depth < MAX_EQ_DEPTH
                && x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.get(k)
                        .is_some_and(|w| equal(VRef::from_json(v), VRef::from_json(w), depth + 1))
                })
        }
        _ => match (a.num(), b.num(), a.list(), b.list()) {
            (Some(x), Some(y), _, _) => num_eq(x, y),
            (_, _, Some(x), Some(y)) => {
                depth < MAX_EQ_DEPTH
                    && x.len() == y.len()
                    && (0..x.len()).all(|i| equal(x.get(i), y.get(i), depth + 1))
            }
            _ => false,
        },
    }
}

fn compare<'a>(op: CompareOp, a: &Val<'_>, b: &Val<'_>) -> Val<'a> {
    let (a, b) = (a.view(), b.view());
    if matches!(a, VRef::Err) || matches!(b, VRef::Err) {
        return Val::Err;
    }
    let ordered = |test: fn(Ordering) -> bool| {
        let ord = match (a, b) {
            (VRef::Str(x), VRef::Str(y)) => Some(x.cmp(y)),
            _ => a.num().zip(b.num()).and_then(|(x, y)| num_cmp(x, y)),
        };
        ord.map_or(Val::Err, |o| Val::Bool(test(o)))
    };
    match op {
        CompareOp::Eq => Val::Bool(equal(a, b, 0)),
        CompareOp::Ne => Val::Bool(!equal(a, b, 0)),
        CompareOp::Lt => ordered(Ordering::is_lt),
        CompareOp::Le => ordered(Ordering::is_le),
        CompareOp::Gt => ordered(Ordering::is_gt),
        CompareOp::Ge => ordered(Ordering::is_ge),
        CompareOp::In => contains(a, b),
    }
}

/// `needle in hay`: element of a list, substring of a string, key of an object; nothing is in
/// `null`.
fn contains<'a>(needle: VRef<'_>, hay: VRef<'_>) -> Val<'a> {
    match (needle, hay) {
        (_, VRef::Null) => Val::Bool(false),
        (VRef::Str(n), VRef::Str(h)) => Val::Bool(h.contains(n)),
        (VRef::Str(k), VRef::Object(m)) => Val::Bool(m.contains_key(k)),
        _ => match hay.list() {
            Some(list) => Val::Bool(list.any(|e| equal(needle, e, 0))),
            None => Val::Err,
        },
    }
}

fn size<'a>(v: VRef<'_>) -> Val<'a> {
    let n = match v {
        VRef::Str(s) => s.chars().count(),
        VRef::Object(m) => m.len(),
        _ => match v.list() {
            Some(l) => l.len(),
            None => return Val::Err,
        },
    };
    i64::try_from(n).map_or(Val::Err, Val::Int)
}

fn index(v: &Value, i: i64) -> Resolved<'_> {
    match v.as_array().zip(usize::try_from(i).ok()).and_then(|(a, i)| a.get(i)) {
        Some(v) => Resolved::Found(v),
        None => Resolved::Missing,
    }
}

impl Program {
    /// Evaluates the whole rule.
    #[inline]
    pub(crate) fn run<'a>(&'a self, ctx: &Context<'a>) -> Val<'a> {
        self.eval(self.root, ctx)
    }

    fn eval<'a>(&'a self, id: NodeId, ctx: &Context<'a>) -> Val<'a> {
        let Some(node) = self.nodes.get(id as usize) else { return Val::Err };
        match node {
            Node::Const(c) => Val::from_const(c),
            Node::ConstList(c) => Val::Consts(c),
            Node::List(ids) => {
                let mut items = Vec::with_capacity(ids.len());
                for &i in ids.iter() {
                    match self.eval(i, ctx) {
                        Val::Err => return Val::Err,
                        v => items.push(v),
                    }
                }
                Val::List(items)
            }
            Node::Path { root, segs } => match self.resolve(*root, segs, ctx) {
                Resolved::Found(v) => Val::from_json(v),
                Resolved::Missing => Val::Null,
                Resolved::Err => Val::Err,
            },
            Node::Exists { root, segs } => match self.resolve(*root, segs, ctx) {
                Resolved::Found(v) => Val::Bool(!v.is_null()),
                Resolved::Missing => Val::Bool(false),
                Resolved::Err => Val::Err,
            },
            Node::Not(a) => match self.eval(*a, ctx) {
                Val::Bool(b) => Val::Bool(!b),
                _ => Val::Err,
            },
            Node::And(ids) => {
                for &i in ids.iter() {
                    match self.eval(i, ctx) {
                        Val::Bool(true) => {}
                        Val::Bool(false) => return Val::Bool(false),
                        _ => return Val::Err,
                    }
                }
                Val::Bool(true)
            }
            Node::Or(ids) => {
                for &i in ids.iter() {
                    match self.eval(i, ctx) {
                        Val::Bool(false) => {}
                        Val::Bool(true) => return Val::Bool(true),
                        _ => return Val::Err,
                    }
                }
                Val::Bool(false)
            }
            Node::Compare(op, a, b) => {
                let a = self.eval(*a, ctx);
                let b = self.eval(*b, ctx);
                compare(*op, &a, &b)
            }
            Node::Add(ids) => self.add(ids, ctx),
            Node::Size(a) => size(self.eval(*a, ctx).view()),
            Node::StartsWith(s, p) => self.starts_with(*s, *p, ctx),
            Node::EndsWith(s, p) => {
                let (s, p) = (self.eval(*s, ctx), self.eval(*p, ctx));
                match (s.view(), p.view()) {
                    (VRef::Str(s), VRef::Str(p)) => Val::Bool(s.ends_with(p)),
                    _ => Val::Err,
                }
            }
            Node::Matches(s, re) => match self.eval(*s, ctx).view() {
                VRef::Str(s) => Val::Bool(re.is_match(s)),
                _ => Val::Err,
            },
            Node::Fail => Val::Err,
        }
    }

    fn resolve<'a>(&'a self, root: u8, segs: &'a [Seg], ctx: &Context<'a>) -> Resolved<'a> {
        let mut v = ctx.root(root);
        let mut missing = false;
        for seg in segs {
            let next = match seg {
                Seg::Key(k) => v
                    .as_object()
                    .and_then(|m| m.get(&**k))
                    .map_or(Resolved::Missing, Resolved::Found),
                Seg::Index(i) => index(v, *i),
                Seg::Dyn(id) => {
                    let key = self.eval(*id, ctx);
                    match key.view() {
                        VRef::Str(k) => v
                            .as_object()
                            .and_then(|m| m.get(k))
                            .map_or(Resolved::Missing, Resolved::Found),
                        VRef::Int(i) => index(v, i),
                        _ => Resolved::Err,
                    }
                }
            };
            match next {
                Resolved::Found(n) => v = n,
                // The rest of the path is missing too, but a later computed index can still be
                // an error, so the walk goes on over null.
                Resolved::Missing => {
                    v = &crate::env::NULL;
                    missing = true;
                }
                Resolved::Err => return Resolved::Err,
            }
        }
        if missing { Resolved::Missing } else { Resolved::Found(v) }
    }

    /// `+` over two or more operands: all strings concatenate (one allocation), all numbers add;
    /// anything else is an error.
    fn add<'a>(&'a self, ids: &[NodeId], ctx: &Context<'a>) -> Val<'a> {
        let Some((&first, rest)) = ids.split_first() else { return Val::Err };
        let first = self.eval(first, ctx);
        match first.view() {
            VRef::Str(s0) => {
                let mut out = String::with_capacity(s0.len() + 16 * rest.len());
                out.push_str(s0);
                for &id in rest {
                    match self.eval(id, ctx).view() {
                        VRef::Str(s) => out.push_str(s),
                        _ => return Val::Err,
                    }
                }
                Val::String(out)
            }
            v => {
                let Some(mut acc) = v.num() else { return Val::Err };
                for &id in rest {
                    let next = self.eval(id, ctx).view().num();
                    match next.and_then(|n| num_add(acc, n)) {
                        Some(sum) => acc = sum,
                        None => return Val::Err,
                    }
                }
                Val::from_num(acc)
            }
        }
    }

    /// `startsWith(s, p)`. When `p` is a `+` chain, matches it piece by piece, so
    /// `startsWith(file.path, "users/" + auth.id + "/")` builds no string.
    fn starts_with<'a>(&'a self, s: NodeId, p: NodeId, ctx: &Context<'a>) -> Val<'a> {
        let s = self.eval(s, ctx);
        let VRef::Str(hay) = s.view() else { return Val::Err };
        if let Some(Node::Add(parts)) = self.nodes.get(p as usize) {
            let mut rest = Some(hay);
            for &part in parts.iter() {
                // Same result as concatenating first: any non-string part makes `+` an error
                // (or a number, which startsWith rejects).
                match self.eval(part, ctx).view() {
                    VRef::Str(piece) => rest = rest.and_then(|r| r.strip_prefix(piece)),
                    _ => return Val::Err,
                }
            }
            return Val::Bool(rest.is_some());
        }
        match self.eval(p, ctx).view() {
            VRef::Str(prefix) => Val::Bool(hay.starts_with(prefix)),
            _ => Val::Err,
        }
    }
}
