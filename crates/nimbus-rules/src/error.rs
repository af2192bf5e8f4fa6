//! Typed errors: parse errors with a position and a caret snippet, and the small errors of
//! [`Env`](crate::Env), [`Context`](crate::Context) and [`RuleSet`](crate::RuleSet).

use std::fmt;

use crate::Operation;

/// What is wrong with a rule's source. Its `Display` is the one-line message without a position;
/// [`ParseError`] adds the position and the snippet.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The source is longer than [`MAX_SOURCE_LEN`](crate::MAX_SOURCE_LEN).
    #[error("the rule is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the source in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// Parentheses, lists, calls, indexes and `!` nest deeper than [`MAX_DEPTH`](crate::MAX_DEPTH).
    #[error("expressions nest deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// A character that starts no token.
    #[error("unexpected character {found:?}{}", hint.map(|h| format!("; did you mean '{h}'?")).unwrap_or_default())]
    UnexpectedChar {
        /// The character.
        found: char,
        /// The operator the author probably meant (`&&` for `&`, `==` for `=`).
        hint: Option<&'static str>,
    },
    /// A string literal with no closing quote.
    #[error("unterminated string")]
    UnterminatedString,
    /// A backslash escape that the language does not know.
    #[error(
        "invalid escape {escape}; the escapes are \\n \\r \\t \\0 \\\\ \\\" \\' \\/ and \\u{{hex}}"
    )]
    InvalidEscape {
        /// The escape as written, truncated.
        escape: String,
    },
    /// A malformed or out-of-range number.
    #[error("{reason}")]
    InvalidNumber {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An expression was expected (after an operator, `(`, `,`, or at the start).
    #[error("expected an expression{}{}",
        after.as_ref().map(|a| format!(" after '{a}'")).unwrap_or_default(),
        found.as_ref().map(|f| format!(", found {f}")).unwrap_or_default())]
    ExpectedExpression {
        /// The token before the gap, if any.
        after: Option<String>,
        /// What was there instead; `None` at the end of the input.
        found: Option<String>,
    },
    /// A specific token was expected.
    #[error("expected {expected}, found {}", found.as_deref().unwrap_or("the end of the rule"))]
    Expected {
        /// What was expected, e.g. `')'`.
        expected: &'static str,
        /// What was there instead; `None` at the end of the input.
        found: Option<String>,
    },
    /// `a == b == c` and the like: comparisons do not chain.
    #[error("comparison operators do not chain; add parentheses before '{op}'")]
    ChainedComparison {
        /// The second operator.
        op: String,
    },
    /// A root variable that the [`Env`](crate::Env) does not define.
    #[error("unknown variable `{name}`; the variables are {}", list(roots))]
    UnknownVariable {
        /// The name as written.
        name: String,
        /// The roots the environment allows.
        roots: Vec<String>,
    },
    /// A function name used without a call.
    #[error("`{name}` is a function; call it as {name}(...)")]
    FunctionWithoutCall {
        /// The function name.
        name: String,
    },
    /// A call to a function that does not exist.
    #[error(
        "unknown function `{name}`; the functions are size, startsWith, endsWith, matches, exists (or has)"
    )]
    UnknownFunction {
        /// The name as written.
        name: String,
    },
    /// A known function called with the wrong number of arguments.
    #[error("`{function}` takes {expected} argument{}, found {found}", if *expected == 1 { "" } else { "s" })]
    WrongArity {
        /// The function.
        function: &'static str,
        /// How many it takes.
        expected: usize,
        /// How many it was given.
        found: usize,
    },
    /// `exists(x)` where `x` is not a path such as `doc.meta.tags`.
    #[error("`{function}` takes a path such as doc.field, not a computed value")]
    ExistsNeedsPath {
        /// `exists` or `has`, as written.
        function: String,
    },
    /// `matches(s, p)` where `p` is not a string literal.
    #[error("the pattern of `matches` must be a string literal, so it can be compiled once")]
    RegexNotLiteral,
    /// `matches(s, "...")` with a pattern the `regex` crate rejects.
    #[error("invalid regular expression: {message}")]
    InvalidRegex {
        /// The regex crate's explanation.
        message: String,
    },
    /// `-` not followed by a number literal.
    #[error("'-' is only allowed in front of a number literal (there is no subtraction)")]
    MinusNeedsNumber,
    /// Tokens left over after a complete expression.
    #[error("expected an operator or the end of the rule, found {found}")]
    TrailingInput {
        /// The first leftover token.
        found: String,
    },
}

fn list(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// A rule that does not parse, with where: 1-based line and column (in characters), the byte
/// offset, and a caret snippet. `Display` prints `message at line:column` and then the snippet:
///
/// ```text
/// expected an expression after '&&' at 1:19
///   auth.id != null &&
///                     ^
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind} at {line}:{column}\n{snippet}")]
pub struct ParseError {
    kind: ParseErrorKind,
    offset: usize,
    line: usize,
    column: usize,
    snippet: String,
}

/// Longest piece of a line shown in a snippet, in characters.
const SNIPPET_WIDTH: usize = 72;

impl ParseError {
    /// An error of `kind` at byte `offset` of `source` (clamped into the source).
    pub(crate) fn new(kind: ParseErrorKind, source: &str, offset: usize) -> Self {
        let mut offset = offset.min(source.len());
        while !source.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = source.get(..offset).unwrap_or_default();
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = source.get(line_start..offset).unwrap_or_default().chars().count() + 1;
        let rest = source.get(line_start..).unwrap_or_default();
        let text = rest.split('\n').next().unwrap_or_default().trim_end_matches('\r');
        let snippet = snippet(text, column - 1);
        ParseError { kind, offset, line, column, snippet }
    }

    /// What is wrong.
    pub fn kind(&self) -> &ParseErrorKind {
        &self.kind
    }

    /// 1-based line of the error.
    pub fn line(&self) -> usize {
        self.line
    }

    /// 1-based column of the error, counted in characters; one past the last character when the
    /// rule ended too early.
    pub fn column(&self) -> usize {
        self.column
    }

    /// Byte offset of the error in the source (at most the source's length).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The offending line (or a window of it) and a caret under the column, two lines, indented.
    pub fn snippet(&self) -> &str {
        &self.snippet
    }

    /// The one-line message with its position, without the snippet: what an API puts in a field.
    pub fn message(&self) -> String {
        format!("{} at {}:{}", self.kind, self.line, self.column)
    }
}

/// Two lines: the text of the line (a window of at most [`SNIPPET_WIDTH`] characters around the
/// column) and a caret under the column. Control characters print as spaces so the caret lines up.
fn snippet(line: &str, col0: usize) -> String {
    let chars: Vec<char> = line.chars().collect();
    let start =
        col0.saturating_sub(SNIPPET_WIDTH / 2).min(chars.len().saturating_sub(SNIPPET_WIDTH));
    let start = start.min(col0);
    let end = (start + SNIPPET_WIDTH).min(chars.len());
    let mut shown = String::from("  ");
    let mut caret = String::from("  ");
    if start > 0 {
        shown.push('…');
        caret.push(' ');
    }
    for c in chars.get(start..end).unwrap_or_default() {
        shown.push(if c.is_control() { ' ' } else { *c });
    }
    if end < chars.len() {
        shown.push('…');
    }
    caret.extend(std::iter::repeat_n(' ', col0 - start));
    caret.push('^');
    format!("{}\n{caret}", shown.trim_end())
}

/// An [`Env`](crate::Env) that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// A root name that is not an identifier (`[A-Za-z_][A-Za-z0-9_]*`).
    #[error("`{0}` is not a valid variable name")]
    InvalidName(String),
    /// A root name that is a keyword or a function name.
    #[error("`{0}` is reserved (a keyword or a function name)")]
    Reserved(String),
    /// The same root twice.
    #[error("variable `{0}` is listed twice")]
    Duplicate(String),
    /// More roots than [`MAX_ROOTS`](crate::MAX_ROOTS).
    #[error("{count} variables; at most {max} are allowed")]
    TooMany {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// [`Context::bind`](crate::Context::bind) with a name that is not one of the environment's roots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown variable `{name}`; the variables are {}", list(roots))]
pub struct UnknownRoot {
    /// The name given.
    pub name: String,
    /// The environment's roots.
    pub roots: Vec<String>,
}

/// A rule of a [`RuleSet`](crate::RuleSet) that does not parse, with the operation it was for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{operation} rule: {error}")]
pub struct RuleSetError {
    /// The operation whose rule failed.
    pub operation: Operation,
    /// Why (already part of this error's message, so not also its `source()`).
    pub error: ParseError,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
