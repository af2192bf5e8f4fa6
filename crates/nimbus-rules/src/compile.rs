//! The compiled form: a flat array of nodes that refer to each other by index, with roots
//! resolved to slots, field names ready to look up, constant lists built once and regexes
//! compiled once.

use regex::Regex;

use crate::ast::{CompareOp, Expr, Function, Literal, Path, Segment};
use crate::env::Env;
use crate::parser::{Regexes, build_regex};

pub(crate) type NodeId = u32;

#[derive(Debug, Clone)]
pub(crate) enum Const {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
}

#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Key(Box<str>),
    Index(i64),
    /// An index computed at evaluation time: a string names a field, an integer a list element.
    Dyn(NodeId),
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Const(Const),
    /// A list literal whose elements are all literals: built once, borrowed by every evaluation.
    ConstList(Box<[Const]>),
    List(Box<[NodeId]>),
    Path {
        root: u8,
        segs: Box<[Seg]>,
    },
    Exists {
        root: u8,
        segs: Box<[Seg]>,
    },
    Not(NodeId),
    And(Box<[NodeId]>),
    Or(Box<[NodeId]>),
    Compare(CompareOp, NodeId, NodeId),
    Add(Box<[NodeId]>),
    Size(NodeId),
    StartsWith(NodeId, NodeId),
    EndsWith(NodeId, NodeId),
    Matches(NodeId, Box<Regex>),
    /// Evaluates to an error. Only produced for trees the parser would not have accepted.
    Fail,
}

/// A rule ready to evaluate: `nodes[root]` is the whole expression.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub(crate) nodes: Box<[Node]>,
    pub(crate) root: NodeId,
}

/// Compiles a tree that [`crate::parser::parse`] accepted against the same `env`; `regexes` are
/// the ones the parser compiled.
pub(crate) fn compile(expr: &Expr, env: &Env, regexes: Regexes) -> Program {
    let mut c = Compiler { nodes: Vec::new(), env, regexes };
    let root = c.node(expr);
    Program { nodes: c.nodes.into_boxed_slice(), root }
}

struct Compiler<'e> {
    nodes: Vec<Node>,
    env: &'e Env,
    regexes: Regexes,
}

fn constant(l: &Literal) -> Const {
    match l {
        Literal::Null => Const::Null,
        Literal::Bool(b) => Const::Bool(*b),
        Literal::Int(i) => Const::Int(*i),
        Literal::Float(x) => Const::Float(*x),
        Literal::String(s) => Const::Str(s.as_str().into()),
    }
}

impl Compiler<'_> {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        // A rule of at most MAX_SOURCE_LEN bytes has far fewer than 2^32 nodes.
        (self.nodes.len() - 1) as NodeId
    }

    fn all(&mut self, items: &[Expr]) -> Box<[NodeId]> {
        items.iter().map(|e| self.node(e)).collect()
    }

    fn node(&mut self, e: &Expr) -> NodeId {
        let node = match e {
            Expr::Literal(l) => Node::Const(constant(l)),
            Expr::List(items) => {
                let consts: Option<Box<[Const]>> = items
                    .iter()
                    .map(|e| if let Expr::Literal(l) = e { Some(constant(l)) } else { None })
                    .collect();
                match consts {
                    Some(consts) => Node::ConstList(consts),
                    None => Node::List(self.all(items)),
                }
            }
            Expr::Path(p) => match self.path(p) {
                Some((root, segs)) => Node::Path { root, segs },
                None => Node::Fail,
            },
            Expr::Not(a) => Node::Not(self.node(a)),
            Expr::And(items) => Node::And(self.all(items)),
            Expr::Or(items) => Node::Or(self.all(items)),
            Expr::Add(items) => Node::Add(self.all(items)),
            Expr::Compare(op, a, b) => Node::Compare(*op, self.node(a), self.node(b)),
            Expr::Call(f, args) => self.call(*f, args),
        };
        self.push(node)
    }

    fn call(&mut self, f: Function, args: &[Expr]) -> Node {
        match (f, args) {
            (Function::Size, [a]) => Node::Size(self.node(a)),
            (Function::StartsWith, [a, b]) => Node::StartsWith(self.node(a), self.node(b)),
            (Function::EndsWith, [a, b]) => Node::EndsWith(self.node(a), self.node(b)),
            (Function::Matches, [a, Expr::Literal(Literal::String(pattern))]) => {
                // Cloning a Regex shares its compiled program.
                let cached =
                    self.regexes.iter().find(|(p, _)| p == pattern).map(|(_, r)| r.clone());
                let regex = match cached {
                    Some(r) => Ok(r),
                    None => build_regex(pattern),
                };
                match regex {
                    Ok(regex) => Node::Matches(self.node(a), Box::new(regex)),
                    Err(_) => Node::Fail,
                }
            }
            (Function::Exists, [Expr::Path(p)]) => match self.path(p) {
                Some((root, segs)) => Node::Exists { root, segs },
                None => Node::Fail,
            },
            _ => Node::Fail,
        }
    }

    fn path(&mut self, p: &Path) -> Option<(u8, Box<[Seg]>)> {
        let root = u8::try_from(self.env.slot(&p.root)?).ok()?;
        let segs = p
            .segments
            .iter()
            .map(|s| match s {
                Segment::Field(name) => Seg::Key(name.as_str().into()),
                Segment::Index(Expr::Literal(Literal::Int(i))) => Seg::Index(*i),
                Segment::Index(e) => Seg::Dyn(self.node(e)),
            })
            .collect();
        Some((root, segs))
    }
}
