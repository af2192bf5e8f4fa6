//! Property tests: no input makes the parser or the evaluator panic, every error points inside
//! the input, and printing a tree then parsing it gives the same tree.

use nimbus_rules::{
    CompareOp, Env, Expr, Function, Literal, MAX_SOURCE_LEN, Path, Rule, Segment, parse,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn env() -> Env {
    Env::new(["auth", "doc", "file", "request"]).unwrap()
}

fn sample_data() -> [Value; 4] {
    [
        json!({"id": "u1", "roles": ["admin"], "claims": {"n": 3}}),
        json!({"owner": "u1", "a": {"b": [1, 2.5, "x", null, {"c": true}]}, "s": "text", "n": 9_007_199_254_740_993_i64}),
        json!({"path": "users/u1/a.png", "size": 10}),
        json!({"method": "POST", "body": {"title": "t", "tags": []}}),
    ]
}

/// Parses `src`; on failure checks the error's position, on success the round trip through
/// `Display` and that compiling and evaluating do not panic.
fn check(src: &str) -> Result<(), TestCaseError> {
    let env = env();
    match parse(src, &env) {
        Err(e) => {
            prop_assert!(e.offset() <= src.len(), "offset {} past {}", e.offset(), src.len());
            let line = src.split('\n').nth(e.line() - 1);
            prop_assert!(line.is_some(), "line {} of {:?}", e.line(), src);
            let width = line.unwrap_or_default().chars().count();
            prop_assert!(
                e.column() >= 1 && e.column() <= width + 1,
                "column {} in a line of {width}",
                e.column()
            );
            prop_assert!(e.to_string().contains('^'));
        }
        Ok(expr) => {
            let printed = expr.to_string();
            if printed.len() <= MAX_SOURCE_LEN {
                let again = parse(&printed, &env);
                prop_assert_eq!(
                    again.as_ref().ok(),
                    Some(&expr),
                    "{:?} printed as {:?}: {:?}",
                    src,
                    printed,
                    again
                );
            }
            let rule = Rule::compile(src, &env);
            prop_assert!(rule.is_ok());
            let data = sample_data();
            let mut ctx = env.context();
            for (name, value) in ["auth", "doc", "file", "request"].into_iter().zip(&data) {
                ctx.set(name, value).unwrap();
            }
            if let Ok(rule) = rule {
                let _ = rule.allows(&ctx);
                let _ = rule.evaluate(&ctx);
                let _ = rule.allows(&env.context());
            }
        }
    }
    Ok(())
}

const TOKENS: &[&str] = &[
    "auth",
    "doc",
    "file",
    "request",
    "usr",
    "id",
    "owner",
    "roles",
    "claims",
    ".",
    ",",
    "(",
    ")",
    "[",
    "]",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&&",
    "||",
    "!",
    "+",
    "-",
    "in",
    "true",
    "false",
    "null",
    "0",
    "1",
    "-1",
    "2.5",
    "1e3",
    "99999999999999999999",
    "\"s\"",
    "'t'",
    "\"\\u{41}\"",
    "\"\\x\"",
    "\"",
    "size",
    "startsWith",
    "endsWith",
    "matches",
    "exists",
    "has",
    "foo",
    "\"^a+$\"",
    "\"(\"",
    "&",
    "|",
    "=",
    "é",
    "\n",
    "\t",
    "#",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(src in any::<String>()) {
        check(&src)?;
    }

    #[test]
    fn rule_like_strings_never_panic(src in "[ -~\n\té]{0,60}") {
        check(&src)?;
    }

    #[test]
    fn token_soups_never_panic(
        tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..30),
        sep in prop::sample::select(&["", " ", "\n"][..]),
    ) {
        check(&tokens.join(sep))?;
    }
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        Just(Literal::Null),
        any::<bool>().prop_map(Literal::Bool),
        any::<i64>().prop_map(Literal::Int),
        any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(Literal::Float),
        ".{0,6}".prop_map(Literal::String),
    ]
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_][a-z0-9_]{0,5}", Just("in".to_owned()), Just("null".to_owned()), ".{0,4}"]
}

fn root() -> impl Strategy<Value = String> {
    prop::sample::select(&["auth", "doc", "file", "request"][..]).prop_map(str::to_owned)
}

/// A path whose indexes are fields or integer literals.
fn simple_path() -> impl Strategy<Value = Path> {
    let segment = prop_oneof![
        field().prop_map(Segment::Field),
        any::<i64>().prop_map(|i| Segment::Index(Expr::Literal(Literal::Int(i)))),
    ];
    (root(), prop::collection::vec(segment, 0..3))
        .prop_map(|(root, segments)| Path { root, segments })
}

fn compare_op() -> impl Strategy<Value = CompareOp> {
    prop::sample::select(
        &[
            CompareOp::Eq,
            CompareOp::Ne,
            CompareOp::Lt,
            CompareOp::Le,
            CompareOp::Gt,
            CompareOp::Ge,
            CompareOp::In,
        ][..],
    )
}

/// Trees the parser could produce: known roots, right arities, literal regexes, `exists` on
/// paths, no string-literal indexes (those parse as fields), n-ary chains of two or more.
fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![literal().prop_map(Expr::Literal), simple_path().prop_map(Expr::Path)];
    leaf.prop_recursive(5, 64, 4, |inner| {
        let two = || (inner.clone(), inner.clone());
        let chain = || prop::collection::vec(inner.clone(), 2..4);
        let index = inner.clone().prop_filter("a string index is a field", |e| {
            !matches!(e, Expr::Literal(Literal::String(_)))
        });
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Expr::List),
            chain().prop_map(Expr::And),
            chain().prop_map(Expr::Or),
            chain().prop_map(Expr::Add),
            (compare_op(), inner.clone(), inner.clone()).prop_map(|(op, a, b)| Expr::Compare(
                op,
                Box::new(a),
                Box::new(b)
            )),
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            inner.clone().prop_map(|e| Expr::Call(Function::Size, vec![e])),
            two().prop_map(|(a, b)| Expr::Call(Function::StartsWith, vec![a, b])),
            two().prop_map(|(a, b)| Expr::Call(Function::EndsWith, vec![a, b])),
            (inner.clone(), "\\^?[a-z]{0,5}").prop_map(|(a, p)| {
                Expr::Call(Function::Matches, vec![a, Expr::Literal(Literal::String(p))])
            }),
            simple_path().prop_map(|p| Expr::Call(Function::Exists, vec![Expr::Path(p)])),
            (simple_path(), index).prop_map(|(mut p, i)| {
                p.segments.push(Segment::Index(i));
                Expr::Path(p)
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn print_then_parse_is_identity(e in expr()) {
        let printed = e.to_string();
        prop_assume!(printed.len() <= MAX_SOURCE_LEN);
        let env = env();
        let parsed = parse(&printed, &env);
        prop_assert_eq!(parsed.as_ref().ok(), Some(&e), "printed {:?}: {:?}", printed, parsed);
        // And the tree compiles and evaluates without panicking.
        check(&printed)?;
    }
}

/// One small edit of a valid rule, at a fraction `at` of its length.
#[derive(Debug, Clone)]
enum Edit {
    Truncate,
    Delete(usize),
    Insert(&'static str),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        Just(Edit::Truncate),
        (1usize..4).prop_map(Edit::Delete),
        prop::sample::select(TOKENS).prop_map(Edit::Insert)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Near-misses: valid rules with one character range cut or one token spliced in.
    #[test]
    fn edited_valid_rules_never_panic(e in expr(), ed in edit(), at in 0.0f64..1.0) {
        let printed = e.to_string();
        let boundaries: Vec<usize> = printed.char_indices().map(|(i, _)| i).chain([printed.len()]).collect();
        let k = ((boundaries.len() - 1) as f64 * at) as usize;
        let pos = boundaries[k];
        let src = match ed {
            Edit::Truncate => printed[..pos].to_owned(),
            Edit::Delete(n) => {
                let end = boundaries[(k + n).min(boundaries.len() - 1)];
                format!("{}{}", &printed[..pos], &printed[end..])
            }
            Edit::Insert(tok) => format!("{}{tok}{}", &printed[..pos], &printed[pos..]),
        };
        check(&src)?;
    }
}
