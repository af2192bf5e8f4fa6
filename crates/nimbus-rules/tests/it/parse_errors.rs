//! Parse errors: exact message, line and column for bad rules.

use nimbus_rules::{Env, MAX_DEPTH, MAX_SOURCE_LEN, ParseErrorKind, Rule};

/// (source, line, column, message without position)
const CASES: &[(&str, usize, usize, &str)] = &[
    ("auth.id != null &&", 1, 19, "expected an expression after '&&'"),
    ("auth.id != null && )", 1, 20, "expected an expression after '&&', found ')'"),
    ("", 1, 1, "expected an expression"),
    (
        r#"usr.id == "x""#,
        1,
        1,
        "unknown variable `usr`; the variables are `auth`, `doc`, `request`",
    ),
    (
        "doc.owner == auth.id &&\n  (size(doc.title) > )",
        2,
        22,
        "expected an expression after '>', found ')'",
    ),
    (
        "foo(doc.x)",
        1,
        1,
        "unknown function `foo`; the functions are size, startsWith, endsWith, matches, exists (or has)",
    ),
    ("doc.a && startsWith(doc.path)", 1, 10, "`startsWith` takes 2 arguments, found 1"),
    ("size(doc.a, doc.b) > 1", 1, 1, "`size` takes 1 argument, found 2"),
    ("doc.a = 1", 1, 7, "unexpected character '='; did you mean '=='?"),
    ("doc.a & doc.b", 1, 7, "unexpected character '&'; did you mean '&&'?"),
    ("doc.a == \"unterminated", 1, 10, "unterminated string"),
    (
        r#"doc.a == "bad \q escape""#,
        1,
        15,
        r#"invalid escape \q; the escapes are \n \r \t \0 \\ \" \' \/ and \u{hex}"#,
    ),
    (r#"matches(doc.a, "(")"#, 1, 16, "invalid regular expression: unclosed group"),
    (
        "matches(doc.a, doc.b)",
        1,
        16,
        "the pattern of `matches` must be a string literal, so it can be compiled once",
    ),
    ("exists(size(doc.a))", 1, 8, "`exists` takes a path such as doc.field, not a computed value"),
    ("1 == 1 == 1", 1, 8, "comparison operators do not chain; add parentheses before '=='"),
    ("doc.title.", 1, 11, "expected a field name after '.', found the end of the rule"),
    ("doc.x in [1, 2", 1, 15, "expected ',' or ']', found the end of the rule"),
    ("(doc.x == 1", 1, 12, "expected ')', found the end of the rule"),
    ("size == 1", 1, 1, "`size` is a function; call it as size(...)"),
    (
        "- doc.x > 1",
        1,
        3,
        "'-' is only allowed in front of a number literal (there is no subtraction)",
    ),
    ("doc.x == 99999999999999999999", 1, 10, "integer literal is too large"),
    ("doc.x == -9223372036854775809", 1, 11, "integer literal is too large"),
    ("doc.x == 1.", 1, 11, "expected a digit after the decimal point"),
    ("doc.x == 12abc", 1, 12, "a number must not run into letters, digits or '.'"),
    ("true false", 1, 6, "expected an operator or the end of the rule, found 'false'"),
    (r#""ééé" == doc.x ]"#, 1, 16, "expected an operator or the end of the rule, found ']'"),
    ("doc.é", 1, 5, "unexpected character 'é'"),
    ("doc.a == 1\r\n  && doc.b ==\r\n\r\n", 2, 14, "expected an expression after '=='"),
];

#[test]
fn parse_errors_point_at_line_and_column() {
    let env = Env::documents();
    let mut failures = Vec::new();
    for &(src, line, column, message) in CASES {
        match Rule::compile(src, &env) {
            Ok(_) => failures.push(format!("{src:?}: parsed")),
            Err(e) => {
                let got = (e.line(), e.column(), e.kind().to_string());
                if got != (line, column, message.to_owned()) {
                    failures.push(format!(
                        "{src:?}: expected {line}:{column} {message:?}, got {}:{} {:?}",
                        got.0, got.1, got.2
                    ));
                }
                assert!(e.offset() <= src.len());
                assert_eq!(e.message(), format!("{message} at {line}:{column}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn display_has_position_and_caret_snippet() {
    let err = Rule::compile("doc.owner == auth.id &&", &Env::documents()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "expected an expression after '&&' at 1:24\n  doc.owner == auth.id &&\n                         ^"
    );
    let err = Rule::compile("auth.id != null &&\n  usr.id == 1", &Env::documents()).unwrap_err();
    assert_eq!(err.snippet(), "    usr.id == 1\n    ^");
}

#[test]
fn long_lines_are_windowed_in_snippets() {
    let src = format!("{}doc.x ==", "doc.a == 1 && ".repeat(20));
    let err = Rule::compile(&src, &Env::documents()).unwrap_err();
    assert_eq!((err.line(), err.column()), (1, src.chars().count() + 1));
    let lines: Vec<&str> = err.snippet().lines().collect();
    assert!(lines[0].starts_with("  …"), "{}", err.snippet());
    assert!(lines[0].chars().count() < 80);
    assert_eq!(
        lines[0].chars().count() + 1,
        lines[1].chars().count(),
        "caret just past the end:\n{}",
        err.snippet()
    );
}

#[test]
fn limits() {
    let env = Env::documents();
    let deep = format!("{}true{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
    let err = Rule::compile(&deep, &env).unwrap_err();
    assert_eq!(err.kind(), &ParseErrorKind::TooDeep { max: MAX_DEPTH });
    assert_eq!((err.line(), err.column()), (1, MAX_DEPTH + 1));
    let ok = format!("{}true{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert!(Rule::compile(&ok, &env).is_ok());
    let bangs = format!("{}true", "!".repeat(MAX_DEPTH + 1));
    assert!(matches!(
        Rule::compile(&bangs, &env).unwrap_err().kind(),
        ParseErrorKind::TooDeep { .. }
    ));

    let long = "true && ".repeat(MAX_SOURCE_LEN / 8 + 1) + "true";
    let err = Rule::compile(&long, &env).unwrap_err();
    assert_eq!(err.kind(), &ParseErrorKind::TooLong { len: long.len(), max: MAX_SOURCE_LEN });
    assert_eq!((err.line(), err.column()), (1, MAX_SOURCE_LEN + 1));
    // A long flat chain within the limit is fine: && chains do not nest.
    let chain = "true && ".repeat(400) + "true";
    assert!(Rule::compile(&chain, &env).is_ok());
}
