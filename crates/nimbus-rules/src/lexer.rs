//! Turns source text into tokens, one at a time, so the first problem in reading order is the
//! one reported.

use crate::error::{ParseError, ParseErrorKind};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Ident,
    /// The magnitude; the parser checks the range once it knows the sign.
    Int(u64),
    Float(f64),
    Str(String),
    Dot,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    AndAnd,
    OrOr,
    Bang,
    Plus,
    Minus,
    True,
    False,
    Null,
    In,
    Eof,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

pub(crate) struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    /// End of the last token: where "the end of the rule" is reported, so trailing blank lines
    /// do not move the caret away from the text.
    last_end: usize,
}

/// Longest piece of a literal quoted back in a message, in characters.
const QUOTE_MAX: usize = 24;

impl<'s> Lexer<'s> {
    pub fn new(src: &'s str) -> Self {
        Lexer { src, pos: 0, last_end: 0 }
    }

    pub fn src(&self) -> &'s str {
        self.src
    }

    fn err(&self, kind: ParseErrorKind, offset: usize) -> ParseError {
        ParseError::new(kind, self.src, offset)
    }

    fn peek(&self) -> Option<char> {
        self.src.get(self.pos..).and_then(|s| s.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    pub fn next_token(&mut self) -> Result<Token, ParseError> {
        while let Some(c) = self.peek() {
            if matches!(c, ' ' | '\t' | '\n' | '\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let start = self.pos;
        let Some(c) = self.bump() else {
            return Ok(Token { tok: Tok::Eof, start: self.last_end, end: self.last_end });
        };
        let tok = match c {
            '.' => Tok::Dot,
            ',' => Tok::Comma,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            '+' => Tok::Plus,
            '-' => Tok::Minus,
            '=' if self.eat('=') => Tok::Eq,
            '!' if self.eat('=') => Tok::Ne,
            '!' => Tok::Bang,
            '<' if self.eat('=') => Tok::Le,
            '<' => Tok::Lt,
            '>' if self.eat('=') => Tok::Ge,
            '>' => Tok::Gt,
            '&' if self.eat('&') => Tok::AndAnd,
            '|' if self.eat('|') => Tok::OrOr,
            '"' | '\'' => self.string(c, start)?,
            '0'..='9' => self.number(start)?,
            c if c.is_ascii_alphabetic() || c == '_' => {
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.pos += 1;
                }
                match self.src.get(start..self.pos).unwrap_or_default() {
                    "true" => Tok::True,
                    "false" => Tok::False,
                    "null" => Tok::Null,
                    "in" => Tok::In,
                    _ => Tok::Ident,
                }
            }
            found => {
                let hint = match found {
                    '&' => Some("&&"),
                    '|' => Some("||"),
                    '=' => Some("=="),
                    _ => None,
                };
                return Err(self.err(ParseErrorKind::UnexpectedChar { found, hint }, start));
            }
        };
        self.last_end = self.pos;
        Ok(Token { tok, start, end: self.pos })
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn string(&mut self, quote: char, start: usize) -> Result<Tok, ParseError> {
        let mut out = String::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None => return Err(self.err(ParseErrorKind::UnterminatedString, start)),
                Some(c) if c == quote => return Ok(Tok::Str(out)),
                Some('\\') => out.push(self.escape(at)?),
                Some(c) => out.push(c),
            }
        }
    }

    /// After a backslash at byte `at`.
    fn escape(&mut self, at: usize) -> Result<char, ParseError> {
        let c = match self.bump() {
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('0') => '\0',
            Some('\\') => '\\',
            Some('"') => '"',
            Some('\'') => '\'',
            Some('/') => '/',
            Some('u') if self.eat('{') => {
                let digits_at = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                    self.pos += 1;
                }
                let digits = self.src.get(digits_at..self.pos).unwrap_or_default();
                let ok = !digits.is_empty() && digits.len() <= 6 && self.eat('}');
                match u32::from_str_radix(digits, 16).ok().filter(|_| ok).and_then(char::from_u32) {
                    Some(c) => c,
                    None => return Err(self.bad_escape(at)),
                }
            }
            None => return Err(self.err(ParseErrorKind::UnterminatedString, at)),
            Some(_) => return Err(self.bad_escape(at)),
        };
        Ok(c)
    }

    fn bad_escape(&self, at: usize) -> ParseError {
        let escape =
            self.src.get(at..self.pos).unwrap_or_default().chars().take(QUOTE_MAX).collect();
        self.err(ParseErrorKind::InvalidEscape { escape }, at)
    }

    fn digits(&mut self) -> usize {
        let from = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - from
    }

    fn number(&mut self, start: usize) -> Result<Tok, ParseError> {
        let bad = |lx: &Self, reason, at| lx.err(ParseErrorKind::InvalidNumber { reason }, at);
        self.digits();
        let mut float = false;
        if self.peek() == Some('.') {
            let dot = self.pos;
            self.pos += 1;
            if self.digits() == 0 {
                return Err(bad(self, "expected a digit after the decimal point", dot));
            }
            float = true;
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let e = self.pos;
            self.pos += 1;
            if matches!(self.peek(), Some('+' | '-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(bad(self, "expected digits in the exponent", e));
            }
            float = true;
        }
        if self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(bad(self, "a number must not run into letters, digits or '.'", self.pos));
        }
        let text = self.src.get(start..self.pos).unwrap_or_default();
        if float {
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Tok::Float(f)),
                _ => Err(bad(self, "float literal is out of range", start)),
            }
        } else {
            match text.parse::<u64>() {
                Ok(i) => Ok(Tok::Int(i)),
                Err(_) => Err(bad(self, "integer literal is too large", start)),
            }
        }
    }
}

impl Token {
    /// How a message names this token: its source text, quoted and truncated.
    pub fn describe(&self, src: &str) -> Option<String> {
        if self.tok == Tok::Eof {
            return None;
        }
        let text = src.get(self.start..self.end).unwrap_or_default();
        let mut short: String = text.chars().take(QUOTE_MAX).collect();
        if short.len() < text.len() {
            short.push('…');
        }
        Some(match self.tok {
            Tok::Str(_) => format!("string {short}"),
            Tok::Int(_) | Tok::Float(_) => format!("number {short}"),
            _ => format!("'{short}'"),
        })
    }
}
