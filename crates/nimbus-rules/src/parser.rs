//! Recursive descent over the grammar in the crate doc. Checks everything that can be checked
//! without data: roots, function names, arities, `exists` arguments, regex patterns, nesting depth.

use regex::Regex;

use crate::ast::{CompareOp, Expr, Function, Literal, Path, Segment};
use crate::env::Env;
use crate::error::{ParseError, ParseErrorKind};
use crate::lexer::{Lexer, Tok, Token};
use crate::{MAX_DEPTH, MAX_SOURCE_LEN};

/// Compiled regexes of the rule, by pattern, so the compiler need not build them again.
pub(crate) type Regexes = Vec<(String, Regex)>;

/// Largest compiled size of one regex, in bytes (the `regex` crate's own limit is 10 MiB).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub(crate) fn build_regex(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Parses `src` against `env`: the syntax tree and the regexes it compiled on the way.
pub(crate) fn parse(src: &str, env: &Env) -> Result<(Expr, Regexes), ParseError> {
    if src.len() > MAX_SOURCE_LEN {
        let kind = ParseErrorKind::TooLong { len: src.len(), max: MAX_SOURCE_LEN };
        return Err(ParseError::new(kind, src, MAX_SOURCE_LEN));
    }
    let mut lexer = Lexer::new(src);
    let tok = lexer.next_token()?;
    let mut p = Parser { lexer, tok, prev: None, env, depth: 0, regexes: Vec::new() };
    let expr = p.expr()?;
    if p.tok.tok != Tok::Eof {
        let found = p.describe().unwrap_or_default();
        return Err(p.err_here(ParseErrorKind::TrailingInput { found }));
    }
    Ok((expr, p.regexes))
}

struct Parser<'s, 'e> {
    lexer: Lexer<'s>,
    /// The current, not yet consumed, token.
    tok: Token,
    /// The token consumed last, for "expected an expression after '&&'".
    prev: Option<Token>,
    env: &'e Env,
    depth: usize,
    regexes: Regexes,
}

impl Parser<'_, '_> {
    fn src(&self) -> &str {
        self.lexer.src()
    }

    fn advance(&mut self) -> Result<Token, ParseError> {
        let next = self.lexer.next_token()?;
        let tok = std::mem::replace(&mut self.tok, next);
        self.prev = Some(tok.clone());
        Ok(tok)
    }

    fn err_at(&self, kind: ParseErrorKind, offset: usize) -> ParseError {
        ParseError::new(kind, self.src(), offset)
    }

    fn err_here(&self, kind: ParseErrorKind) -> ParseError {
        self.err_at(kind, self.tok.start)
    }

    fn describe(&self) -> Option<String> {
        self.tok.describe(self.src())
    }

    fn expect(&mut self, want: Tok, expected: &'static str) -> Result<(), ParseError> {
        if self.tok.tok == want {
            self.advance()?;
            Ok(())
        } else {
            Err(self.err_here(ParseErrorKind::Expected { expected, found: self.describe() }))
        }
    }

    /// One level deeper (a parenthesis, list, call, index or `!`); bounded so no input can
    /// exhaust the stack here or in evaluation.
    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err_here(ParseErrorKind::TooDeep { max: MAX_DEPTH }));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.or()
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let first = self.and()?;
        if self.tok.tok != Tok::OrOr {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.tok.tok == Tok::OrOr {
            self.advance()?;
            items.push(self.and()?);
        }
        Ok(Expr::Or(items))
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let first = self.compare()?;
        if self.tok.tok != Tok::AndAnd {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.tok.tok == Tok::AndAnd {
            self.advance()?;
            items.push(self.compare()?);
        }
        Ok(Expr::And(items))
    }

    fn compare_op(&self) -> Option<CompareOp> {
        Some(match self.tok.tok {
            Tok::Eq => CompareOp::Eq,
            Tok::Ne => CompareOp::Ne,
            Tok::Lt => CompareOp::Lt,
            Tok::Le => CompareOp::Le,
            Tok::Gt => CompareOp::Gt,
            Tok::Ge => CompareOp::Ge,
            Tok::In => CompareOp::In,
            _ => return None,
        })
    }

    fn compare(&mut self) -> Result<Expr, ParseError> {
        let lhs = self.add()?;
        let Some(op) = self.compare_op() else { return Ok(lhs) };
        self.advance()?;
        let rhs = self.add()?;
        if let Some(second) = self.compare_op() {
            return Err(
                self.err_here(ParseErrorKind::ChainedComparison { op: second.as_str().to_owned() })
            );
        }
        Ok(Expr::Compare(op, Box::new(lhs), Box::new(rhs)))
    }

    fn add(&mut self) -> Result<Expr, ParseError> {
        let first = self.unary()?;
        if self.tok.tok != Tok::Plus {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.tok.tok == Tok::Plus {
            self.advance()?;
            items.push(self.unary()?);
        }
        Ok(Expr::Add(items))
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.tok.tok {
            Tok::Bang => {
                self.enter()?;
                self.advance()?;
                let inner = self.unary()?;
                self.leave();
                Ok(Expr::Not(Box::new(inner)))
            }
            Tok::Minus => {
                self.advance()?;
                let lit = match self.tok.tok {
                    Tok::Int(m) if m <= i64::MIN.unsigned_abs() => {
                        Literal::Int(0i64.wrapping_sub_unsigned(m))
                    }
                    Tok::Int(_) => return Err(self.too_large()),
                    Tok::Float(x) => Literal::Float(-x),
                    _ => return Err(self.err_here(ParseErrorKind::MinusNeedsNumber)),
                };
                self.advance()?;
                Ok(Expr::Literal(lit))
            }
            _ => self.primary(),
        }
    }

    fn too_large(&self) -> ParseError {
        self.err_here(ParseErrorKind::InvalidNumber { reason: "integer literal is too large" })
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let lit = match &self.tok.tok {
            Tok::Int(m) => Literal::Int(i64::try_from(*m).map_err(|_| self.too_large())?),
            Tok::Float(x) => Literal::Float(*x),
            Tok::Str(s) => Literal::String(s.clone()),
            Tok::True => Literal::Bool(true),
            Tok::False => Literal::Bool(false),
            Tok::Null => Literal::Null,
            Tok::LBracket => return self.list(),
            Tok::LParen => {
                self.enter()?;
                self.advance()?;
                let inner = self.expr()?;
                self.expect(Tok::RParen, "')'")?;
                self.leave();
                return Ok(inner);
            }
            Tok::Ident => return self.ident(),
            _ => {
                let after = self.prev.as_ref().map(|t| {
                    self.src().get(t.start..t.end).unwrap_or_default().chars().take(24).collect()
                });
                return Err(self.err_here(ParseErrorKind::ExpectedExpression {
                    after,
                    found: self.describe(),
                }));
            }
        };
        self.advance()?;
        Ok(Expr::Literal(lit))
    }

    fn list(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        self.advance()?;
        let items = self.comma_separated(Tok::RBracket, "',' or ']'")?;
        self.leave();
        Ok(Expr::List(items))
    }

    /// Expressions separated by commas up to `close`, which is consumed.
    fn comma_separated(
        &mut self,
        close: Tok,
        expected: &'static str,
    ) -> Result<Vec<Expr>, ParseError> {
        let mut items = Vec::new();
        if self.tok.tok == close {
            self.advance()?;
            return Ok(items);
        }
        loop {
            items.push(self.expr()?);
            if self.tok.tok == Tok::Comma {
                self.advance()?;
            } else if self.tok.tok == close {
                self.advance()?;
                return Ok(items);
            } else {
                return Err(
                    self.err_here(ParseErrorKind::Expected { expected, found: self.describe() })
                );
            }
        }
    }

    fn ident(&mut self) -> Result<Expr, ParseError> {
        let name_tok = self.advance()?;
        let name = self.src().get(name_tok.start..name_tok.end).unwrap_or_default().to_owned();
        if self.tok.tok == Tok::LParen {
            return self.call(name, name_tok.start);
        }
        if self.env.slot(&name).is_none() {
            let kind = if Function::from_name(&name).is_some() {
                ParseErrorKind::FunctionWithoutCall { name }
            } else {
                ParseErrorKind::UnknownVariable { name, roots: self.env.root_names() }
            };
            return Err(self.err_at(kind, name_tok.start));
        }
        let mut segments = Vec::new();
        loop {
            match self.tok.tok {
                Tok::Dot => {
                    self.advance()?;
                    match self.tok.tok {
                        Tok::Ident | Tok::True | Tok::False | Tok::Null | Tok::In => {
                            let t = self.advance()?;
                            segments.push(Segment::Field(
                                self.src().get(t.start..t.end).unwrap_or_default().to_owned(),
                            ));
                        }
                        _ => {
                            let found = self.describe();
                            return Err(self.err_here(ParseErrorKind::Expected {
                                expected: "a field name after '.'",
                                found,
                            }));
                        }
                    }
                }
                Tok::LBracket => {
                    self.enter()?;
                    self.advance()?;
                    let index = self.expr()?;
                    self.expect(Tok::RBracket, "']'")?;
                    self.leave();
                    segments.push(match index {
                        Expr::Literal(Literal::String(s)) => Segment::Field(s),
                        other => Segment::Index(other),
                    });
                }
                _ => return Ok(Expr::Path(Path { root: name, segments })),
            }
        }
    }

    fn call(&mut self, name: String, at: usize) -> Result<Expr, ParseError> {
        let Some(func) = Function::from_name(&name) else {
            return Err(self.err_at(ParseErrorKind::UnknownFunction { name }, at));
        };
        self.enter()?;
        self.advance()?; // (
        let mut starts = Vec::new();
        let mut args = Vec::new();
        if self.tok.tok == Tok::RParen {
            self.advance()?;
        } else {
            loop {
                starts.push(self.tok.start);
                args.push(self.expr()?);
                match self.tok.tok {
                    Tok::Comma => {
                        self.advance()?;
                    }
                    Tok::RParen => {
                        self.advance()?;
                        break;
                    }
                    _ => {
                        let found = self.describe();
                        return Err(self
                            .err_here(ParseErrorKind::Expected { expected: "',' or ')'", found }));
                    }
                }
            }
        }
        self.leave();
        if args.len() != func.arity() {
            let kind = ParseErrorKind::WrongArity {
                function: func.name(),
                expected: func.arity(),
                found: args.len(),
            };
            return Err(self.err_at(kind, at));
        }
        match (func, args.get(1)) {
            (Function::Exists, _) if !matches!(args.first(), Some(Expr::Path(_))) => {
                let at = starts.first().copied().unwrap_or(at);
                return Err(self.err_at(ParseErrorKind::ExistsNeedsPath { function: name }, at));
            }
            (Function::Matches, Some(pattern)) => {
                let at = starts.get(1).copied().unwrap_or(at);
                let Expr::Literal(Literal::String(pattern)) = pattern else {
                    return Err(self.err_at(ParseErrorKind::RegexNotLiteral, at));
                };
                if !self.regexes.iter().any(|(p, _)| p == pattern) {
                    let regex = build_regex(pattern).map_err(|e| {
                        self.err_at(ParseErrorKind::InvalidRegex { message: regex_message(&e) }, at)
                    })?;
                    self.regexes.push((pattern.clone(), regex));
                }
            }
            _ => {}
        }
        Ok(Expr::Call(func, args))
    }
}

/// The regex crate's message without its own multi-line snippet: its last `error: ...` line.
fn regex_message(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map_or_else(|| text.lines().next().unwrap_or_default().to_owned(), str::to_owned)
}
