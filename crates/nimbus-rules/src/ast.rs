//! The syntax tree a rule parses to, and its canonical printed form.
//!
//! The tree carries no positions, so two rules that differ only in spacing, quotes or redundant
//! parentheses parse to equal trees, and printing a tree then parsing the text gives the same tree.

use std::fmt::{self, Display, Formatter, Write};

/// An expression. `&&`, `||` and `+` chains are n-ary so long chains stay shallow; parentheses
/// leave no node of their own.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `null`, `true`, `1`, `-2.5`, `"text"`.
    Literal(Literal),
    /// `[a, b, c]`.
    List(Vec<Expr>),
    /// `doc.meta.tags[0]`.
    Path(Path),
    /// `startsWith(file.path, "users/")`.
    Call(Function, Vec<Expr>),
    /// `!a`.
    Not(Box<Expr>),
    /// `a && b && c`: two or more operands.
    And(Vec<Expr>),
    /// `a || b || c`: two or more operands.
    Or(Vec<Expr>),
    /// `a == b`, `a < b`, `a in b`, ... (comparisons do not chain).
    Compare(CompareOp, Box<Expr>, Box<Expr>),
    /// `a + b + c`: two or more operands; string concatenation or number addition.
    Add(Vec<Expr>),
}

/// A constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A finite 64-bit float (written with a `.` or an exponent).
    Float(f64),
    /// A string.
    String(String),
}

/// A root variable and the steps into it.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// One of the [`Env`](crate::Env)'s roots, e.g. `auth`.
    pub root: String,
    /// Field names and indexes, in order.
    pub segments: Vec<Segment>,
}

/// One step of a [`Path`].
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// `.name` or `["name"]` (a string literal index is a field).
    Field(String),
    /// `[expr]`: an integer indexes a list, a string names a field.
    Index(Expr),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `in`
    In,
}

impl CompareOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::In => "in",
        }
    }
}

/// A built-in function. There are no others and no user-defined ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    /// `size(x)`: characters of a string, elements of a list, fields of an object.
    Size,
    /// `startsWith(s, prefix)`.
    StartsWith,
    /// `endsWith(s, suffix)`.
    EndsWith,
    /// `matches(s, "regex")`: the pattern must be a literal; it is compiled at parse time.
    Matches,
    /// `exists(path)` (alias `has`): the path leads to a value other than null.
    Exists,
}

impl Function {
    /// All functions.
    pub const ALL: [Function; 5] = [
        Function::Size,
        Function::StartsWith,
        Function::EndsWith,
        Function::Matches,
        Function::Exists,
    ];

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Function::Size => "size",
            Function::StartsWith => "startsWith",
            Function::EndsWith => "endsWith",
            Function::Matches => "matches",
            Function::Exists => "exists",
        }
    }

    /// The function called `name`, including the alias `has`.
    pub fn from_name(name: &str) -> Option<Function> {
        Some(match name {
            "size" => Function::Size,
            "startsWith" => Function::StartsWith,
            "endsWith" => Function::EndsWith,
            "matches" => Function::Matches,
            "exists" | "has" => Function::Exists,
            _ => return None,
        })
    }

    /// How many arguments it takes.
    pub fn arity(self) -> usize {
        match self {
            Function::Size | Function::Exists => 1,
            Function::StartsWith | Function::EndsWith | Function::Matches => 2,
        }
    }
}

/// Binding strength, loosest first; a child that binds no tighter than its parent is parenthesized.
fn precedence(e: &Expr) -> u8 {
    match e {
        Expr::Or(_) => 1,
        Expr::And(_) => 2,
        Expr::Compare(..) => 3,
        Expr::Add(_) => 4,
        Expr::Not(_) => 5,
        Expr::Literal(_) | Expr::List(_) | Expr::Path(_) | Expr::Call(..) => 6,
    }
}

fn child(f: &mut Formatter<'_>, e: &Expr, parent: u8) -> fmt::Result {
    if precedence(e) <= parent { write!(f, "({e})") } else { write!(f, "{e}") }
}

fn chain(f: &mut Formatter<'_>, items: &[Expr], op: &str, parent: u8) -> fmt::Result {
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            write!(f, " {op} ")?;
        }
        child(f, e, parent)?;
    }
    Ok(())
}

fn comma_list(f: &mut Formatter<'_>, items: &[Expr]) -> fmt::Result {
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}

/// Prints the canonical form: single spaces around binary operators, double-quoted strings,
/// `.field` where the field is an identifier, and only the parentheses the tree needs.
impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(l) => write!(f, "{l}"),
            Expr::List(items) => {
                f.write_char('[')?;
                comma_list(f, items)?;
                f.write_char(']')
            }
            Expr::Path(p) => write!(f, "{p}"),
            Expr::Call(func, args) => {
                write!(f, "{}(", func.name())?;
                comma_list(f, args)?;
                f.write_char(')')
            }
            Expr::Not(e) => {
                f.write_char('!')?;
                child(f, e, 4)
            }
            Expr::And(items) => chain(f, items, "&&", 2),
            Expr::Or(items) => chain(f, items, "||", 1),
            Expr::Compare(op, a, b) => {
                child(f, a, 3)?;
                write!(f, " {} ", op.as_str())?;
                child(f, b, 3)
            }
            Expr::Add(items) => chain(f, items, "+", 4),
        }
    }
}

impl Display for Literal {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            // `{:?}` is the shortest text that parses back to the same float, and always has a
            // `.` or an exponent, so it reads back as a float.
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::String(s) => write_string(f, s),
        }
    }
}

fn write_string(f: &mut Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// An identifier as the lexer reads one (keywords included: they are valid after a `.`).
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Display for Path {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(&self.root)?;
        for seg in &self.segments {
            match seg {
                Segment::Field(name) if is_identifier(name) => write!(f, ".{name}")?,
                Segment::Field(name) => {
                    f.write_char('[')?;
                    write_string(f, name)?;
                    f.write_char(']')?;
                }
                Segment::Index(e) => write!(f, "[{e}]")?,
            }
        }
        Ok(())
    }
}
