//! Query filters are written in the access-rule language of `nimbus-rules` (one language for
//! rules and filters): `doc.status == "open" && doc.age >= 18`, `"red" in doc.tags` (contains),
//! `doc.kind in ["a", "b"]`, `exists(doc.email)`, `!`, `||`, parentheses.
//!
//! A filter is used twice: compiled to a store [`Filter`] (and from there to SQL with bound
//! values) for queries, and evaluated as a compiled [`Rule`] on each event for realtime query
//! subscriptions. Access rules go through the same translation to be pushed into the query.
//!
//! # Same answer in SQL and in Rust
//!
//! The rule language has three outcomes: true, false, and error (a type mismatch such as
//! `doc.age < "5"` on a number), and an error is never true, not even under `!`. A store filter
//! is two-valued. So each expression translates to a pair: when it is *true*, and when it is
//! *false*; `!e` swaps the pair, and an error is neither. Short-circuiting `&&`/`||` follow the
//! evaluator: `a && b` is false when `a` is false, or `a` is true and `b` is false.
//!
//! Paths under `auth` (and every sub-expression that does not read `doc`) are evaluated once,
//! by the rule engine itself, before translation: `doc.owner == auth.id` becomes
//! `owner == "u1"`. What cannot be translated (functions other than `exists` on `doc`, `+`
//! involving `doc`, comparing two fields, computed indexes) is an error for a filter, and for an
//! access rule means the rule is checked in Rust on each candidate document instead.

use base64::Engine as _;
use nimbus_rules::{CompareOp as RuleOp, Env, Expr, Function, Literal, Path, Rule, Segment};
use nimbus_store::documents::{CompareOp, Cursor, FieldPath, Filter, SortField, SortKey};
use serde_json::Value;

use crate::error::{DocError, Result};

/// Why an expression has no store equivalent.
#[derive(Debug)]
pub struct Untranslatable(pub String);

/// `(true when, false when)`.
type Pair = (Filter, Filter);

/// Translate `expr` (compiled against [`Env::documents`]) into when it holds, given the
/// caller's `auth` value.
pub fn translate(expr: &Expr, env: &Env, auth: &Value) -> Result<Filter, Untranslatable> {
    Ok(simplify(pair(expr, env, auth)?.0))
}

fn neither() -> Pair {
    (Filter::False, Filter::False)
}

fn reads_doc(e: &Expr) -> bool {
    match e {
        Expr::Literal(_) => false,
        Expr::Path(p) => {
            p.root == "doc"
                || p.segments.iter().any(|s| matches!(s, Segment::Index(i) if reads_doc(i)))
        }
        Expr::List(items) | Expr::And(items) | Expr::Or(items) | Expr::Add(items) => {
            items.iter().any(reads_doc)
        }
        Expr::Call(_, args) => args.iter().any(reads_doc),
        Expr::Not(e) => reads_doc(e),
        Expr::Compare(_, a, b) => reads_doc(a) || reads_doc(b),
    }
}

/// Evaluate an expression that does not read `doc`, with the rule engine. `None` is an error
/// value.
fn constant(e: &Expr, env: &Env, auth: &Value) -> Result<Option<Value>, Untranslatable> {
    if let Expr::Literal(l) = e {
        return Ok(Some(literal(l)));
    }
    let rule = Rule::compile(&e.to_string(), env)
        .map_err(|err| Untranslatable(format!("re-parsing {e}: {err}")))?;
    let ctx = env.context().bind("auth", auth).map_err(|err| Untranslatable(err.to_string()))?;
    Ok(rule.evaluate(&ctx))
}

fn literal(l: &Literal) -> Value {
    match l {
        Literal::Null => Value::Null,
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Int(i) => Value::from(*i),
        Literal::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Literal::String(s) => Value::String(s.clone()),
    }
}

fn doc_path(p: &Path) -> Result<FieldPath, Untranslatable> {
    let mut segs = Vec::with_capacity(p.segments.len());
    for s in &p.segments {
        match s {
            Segment::Field(f) => segs.push(f.clone()),
            Segment::Index(_) => {
                return Err(Untranslatable(format!("computed index in `{p}`")));
            }
        }
    }
    FieldPath::from_segments(segs).ok_or_else(|| {
        Untranslatable(format!(
            "`{p}`: filter fields are `doc.` then up to 8 identifiers ([A-Za-z_][A-Za-z0-9_]*)"
        ))
    })
}

enum Operand {
    Field(FieldPath),
    Const(Option<Value>),
}

fn operand(e: &Expr, env: &Env, auth: &Value) -> Result<Operand, Untranslatable> {
    if !reads_doc(e) {
        return Ok(Operand::Const(constant(e, env, auth)?));
    }
    match e {
        Expr::Path(p) if p.root == "doc" => Ok(Operand::Field(doc_path(p)?)),
        _ => Err(Untranslatable(format!("`{e}` cannot be compared in a query"))),
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

fn not(f: Filter) -> Filter {
    Filter::Not(Box::new(f))
}

fn pair(e: &Expr, env: &Env, auth: &Value) -> Result<Pair, Untranslatable> {
    if !reads_doc(e) {
        return Ok(match constant(e, env, auth)? {
            Some(Value::Bool(true)) => (Filter::True, Filter::False),
            Some(Value::Bool(false)) => (Filter::False, Filter::True),
            _ => neither(),
        });
    }
    Ok(match e {
        Expr::Path(p) => {
            let f = doc_path(p)?;
            (
                Filter::Compare(f.clone(), CompareOp::Eq, Value::Bool(true)),
                Filter::Compare(f, CompareOp::Eq, Value::Bool(false)),
            )
        }
        Expr::Not(inner) => {
            let (t, f) = pair(inner, env, auth)?;
            (f, t)
        }
        Expr::And(items) => {
            let pairs = items.iter().map(|i| pair(i, env, auth)).collect::<Result<Vec<_>, _>>()?;
            let mut falses = Vec::new();
            for (i, (_, f)) in pairs.iter().enumerate() {
                let mut all: Vec<Filter> = pairs[..i].iter().map(|p| p.0.clone()).collect();
                all.push(f.clone());
                falses.push(Filter::And(all));
            }
            (Filter::And(pairs.into_iter().map(|p| p.0).collect()), Filter::Or(falses))
        }
        Expr::Or(items) => {
            let pairs = items.iter().map(|i| pair(i, env, auth)).collect::<Result<Vec<_>, _>>()?;
            let mut trues = Vec::new();
            for (i, (t, _)) in pairs.iter().enumerate() {
                let mut all: Vec<Filter> = pairs[..i].iter().map(|p| p.1.clone()).collect();
                all.push(t.clone());
                trues.push(Filter::And(all));
            }
            (Filter::Or(trues), Filter::And(pairs.into_iter().map(|p| p.1).collect()))
        }
        Expr::Call(Function::Exists, args) => match args.as_slice() {
            [Expr::Path(p)] if p.root == "doc" => {
                let f = doc_path(p)?;
                (Filter::Exists(f.clone()), not(Filter::Exists(f)))
            }
            _ => return Err(Untranslatable(format!("`{e}`: exists() takes a doc field"))),
        },
        Expr::Compare(op, a, b) => compare(*op, a, b, env, auth)?,
        _ => return Err(Untranslatable(format!("`{e}` is not supported in a query"))),
    })
}

fn compare(
    op: RuleOp,
    a: &Expr,
    b: &Expr,
    env: &Env,
    auth: &Value,
) -> Result<Pair, Untranslatable> {
    let (a, b) = (operand(a, env, auth)?, operand(b, env, auth)?);
    let flip = |op: RuleOp| match op {
        RuleOp::Lt => RuleOp::Gt,
        RuleOp::Le => RuleOp::Ge,
        RuleOp::Gt => RuleOp::Lt,
        RuleOp::Ge => RuleOp::Le,
        other => other,
    };
    match (a, b) {
        (Operand::Field(f), Operand::Const(v)) => field_vs_const(op, f, v),
        (Operand::Const(v), Operand::Field(f)) if op == RuleOp::In => {
            // `v in doc.f`: contains.
            let Some(v) = v else { return Ok(neither()) };
            if !is_scalar(&v) {
                return Err(Untranslatable("`in` a field takes a scalar on the left".into()));
            }
            let strings = v.is_string();
            let t = Filter::Contains(f.clone(), v);
            let f = Filter::And(vec![Filter::IsContainer { path: f, strings }, not(t.clone())]);
            Ok((t, f))
        }
        (Operand::Const(v), Operand::Field(f)) => field_vs_const(flip(op), f, v),
        (Operand::Field(_), Operand::Field(_)) => {
            Err(Untranslatable("comparing two fields is not supported in a query".into()))
        }
        (Operand::Const(_), Operand::Const(_)) => Ok(neither()),
    }
}

fn field_vs_const(op: RuleOp, f: FieldPath, v: Option<Value>) -> Result<Pair, Untranslatable> {
    // An error operand makes the comparison an error.
    let Some(v) = v else { return Ok(neither()) };
    let cmp = |op, v: &Value| Filter::Compare(f.clone(), op, v.clone());
    Ok(match op {
        RuleOp::Eq | RuleOp::Ne => {
            if !is_scalar(&v) {
                return Err(Untranslatable("`==` and `!=` compare a field with a scalar".into()));
            }
            let eq = cmp(CompareOp::Eq, &v);
            if op == RuleOp::Eq { (eq.clone(), not(eq)) } else { (not(eq.clone()), eq) }
        }
        RuleOp::Lt | RuleOp::Le | RuleOp::Gt | RuleOp::Ge => {
            if !(v.is_number() || v.is_string()) {
                // Ordering a field against null, a bool or a list is always an error.
                return Err(Untranslatable(format!(
                    "`{}` compares with a number or a string, not {v}",
                    op.as_str()
                )));
            }
            let (o, neg) = match op {
                RuleOp::Lt => (CompareOp::Lt, CompareOp::Ge),
                RuleOp::Le => (CompareOp::Le, CompareOp::Gt),
                RuleOp::Gt => (CompareOp::Gt, CompareOp::Le),
                _ => (CompareOp::Ge, CompareOp::Lt),
            };
            (cmp(o, &v), cmp(neg, &v))
        }
        RuleOp::In => match v {
            Value::Array(items) if items.iter().all(is_scalar) && items.len() <= MAX_IN => {
                let t = Filter::In(f, items);
                (t.clone(), not(t))
            }
            Value::Array(_) => {
                return Err(Untranslatable(format!(
                    "`in` takes a list of at most {MAX_IN} scalars"
                )));
            }
            Value::Null => (Filter::False, Filter::True),
            _ => return Err(Untranslatable("`field in x` needs a list for x".into())),
        },
    })
}

/// Longest `in` list in a filter.
pub const MAX_IN: usize = 100;

/// Drop `True`/`False` where they decide nothing, so pushed-down rules stay readable SQL.
fn simplify(f: Filter) -> Filter {
    match f {
        Filter::And(items) => {
            let mut out = Vec::new();
            for i in items.into_iter().map(simplify) {
                match i {
                    Filter::True => {}
                    Filter::False => return Filter::False,
                    Filter::And(inner) => out.extend(inner),
                    other => out.push(other),
                }
            }
            match out.len() {
                0 => Filter::True,
                1 => out.pop().unwrap_or(Filter::True),
                _ => Filter::And(out),
            }
        }
        Filter::Or(items) => {
            let mut out = Vec::new();
            for i in items.into_iter().map(simplify) {
                match i {
                    Filter::False => {}
                    Filter::True => return Filter::True,
                    Filter::Or(inner) => out.extend(inner),
                    other => out.push(other),
                }
            }
            match out.len() {
                0 => Filter::False,
                1 => out.pop().unwrap_or(Filter::False),
                _ => Filter::Or(out),
            }
        }
        Filter::Not(inner) => match simplify(*inner) {
            Filter::True => Filter::False,
            Filter::False => Filter::True,
            Filter::Not(x) => *x,
            other => Filter::Not(Box::new(other)),
        },
        other => other,
    }
}

/// A parsed query filter: the rule (for realtime) and its store form.
#[derive(Clone, Debug)]
pub struct ParsedFilter {
    pub rule: Rule,
}

/// Parse a filter's text. Syntax errors, unknown variables and unknown functions answer
/// `invalid_filter` with a line:column message.
pub fn parse_filter(source: &str, env: &Env) -> Result<ParsedFilter> {
    let rule = Rule::compile(source, env)
        .map_err(|e| DocError::invalid("invalid_filter", format!("filter: {}", e.message())))?;
    Ok(ParsedFilter { rule })
}

impl ParsedFilter {
    /// The store filter for this caller, or a 400 explaining what a query cannot do.
    pub fn to_store(&self, env: &Env, auth: &Value) -> Result<Filter> {
        translate(self.rule.expr(), env, auth)
            .map_err(|u| DocError::invalid("invalid_filter", format!("filter: {}", u.0)))
    }
}

/// `-age,name,$created`: `-` for descending; `$id`, `$created`, `$updated` are metadata.
pub fn parse_sort(text: &str) -> Result<Vec<SortKey>> {
    let mut keys = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (descending, name) = match part.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, part.strip_prefix('+').unwrap_or(part)),
        };
        let field = match name {
            "$id" => SortField::Id,
            "$created" => SortField::CreatedAt,
            "$updated" => SortField::UpdatedAt,
            _ => SortField::Field(FieldPath::parse(name).ok_or_else(|| {
                DocError::invalid("invalid_sort", format!("cannot sort by {name:?}"))
            })?),
        };
        keys.push(SortKey { field, descending });
    }
    if keys.len() > 8 {
        return Err(DocError::invalid("invalid_sort", "at most 8 sort keys"));
    }
    Ok(keys)
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Cursors are opaque to clients: base64url of the last document's sort values and id.
pub fn encode_cursor(c: &Cursor) -> String {
    B64.encode(serde_json::to_vec(c).unwrap_or_default())
}

pub fn decode_cursor(text: &str, sort_keys: usize) -> Result<Cursor> {
    let bad = || DocError::invalid("invalid_cursor", "the cursor is not one this query returned");
    let bytes = B64.decode(text).map_err(|_| bad())?;
    let c: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if c.values.len() != sort_keys
        || !c.values.iter().all(is_scalar)
        || c.values.iter().any(Value::is_boolean)
    {
        return Err(bad());
    }
    Ok(c)
}

/// `title,author.name`: keep only these fields of each document's data.
pub fn parse_fields(text: &str) -> Result<Vec<FieldPath>> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            FieldPath::parse(p)
                .ok_or_else(|| DocError::invalid("invalid_fields", format!("invalid field {p:?}")))
        })
        .collect()
}

pub fn project(data: &Value, fields: &[FieldPath]) -> Value {
    let mut out = Value::Object(serde_json::Map::new());
    for f in fields {
        let Some(v) = f.lookup(data) else { continue };
        let Some((last, parents)) = f.segments().split_last() else { continue };
        let mut at = &mut out;
        for s in parents {
            if !at.get(s).is_some_and(Value::is_object) {
                at[s.as_str()] = Value::Object(serde_json::Map::new());
            }
            at = &mut at[s.as_str()];
        }
        at[last.as_str()] = v.clone();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(src: &str, auth: &Value) -> Result<Filter, Untranslatable> {
        let env = Env::documents();
        let rule = Rule::compile(src, &env).unwrap();
        translate(rule.expr(), &env, auth)
    }

    #[test]
    fn rules_are_pushed_with_auth_substituted() {
        let auth = json!({"id": "u1", "roles": ["user"]});
        let f = t("auth.id != null && doc.owner == auth.id", &auth).unwrap();
        assert_eq!(
            f,
            Filter::Compare(FieldPath::parse("owner").unwrap(), CompareOp::Eq, json!("u1"))
        );
        assert_eq!(
            t("auth.id != null && doc.owner == auth.id", &Value::Null).unwrap(),
            Filter::False
        );
        assert_eq!(
            t("\"admin\" in auth.roles || doc.public == true", &auth).unwrap(),
            Filter::Compare(FieldPath::parse("public").unwrap(), CompareOp::Eq, json!(true))
        );
        assert!(t("size(doc.title) < 10", &auth).is_err());
        assert!(t("doc.a == doc.b", &auth).is_err());
        // An ordering against a wrong type is an error: neither true nor false.
        assert!(t("doc.n < true", &auth).is_err());
    }

    #[test]
    fn negation_keeps_errors_false() {
        // !(doc.n < 5) is true only where n is a number >= 5: not for strings or missing.
        let f = t("!(doc.n < 5)", &Value::Null).unwrap();
        assert_eq!(f, Filter::Compare(FieldPath::parse("n").unwrap(), CompareOp::Ge, json!(5)));
    }

    #[test]
    fn sort_cursor_fields() {
        let keys = parse_sort("-age,name,$created").unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys[0].descending);
        assert!(parse_sort("a;drop").is_err());
        let c = Cursor { values: vec![json!(3), json!("x")], id: "d1".into() };
        assert_eq!(decode_cursor(&encode_cursor(&c), 2).unwrap(), c);
        assert!(decode_cursor(&encode_cursor(&c), 1).is_err());
        assert!(decode_cursor("!!!", 0).is_err());
        let fields = parse_fields("a.b,c").unwrap();
        assert_eq!(
            project(&json!({"a": {"b": 1, "x": 2}, "c": 3, "d": 4}), &fields),
            json!({"a": {"b": 1}, "c": 3})
        );
    }
}
