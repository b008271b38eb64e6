//! Compiler for the PowerDNS LUA-record subset: body text to a typed rule, at config load.
//!
//! A body is parsed as one Lua expression (PowerDNS prepends `return `) made of calls, string and
//! number literals, table constructors, booleans, `and`/`or`/`not` and `..`; a body starting
//! with ';' is a statement block (return, if/elseif/else, assignments of literals, include()).
//! Anything else names itself in a config error. Variables are substituted at compile time and
//! `if`s become a decision tree ([`Rule::Branch`] on typed [`Cond`]s over the client's GeoIP
//! codes, ASN and address). Leaves hold answers already as RDATA wire bytes, so evaluating a
//! rule per query walks the tree and copies bytes, never parses or interprets.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use std::collections::HashMap;

use crate::config::{ProbeDefaults, RecordType};
use crate::steer::geo::{Code, UNKNOWN, code};
use crate::steer::hash;
use crate::steer::probes::{Check, CheckOptions, ProbeSpec};

/// An answer value in RDATA wire format.
pub(crate) type Rdata = Box<[u8]>;

/// PowerDNS's default probe User-Agent, kept so targets' allow-lists keep working.
pub(crate) const DEFAULT_USER_AGENT: &str = "PowerDNS Authoritative Server";

const SUPPORTED: &str = "ifurlup, ifportup, ifurlextup, pickrandom, pickrandomsample, pickhashed, \
    pickwhashed, pickwrandom, pickchashed, pickclosest, all, view, createReverse, createReverse6, \
    createForward, createForward6, filterForward, picknamehashed, pickselfweighted, closestMagic, latlonMagic";

/// Tables nested deeper than this are refused (bodies from zone transfers are untrusted).
const MAX_DEPTH: usize = 16;
/// Operands of one `and`, `or` or `..` chain (the tree is walked recursively).
const MAX_CHAIN: usize = 64;
/// Ring points `pickchashed` may create (sum of weights): bounds memory per record.
const MAX_CHASHED_POINTS: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum LuaError {
    /// The text is not Lua we can read; `col` is 1-based, in characters of the body.
    #[error("syntax error at column {col} of the lua body: {message}")]
    Syntax { col: usize, message: String },
    /// Valid Lua, or PowerDNS, outside the subset dnsteer answers in-process.
    #[error("{0}")]
    Unsupported(String),
    /// Inside the subset, but a value or argument is wrong.
    #[error("{0}")]
    Invalid(String),
}

impl LuaError {
    #[cfg(test)]
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            LuaError::Syntax { .. } => "syntax",
            LuaError::Unsupported(_) => "unsupported",
            LuaError::Invalid(_) => "invalid",
        }
    }
}

fn invalid<T>(message: impl Into<String>) -> Result<T, LuaError> {
    Err(LuaError::Invalid(message.into()))
}

fn unsupported<T>(message: impl Into<String>) -> Result<T, LuaError> {
    Err(LuaError::Unsupported(message.into()))
}

// ---------------------------------------------------------------------------------------------
// Compiled rules
// ---------------------------------------------------------------------------------------------

/// How `ifurlup`/`ifportup`/`ifurlextup` choose among candidates (`selector`, `backupSelector`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selector {
    Random,
    Hashed,
    PickClosest,
    All,
    /// Nothing: NODATA (PowerDNS 5.1 `empty`).
    Empty,
    /// dnsteer extension: the first eligible address in written order.
    PickFirst,
}

impl Selector {
    fn parse(s: &str) -> Option<Selector> {
        Some(match s {
            "random" => Selector::Random,
            "hashed" => Selector::Hashed,
            "pickclosest" => Selector::PickClosest,
            "all" => Selector::All,
            "empty" => Selector::Empty,
            "pickfirst" => Selector::PickFirst,
            _ => return None,
        })
    }
}

/// One health-checked address.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub addr: IpAddr,
    pub probe: ProbeSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IfUp {
    /// Candidates in written order, group after group.
    pub(crate) candidates: Vec<Candidate>,
    /// Start index in `candidates` of each group, ascending; the first is 0.
    pub(crate) group_starts: Vec<usize>,
    pub(crate) selector: Selector,
    pub(crate) backup: Selector,
    /// SERVFAIL while no candidate has completed a probe.
    pub(crate) fail_on_incomplete: bool,
}

/// Weighted values in the order PowerDNS walks them, with running weight sums.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Weighted {
    /// (running sum including this entry, value); the last sum is the total (> 0).
    pub(crate) entries: Vec<(u64, Rdata)>,
}

impl Weighted {
    pub(crate) fn total(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.0)
    }
}

/// `pickchashed` ring: points sorted by hash, each naming a value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ring {
    pub(crate) points: Vec<(u32, u32)>,
    pub(crate) values: Vec<Rdata>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ViewRule {
    pub nets: Vec<IpNet>,
    pub(crate) values: Vec<Rdata>,
}

/// A client attribute from the City database that conditions and values read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GeoField {
    Country,
    Continent,
    Region,
}

/// A condition of a statement block, on the client (`bestwho`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cond {
    Const(bool),
    Not(Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    /// `country(…)`, `continent(…)`, `region(…)`: the client's code is one of these
    /// (lower-case; [`UNKNOWN`] matches an unknown client, as PowerDNS's "unknown" does).
    Geo(GeoField, Vec<Code>),
    /// `asnum(…)`: the client's autonomous system number is one of these.
    Asn(Vec<u32>),
    /// `netmask({…})`: the client is inside one of these.
    Netmask(Vec<IpNet>),
}

/// Part of a string built per query (`continentCode()..'.pool.example.'`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    Lit(Box<[u8]>),
    /// The lower-case code, `--` when unknown.
    Code(GeoField),
    /// `latlon()`: `"%f %f"`, `0.000000 0.000000` when unknown.
    LatLon,
    /// `latlonloc()`: LOC-style text.
    LatLonLoc,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Branch {
    pub(crate) cond: Cond,
    pub(crate) then: Rule,
    pub(crate) other: Rule,
}

/// A literal as `==` compares it (Lua: values of different types are never equal).
#[derive(Debug, PartialEq)]
enum Lit {
    Str(Vec<u8>),
    Num(f64),
    Bool(bool),
    Nil,
}

/// What `==` and `~=` compile, for error messages.
const COMPARISONS: &str = "== and ~= compare countryCode(), continentCode() or regionCode() with a string, or two literals";

/// Match values to codes: lower-case, at most 4 bytes (longer ones can never match).
fn codes(texts: Vec<Vec<u8>>) -> Vec<Code> {
    texts
        .into_iter()
        .filter_map(|t| {
            let t = t.to_ascii_lowercase();
            if t == b"unknown" {
                return Some(UNKNOWN);
            }
            code(&t)
        })
        .collect()
}

/// A compiled record body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rule {
    /// A literal (or `content`): the same values for everyone; empty means NODATA.
    Static(Vec<Rdata>),
    All(Vec<Rdata>),
    Random(Vec<Rdata>),
    /// `n < 0`: the whole list shuffled.
    RandomSample {
        n: i64,
        values: Vec<Rdata>,
    },
    Hashed(Vec<Rdata>),
    WeightedHashed(Weighted),
    WeightedRandom(Weighted),
    ConsistentHashed(Ring),
    Closest(Vec<IpAddr>),
    View(Vec<ViewRule>),
    IfUp(IfUp),
    /// A statement block's `if`: `then` when the condition holds for the client, else `other`.
    Branch(Box<Branch>),
    /// A string joined per query from literals and geo values, then read as the record type.
    Text(Vec<Piece>),
    /// Where PowerDNS raises (no value returned, a boolean or nil result): SERVFAIL.
    Fail,
    /// An answer computed from the query name (`steer::generate`).
    Generate(crate::steer::generate::Generator),
    /// `picknamehashed` (PowerDNS 4.9+): weighted by the hash of the query name.
    NameHashed(Weighted),
    /// `pickselfweighted` (PowerDNS 5.0+): candidates weighted by their probe's body.
    SelfWeighted(Vec<Candidate>),
    /// `closestMagic()`: the address among the query name's leading labels
    /// ([`crate::steer::generate::magic_addresses`]) nearest to the client.
    ClosestMagic,
    /// `latlonMagic()`: `"%f %f"` of the address the query name spells
    /// ([`crate::steer::generate::latlon_magic_address`]).
    LatLonMagic,
}

impl Rule {
    /// Probes this rule needs, with duplicates.
    pub(crate) fn probes(&self) -> Vec<&ProbeSpec> {
        let mut out = Vec::new();
        self.visit(&mut |r| {
            let cands: &[Candidate] = match r {
                Rule::IfUp(u) => &u.candidates,
                Rule::SelfWeighted(c) => c,
                _ => &[],
            };
            out.extend(cands.iter().map(|c| &c.probe));
        });
        out
    }

    /// Calls `f` on this rule and every leaf and branch below it.
    pub(crate) fn visit<'r>(&'r self, f: &mut dyn FnMut(&'r Rule)) {
        f(self);
        if let Rule::Branch(b) = self {
            b.then.visit(f);
            b.other.visit(f);
        }
    }

    /// Whether `f` holds for this rule or any condition below it.
    pub(crate) fn any_cond(&self, f: &dyn Fn(&Cond) -> bool) -> bool {
        fn walk(c: &Cond, f: &dyn Fn(&Cond) -> bool) -> bool {
            f(c) || match c {
                Cond::Not(a) => walk(a, f),
                Cond::And(a, b) | Cond::Or(a, b) => walk(a, f) || walk(b, f),
                _ => false,
            }
        }
        let mut found = false;
        self.visit(&mut |r| {
            if let Rule::Branch(b) = r {
                found |= walk(&b.cond, f);
            }
        });
        found
    }

    /// `if cond then then else other`, folding constant conditions and equal branches
    /// (conditions have no side effects).
    fn branch(cond: Cond, then: Rule, other: Rule) -> Rule {
        match cond {
            Cond::Const(true) => then,
            Cond::Const(false) => other,
            _ if then == other => then,
            cond => Rule::Branch(Box::new(Branch { cond, then, other })),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(Vec<u8>),
    Num(f64),
    Name(String),
    /// Punctuation the grammar uses: ( ) { } [ ] , ; =
    Punct(char),
    /// Lua operators and other symbols outside the subset, kept to name them in errors.
    Op(&'static str),
    Eof,
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

const OPERATORS: [&str; 22] = [
    "...", "..", "==", "~=", "<=", ">=", "<<", ">>", "//", "::", "+", "-", "*", "/", "%", "^", "#",
    "<", ">", ":", ".", "~",
];

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Lexer { src, pos: 0 }
    }

    fn col(&self, pos: usize) -> usize {
        self.src.get(..pos).map_or(pos, |s| s.chars().count()) + 1
    }

    fn err<T>(&self, pos: usize, message: impl Into<String>) -> Result<T, LuaError> {
        Err(LuaError::Syntax {
            col: self.col(pos),
            message: message.into(),
        })
    }

    fn rest(&self) -> &'a [u8] {
        &self.src.as_bytes()[self.pos..]
    }

    fn skip_space_and_comments(&mut self) -> Result<(), LuaError> {
        loop {
            let rest = self.rest();
            match rest.first() {
                Some(c) if c.is_ascii_whitespace() => self.pos += 1,
                Some(b'-') if rest.get(1) == Some(&b'-') => {
                    let start = self.pos;
                    self.pos += 2;
                    if let Some(level) = long_bracket_level(self.rest()) {
                        self.long_bracket(level, start)?;
                    } else {
                        let nl = self.rest().iter().position(|&c| c == b'\n');
                        self.pos = nl.map_or(self.src.len(), |n| self.pos + n);
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Reads `[==[ ... ]==]` at the cursor; returns the content.
    fn long_bracket(&mut self, level: usize, start: usize) -> Result<Vec<u8>, LuaError> {
        self.pos += level + 2;
        let close = format!("]{}]", "=".repeat(level));
        let Some(end) = self.src[self.pos..].find(&close) else {
            return self.err(start, "unfinished long string or comment");
        };
        let mut body = &self.src[self.pos..self.pos + end];
        // Lua drops a newline right after the opening bracket.
        if let Some(b) = body.strip_prefix('\n') {
            body = b;
        }
        self.pos += end + close.len();
        Ok(body.as_bytes().to_vec())
    }

    /// Next token and its byte offset.
    fn next(&mut self) -> Result<(Tok, usize), LuaError> {
        self.skip_space_and_comments()?;
        let start = self.pos;
        let rest = self.rest();
        let Some(&c) = rest.first() else {
            return Ok((Tok::Eof, start));
        };
        if c == b'\'' {
            return Ok((Tok::Str(self.quoted()?), start));
        }
        if c == b'['
            && let Some(level) = long_bracket_level(rest)
        {
            return Ok((Tok::Str(self.long_bracket(level, start)?), start));
        }
        if c.is_ascii_digit() || (c == b'.' && rest.get(1).is_some_and(u8::is_ascii_digit)) {
            return Ok((Tok::Num(self.number()?), start));
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let len = rest
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                .unwrap_or(rest.len());
            self.pos += len;
            return Ok((Tok::Name(self.src[start..self.pos].to_string()), start));
        }
        if b"(){}[],;=".contains(&c) && !rest.starts_with(b"==") {
            self.pos += 1;
            return Ok((Tok::Punct(c as char), start));
        }
        for op in OPERATORS {
            if rest.starts_with(op.as_bytes()) {
                self.pos += op.len();
                return Ok((Tok::Op(op), start));
            }
        }
        let ch = self.src[start..].chars().next().unwrap_or('?');
        self.err(start, format!("unexpected character '{ch}'"))
    }

    fn quoted(&mut self) -> Result<Vec<u8>, LuaError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let rest = self.rest();
            let Some(&c) = rest.first() else {
                return self.err(start, "unfinished string");
            };
            match c {
                b'\'' => {
                    self.pos += 1;
                    return Ok(out);
                }
                b'\n' => return self.err(start, "unfinished string"),
                b'\\' => {
                    let Some(&e) = rest.get(1) else {
                        return self.err(start, "unfinished string");
                    };
                    self.pos += 2;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'a' => out.push(0x07),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'v' => out.push(0x0b),
                        b'\\' | b'\'' | b'"' | b'\n' => out.push(e),
                        b'x' => {
                            let hex = self.rest().get(..2).and_then(|h| {
                                u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
                            });
                            let Some(v) = hex else {
                                return self.err(self.pos - 2, "\\x needs two hex digits");
                            };
                            out.push(v);
                            self.pos += 2;
                        }
                        b'0'..=b'9' => {
                            let digits = self.src.as_bytes()[self.pos - 1..]
                                .iter()
                                .take(3)
                                .take_while(|d| d.is_ascii_digit())
                                .count();
                            let text = &self.src[self.pos - 1..self.pos - 1 + digits];
                            match text.parse::<u8>() {
                                Ok(v) => out.push(v),
                                Err(_) => {
                                    return self.err(self.pos - 2, "decimal escape too large");
                                }
                            }
                            self.pos += digits - 1;
                        }
                        _ => {
                            return self
                                .err(self.pos - 2, format!("invalid escape '\\{}'", e as char));
                        }
                    }
                }
                _ => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn number(&mut self) -> Result<f64, LuaError> {
        let start = self.pos;
        let rest = self.rest();
        if rest.starts_with(b"0x") || rest.starts_with(b"0X") {
            let len = rest[2..]
                .iter()
                .take_while(|b| b.is_ascii_hexdigit())
                .count();
            self.pos += 2 + len;
            return match u64::from_str_radix(&self.src[start + 2..self.pos], 16) {
                Ok(v) => Ok(v as f64),
                Err(_) => self.err(start, "malformed number"),
            };
        }
        let mut len = 0;
        while let Some(&b) = rest.get(len) {
            let exp_sign = (b == b'+' || b == b'-') && matches!(rest[len - 1], b'e' | b'E');
            if b.is_ascii_alphanumeric() || b == b'.' || exp_sign {
                len += 1;
            } else {
                break;
            }
        }
        self.pos += len;
        match self.src[start..self.pos].parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => self.err(
                start,
                format!("malformed number '{}'", &self.src[start..self.pos]),
            ),
        }
    }
}

/// `[[` → 0, `[==[` → 2; None when the bytes do not open a long bracket.
fn long_bracket_level(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'[') {
        return None;
    }
    let eq = s[1..].iter().take_while(|&&b| b == b'=').count();
    (s.get(1 + eq) == Some(&b'[')).then_some(eq)
}

// ---------------------------------------------------------------------------------------------
// Parser: tokens to a small statement and expression tree
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Str(Vec<u8>),
    Num(f64),
    Bool(bool),
    Nil,
    Table(Vec<Field>),
    Call {
        name: String,
        args: Vec<Expr>,
    },
    /// A name assigned earlier in the block (or by an included record).
    Var(String),
    /// `t.name`, `t['key']`, `t[1]` on a table variable.
    Index(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Concat(Box<Expr>, Box<Expr>),
    /// `a == b`, or `a ~= b` when the flag is set.
    Eq(Box<Expr>, Box<Expr>, bool),
}

#[derive(Debug, Clone, PartialEq)]
struct Field {
    key: Option<Key>,
    value: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Key {
    Name(String),
    Expr(Expr),
}

/// A statement of a block (body starting with ';', or an included record).
#[derive(Debug, Clone, PartialEq)]
enum Stmt {
    /// `return` without a value returns nil.
    Return(Option<Expr>),
    If {
        arms: Vec<(Expr, Vec<Stmt>)>,
        other: Option<Vec<Stmt>>,
    },
    /// `local x = v` (`local`) or `x = v`.
    Assign {
        name: String,
        value: Expr,
        local: bool,
    },
    /// Not Lua syntax: the end of a branch's block, restoring the locals it declared to what
    /// they were before (None: not a local then).
    EndScope(Vec<(String, Option<Expr>)>),
    /// `include('name')`.
    Include(Vec<u8>),
}

const KEYWORDS: [&str; 17] = [
    "and", "break", "do", "else", "elseif", "end", "for", "function", "goto", "if", "in", "local",
    "not", "or", "repeat", "return", "while",
];

/// Functions a condition or value may call besides the selection functions.
const GEO_FUNCTIONS: [&str; 10] = [
    "country",
    "continent",
    "region",
    "asnum",
    "netmask",
    "countryCode",
    "continentCode",
    "regionCode",
    "latlon",
    "latlonloc",
];

struct Parser<'a> {
    lex: Lexer<'a>,
    tok: Tok,
    at: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Result<Self, LuaError> {
        let mut lex = Lexer::new(src);
        let (tok, at) = lex.next()?;
        Ok(Parser {
            lex,
            tok,
            at,
            depth: 0,
        })
    }

    fn bump(&mut self) -> Result<Tok, LuaError> {
        let (tok, at) = self.lex.next()?;
        self.at = at;
        Ok(std::mem::replace(&mut self.tok, tok))
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, LuaError> {
        self.lex.err(self.at, message)
    }

    fn expect(&mut self, c: char) -> Result<(), LuaError> {
        if self.tok == Tok::Punct(c) {
            self.bump()?;
            Ok(())
        } else {
            self.err(format!("expected '{c}', found {}", describe(&self.tok)))
        }
    }

    fn is_keyword(&self, k: &str) -> bool {
        matches!(&self.tok, Tok::Name(n) if n == k)
    }

    fn expect_keyword(&mut self, k: &str) -> Result<(), LuaError> {
        if self.is_keyword(k) {
            self.bump()?;
            Ok(())
        } else {
            self.err(format!("expected '{k}', found {}", describe(&self.tok)))
        }
    }

    /// The whole body: one expression, then the end.
    fn body(&mut self) -> Result<Expr, LuaError> {
        let e = self.expr()?;
        match &self.tok {
            Tok::Eof => Ok(e),
            other => self.err(format!(
                "unexpected {} after the expression",
                describe(other)
            )),
        }
    }

    /// A whole statement block, up to the end of the text.
    fn chunk(&mut self) -> Result<Vec<Stmt>, LuaError> {
        let stmts = self.block()?;
        match &self.tok {
            Tok::Eof => Ok(stmts),
            other => self.err(format!("unexpected {}", describe(other))),
        }
    }

    /// Statements up to `end`, `else`, `elseif` or the end of the text (not consumed).
    fn block(&mut self) -> Result<Vec<Stmt>, LuaError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let mut out = Vec::new();
        loop {
            match &self.tok {
                Tok::Punct(';') => {
                    self.bump()?;
                }
                Tok::Eof => break,
                Tok::Name(n) if matches!(n.as_str(), "end" | "else" | "elseif") => break,
                _ => {
                    let s = self.statement()?;
                    let last = matches!(s, Stmt::Return(_));
                    out.push(s);
                    if last {
                        // Lua: `return` ends its block.
                        if self.tok == Tok::Punct(';') {
                            self.bump()?;
                        }
                        match &self.tok {
                            Tok::Eof => break,
                            Tok::Name(n) if matches!(n.as_str(), "end" | "else" | "elseif") => {
                                break;
                            }
                            other => {
                                return self.err(format!(
                                    "unexpected {} after 'return' (it must end its block)",
                                    describe(other)
                                ));
                            }
                        }
                    }
                }
            }
        }
        self.depth -= 1;
        Ok(out)
    }

    fn statement(&mut self) -> Result<Stmt, LuaError> {
        let name = match &self.tok {
            Tok::Name(n) => n.clone(),
            other => return self.err(format!("unexpected {} at a statement", describe(other))),
        };
        match name.as_str() {
            "return" => {
                self.bump()?;
                let ends = matches!(&self.tok, Tok::Eof | Tok::Punct(';'))
                    || matches!(&self.tok, Tok::Name(n) if matches!(n.as_str(), "end" | "else" | "elseif"));
                Ok(Stmt::Return(if ends { None } else { Some(self.expr()?) }))
            }
            "if" => {
                self.bump()?;
                let mut arms = Vec::new();
                let cond = self.expr()?;
                self.expect_keyword("then")?;
                arms.push((cond, self.block()?));
                let mut other = None;
                loop {
                    if self.is_keyword("elseif") {
                        self.bump()?;
                        let cond = self.expr()?;
                        self.expect_keyword("then")?;
                        arms.push((cond, self.block()?));
                    } else if self.is_keyword("else") {
                        self.bump()?;
                        other = Some(self.block()?);
                        self.expect_keyword("end")?;
                        break;
                    } else {
                        self.expect_keyword("end")?;
                        break;
                    }
                }
                Ok(Stmt::If { arms, other })
            }
            "local" => {
                self.bump()?;
                let Tok::Name(var) = self.bump()? else {
                    return self.err("expected a name after 'local'");
                };
                if KEYWORDS.contains(&var.as_str()) {
                    return unsupported(format!("unsupported construct: 'local {var}'"));
                }
                if self.tok == Tok::Punct('=') {
                    self.bump()?;
                    let value = self.expr()?;
                    if self.tok == Tok::Punct(',') {
                        return unsupported("unsupported construct: multiple assignment");
                    }
                    Ok(Stmt::Assign {
                        name: var,
                        value,
                        local: true,
                    })
                } else if self.tok == Tok::Punct(',') {
                    unsupported("unsupported construct: multiple assignment")
                } else {
                    Ok(Stmt::Assign {
                        name: var,
                        value: Expr::Nil,
                        local: true,
                    })
                }
            }
            n if KEYWORDS.contains(&n) => unsupported(format!(
                "unsupported construct: '{n}' (blocks support return, if/elseif/else, assignments and include)"
            )),
            _ => {
                if self.peek_is_assign() {
                    self.bump()?;
                    self.expect('=')?;
                    let value = self.expr()?;
                    if self.tok == Tok::Punct(',') {
                        return unsupported("unsupported construct: multiple assignment");
                    }
                    return Ok(Stmt::Assign {
                        name,
                        value,
                        local: false,
                    });
                }
                match self.expr()? {
                    Expr::Call { name, args } if name == "include" => match args.as_slice() {
                        [Expr::Str(s)] => Ok(Stmt::Include(s.clone())),
                        _ => invalid("include() takes one string: the name of a LUA record"),
                    },
                    Expr::Call { name, .. } if !is_supported(&name) => unsupported_function(&name),
                    _ => unsupported(format!(
                        "unsupported construct: a statement other than return, if, assignment or include ('{name}')"
                    )),
                }
            }
        }
    }

    fn expr(&mut self) -> Result<Expr, LuaError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let mut e = self.and_expr()?;
        let mut n = 0;
        while self.is_keyword("or") {
            n += 1;
            if n > MAX_CHAIN {
                return self.err(format!("more than {MAX_CHAIN} 'or' in a row"));
            }
            self.bump()?;
            e = Expr::Or(Box::new(e), Box::new(self.and_expr()?));
        }
        self.depth -= 1;
        // Arithmetic and comparisons are outside the subset: say which.
        if let Tok::Op(op) = &self.tok {
            return unsupported_operator(op);
        }
        Ok(e)
    }

    fn and_expr(&mut self) -> Result<Expr, LuaError> {
        let mut e = self.comparison()?;
        let mut n = 0;
        while self.is_keyword("and") {
            n += 1;
            if n > MAX_CHAIN {
                return self.err(format!("more than {MAX_CHAIN} 'and' in a row"));
            }
            self.bump()?;
            e = Expr::And(Box::new(e), Box::new(self.comparison()?));
        }
        Ok(e)
    }

    /// `a == b` and `a ~= b` (left-associative, as in Lua); the ordering comparisons are
    /// refused by name.
    fn comparison(&mut self) -> Result<Expr, LuaError> {
        let mut e = self.concat()?;
        let mut n = 0;
        loop {
            let ne = match self.tok {
                Tok::Op("==") => false,
                Tok::Op("~=") => true,
                Tok::Op(op @ ("<" | ">" | "<=" | ">=")) => {
                    return unsupported(format!(
                        "unsupported construct: operator '{op}' (comparisons are limited to == and ~=)"
                    ));
                }
                _ => return Ok(e),
            };
            n += 1;
            if n > MAX_CHAIN {
                return self.err(format!("more than {MAX_CHAIN} comparisons in a row"));
            }
            self.bump()?;
            e = Expr::Eq(Box::new(e), Box::new(self.concat()?), ne);
        }
    }

    /// `a .. b .. c`, right-associative as in Lua.
    fn concat(&mut self) -> Result<Expr, LuaError> {
        let mut operands = vec![self.unary()?];
        while self.tok == Tok::Op("..") {
            if operands.len() > MAX_CHAIN {
                return self.err(format!("more than {MAX_CHAIN} '..' in a row"));
            }
            self.bump()?;
            operands.push(self.unary()?);
        }
        let mut e = operands.pop().unwrap_or(Expr::Nil);
        while let Some(left) = operands.pop() {
            e = Expr::Concat(Box::new(left), Box::new(e));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, LuaError> {
        if self.is_keyword("not") {
            self.bump()?;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return self.err(format!("nested deeper than {MAX_DEPTH} levels"));
            }
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, LuaError> {
        match self.bump()? {
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Num(n) => Ok(Expr::Num(n)),
            Tok::Op("-") => match self.bump()? {
                Tok::Num(n) => Ok(Expr::Num(-n)),
                _ => unsupported_operator("-"),
            },
            Tok::Op(op) => unsupported_operator(op),
            Tok::Punct('{') => self.table(),
            Tok::Punct('(') => {
                let e = self.expr()?;
                self.expect(')')?;
                Ok(e)
            }
            Tok::Name(name) => self.named(name),
            Tok::Eof => self.err("empty expression"),
            other => self.err(format!("unexpected {}", describe(&other))),
        }
    }

    fn named(&mut self, name: String) -> Result<Expr, LuaError> {
        match name.as_str() {
            "true" => return Ok(Expr::Bool(true)),
            "false" => return Ok(Expr::Bool(false)),
            "nil" => return Ok(Expr::Nil),
            "function" => {
                return unsupported("unsupported construct: function definition");
            }
            n if KEYWORDS.contains(&n) => {
                return unsupported(format!(
                    "unsupported construct: '{n}' (statements need a body starting with ';')"
                ));
            }
            _ => {}
        }
        match &self.tok {
            Tok::Punct('(') => {
                self.bump()?;
                let mut args = Vec::new();
                if self.tok != Tok::Punct(')') {
                    loop {
                        args.push(self.expr()?);
                        if self.tok == Tok::Punct(',') {
                            self.bump()?;
                        } else {
                            break;
                        }
                    }
                }
                self.expect(')')?;
                Ok(Expr::Call { name, args })
            }
            // Lua's call sugar: f{...} and f'...'.
            Tok::Punct('{') => {
                self.bump()?;
                let t = self.table()?;
                Ok(Expr::Call {
                    name,
                    args: vec![t],
                })
            }
            Tok::Str(_) => {
                let Tok::Str(s) = self.bump()? else {
                    return self.err("internal: token changed under the parser");
                };
                Ok(Expr::Call {
                    name,
                    args: vec![Expr::Str(s)],
                })
            }
            Tok::Op(":") => unsupported(format!("unsupported construct: method call on '{name}'")),
            Tok::Op(".") | Tok::Punct('[') => {
                let mut e = Expr::Var(name);
                loop {
                    match &self.tok {
                        Tok::Op(".") => {
                            self.bump()?;
                            let Tok::Name(field) = self.bump()? else {
                                return self.err("expected a field name after '.'");
                            };
                            e = Expr::Index(Box::new(e), Box::new(Expr::Str(field.into_bytes())));
                        }
                        Tok::Punct('[') => {
                            self.bump()?;
                            let key = self.expr()?;
                            self.expect(']')?;
                            e = Expr::Index(Box::new(e), Box::new(key));
                        }
                        Tok::Op(":") | Tok::Punct('(') => {
                            return unsupported(
                                "unsupported construct: method or function call on a table field",
                            );
                        }
                        _ => return Ok(e),
                    }
                }
            }
            _ => Ok(Expr::Var(name)),
        }
    }

    /// After the opening `{`.
    fn table(&mut self) -> Result<Expr, LuaError> {
        let mut fields = Vec::new();
        loop {
            if self.tok == Tok::Punct('}') {
                self.bump()?;
                return Ok(Expr::Table(fields));
            }
            let field = match &self.tok {
                Tok::Punct('[') => {
                    self.bump()?;
                    let key = self.expr()?;
                    self.expect(']')?;
                    self.expect('=')?;
                    Field {
                        key: Some(Key::Expr(key)),
                        value: self.expr()?,
                    }
                }
                Tok::Name(n) if !KEYWORDS.contains(&n.as_str()) && self.peek_is_assign() => {
                    let Tok::Name(n) = self.bump()? else {
                        return self.err("internal: token changed under the parser");
                    };
                    self.expect('=')?;
                    Field {
                        key: Some(Key::Name(n)),
                        value: self.expr()?,
                    }
                }
                _ => Field {
                    key: None,
                    value: self.expr()?,
                },
            };
            fields.push(field);
            match self.tok {
                Tok::Punct(',' | ';') => {
                    self.bump()?;
                }
                Tok::Punct('}') => {}
                _ => {
                    return self.err(format!(
                        "expected ',' or '}}' in table, found {}",
                        describe(&self.tok)
                    ));
                }
            }
        }
    }

    /// Whether the token after the current name is a single `=`.
    fn peek_is_assign(&self) -> bool {
        let mut lex = Lexer {
            src: self.lex.src,
            pos: self.lex.pos,
        };
        matches!(lex.next(), Ok((Tok::Punct('='), _)))
    }
}

fn is_supported(name: &str) -> bool {
    SUPPORTED.split(", ").any(|f| f.trim() == name)
}

fn unsupported_function<T>(name: &str) -> Result<T, LuaError> {
    if name == "pickfirst" {
        return unsupported(format!(
            "unsupported function 'pickfirst' (no PowerDNS version has it; write ifurlup(url, addrs, {{selector='pickfirst'}}) or groups {{{{'primary'}},{{'backup'}}}}; supported: {SUPPORTED})"
        ));
    }
    unsupported(format!(
        "unsupported function '{name}' (supported: {SUPPORTED})"
    ))
}

fn unsupported_operator<T>(op: &str) -> Result<T, LuaError> {
    unsupported(format!(
        "unsupported construct: operator '{op}' (only calls, literals, '..', and/or/not, and == or ~= on geo codes and literals are supported)"
    ))
}

/// `name()` takes `min` to `max` arguments.
fn arity(name: &str, args: &[Expr], min: usize, max: usize) -> Result<(), LuaError> {
    if args.len() < min || args.len() > max {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return invalid(format!(
            "{name}() takes {want} argument(s), got {}",
            args.len()
        ));
    }
    Ok(())
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Str(_) => "a string".into(),
        Tok::Num(_) => "a number".into(),
        Tok::Name(n) => format!("'{n}'"),
        Tok::Punct(c) => format!("'{c}'"),
        Tok::Op(o) => format!("'{o}'"),
        Tok::Eof => "the end of the body".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Compiler: expression tree to Rule
// ---------------------------------------------------------------------------------------------

/// Compiles a LUA record body (the text inside `LUA <TYPE> "..."`, verbatim) for `rtype`.
/// `defaults` give probe settings the body does not set.
#[cfg(test)]
pub(crate) fn compile(
    body: &str,
    rtype: RecordType,
    defaults: &ProbeDefaults,
) -> Result<Rule, LuaError> {
    compile_with_includes(body, rtype, defaults, &|_| None)
}

/// Code of the LUA-type records at the name given to `include()`, as the caller resolves it
/// (relative to the zone); None when there is no such record.
pub(crate) type Includes<'a> = dyn Fn(&str) -> Option<Vec<String>> + 'a;

/// As [`compile`]; `include` finds the records `include('name')` runs.
pub(crate) fn compile_with_includes(
    body: &str,
    rtype: RecordType,
    defaults: &ProbeDefaults,
    include: &Includes<'_>,
) -> Result<Rule, LuaError> {
    // PowerDNS splits record text on every `"`: such a body never reaches Lua intact.
    if let Some(i) = body.find('"') {
        return unsupported(format!(
            "a double quote at column {} cannot be used: PowerDNS splits LUA record text on '\"'; use single quotes",
            body[..i].chars().count() + 1
        ));
    }
    let c = Compiler { rtype, defaults };
    // PowerDNS runs a body whose first character is ';' as a statement block (the ';'
    // dropped); any other body gets `return ` prepended.
    if let Some(rest) = body.strip_prefix(';') {
        let stmts = Parser::new(rest)?.chunk()?;
        let mut b = Block {
            c: &c,
            include,
            nodes: 0,
        };
        let rule = b.stmts(&stmts, &Env::default(), 0)?;
        if rule == Rule::Fail {
            return invalid(
                "the statement block never returns a value (PowerDNS answers SERVFAIL); end it with 'return …'",
            );
        }
        return Ok(rule);
    }
    let expr = Parser::new(body)?.body()?;
    let expr = resolve(&expr, &Env::default())?;
    c.result(&expr, true)
}

/// Names assigned so far, with their (resolved) values. Locals shadow globals; included code
/// assigns globals.
#[derive(Debug, Clone, Default)]
struct Env {
    locals: HashMap<String, Expr>,
    globals: HashMap<String, Expr>,
}

impl Env {
    fn get(&self, name: &str) -> Option<&Expr> {
        self.locals.get(name).or_else(|| self.globals.get(name))
    }
}

/// Decision-tree nodes one record may compile to (sequential `if`s without `return` copy the
/// statements after them into each branch).
const MAX_NODES: usize = 4096;

/// `include()` inside included code, at most this deep.
const MAX_INCLUDE_DEPTH: usize = 4;

/// Compiles a statement block to a decision tree: conditions become [`Cond`]s, every path ends
/// in a [`Rule`] leaf (or [`Rule::Fail`] where PowerDNS raises).
struct Block<'c, 'i> {
    c: &'c Compiler<'c>,
    include: &'i Includes<'i>,
    nodes: usize,
}

impl Block<'_, '_> {
    fn stmts(&mut self, s: &[Stmt], env: &Env, depth: usize) -> Result<Rule, LuaError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES || depth > MAX_DEPTH * 4 {
            return invalid(format!(
                "the statement block has more than {MAX_NODES} paths; simplify it"
            ));
        }
        let mut env = env.clone();
        for (i, st) in s.iter().enumerate() {
            match st {
                Stmt::Assign { name, value, local } => assign(&mut env, name, value, *local)?,
                Stmt::EndScope(saved) => {
                    for (name, before) in saved {
                        match before {
                            Some(v) => env.locals.insert(name.clone(), v.clone()),
                            None => env.locals.remove(name),
                        };
                    }
                }
                Stmt::Include(name) => self.include(name, &mut env, 0)?,
                // `return` alone gives nil: not a valid result.
                Stmt::Return(None) => return Ok(Rule::Fail),
                Stmt::Return(Some(e)) => return self.c.result(&resolve(e, &env)?, false),
                Stmt::If { arms, other } => {
                    let rest = &s[i + 1..];
                    // A branch's block, then the statements after the `if`; locals the block
                    // declared end with it.
                    let path = |body: &[Stmt]| {
                        let saved = body
                            .iter()
                            .filter_map(|st| match st {
                                Stmt::Assign {
                                    name, local: true, ..
                                } => Some((name.clone(), env.locals.get(name).cloned())),
                                _ => None,
                            })
                            .collect();
                        [body, &[Stmt::EndScope(saved)], rest].concat()
                    };
                    let mut tail = match other {
                        Some(b) => self.stmts(&path(b), &env, depth + 1)?,
                        None => self.stmts(rest, &env, depth + 1)?,
                    };
                    for (cond, body) in arms.iter().rev() {
                        let cond = self.c.cond(&resolve(cond, &env)?)?;
                        let then = self.stmts(&path(body), &env, depth + 1)?;
                        tail = Rule::branch(cond, then, tail);
                    }
                    return Ok(tail);
                }
            }
        }
        // Fell off the end: the chunk returns nothing, which PowerDNS cannot convert to a
        // record (SERVFAIL).
        Ok(Rule::Fail)
    }

    /// Runs the included records' code: assignments (and further includes) only.
    fn include(&mut self, name: &[u8], env: &mut Env, depth: usize) -> Result<(), LuaError> {
        let name = String::from_utf8_lossy(name).into_owned();
        if depth >= MAX_INCLUDE_DEPTH {
            return invalid(format!(
                "include('{name}') nests includes deeper than {MAX_INCLUDE_DEPTH}"
            ));
        }
        let Some(codes) = (self.include)(&name) else {
            return invalid(format!(
                "include('{name}'): no LUA record of type LUA at '{name}' in this zone"
            ));
        };
        for code in codes {
            // Included code runs as written (no `return ` prepended, no ';' dropped).
            let stmts = Parser::new(&code)
                .and_then(|mut p| p.chunk())
                .map_err(|e| LuaError::Invalid(format!("include('{name}'): {e}")))?;
            // Included code runs as its own chunk: it sees only globals, and its locals end
            // with it.
            let caller_locals = std::mem::take(&mut env.locals);
            let result = stmts.iter().try_for_each(|st| match st {
                Stmt::Assign {
                    name: var,
                    value,
                    local,
                } => assign(env, var, value, *local),
                Stmt::Include(inner) => self.include(inner, env, depth + 1),
                _ => unsupported(format!(
                    "include('{name}'): included code may only assign values (name = value)"
                )),
            });
            env.locals = caller_locals;
            result?;
        }
        Ok(())
    }
}

/// `name = value`: the value is resolved now, so later statements see what it was then. A plain
/// assignment to a name that is a local in scope sets the local, else the global.
fn assign(env: &mut Env, name: &str, value: &Expr, local: bool) -> Result<(), LuaError> {
    let v = resolve(value, env)?;
    if !pure(&v) {
        return unsupported(format!(
            "unsupported construct: '{name}' is assigned a function result; assign literals, tables and geo functions only"
        ));
    }
    if local || env.locals.contains_key(name) {
        env.locals.insert(name.to_string(), v);
    } else {
        env.globals.insert(name.to_string(), v);
    }
    Ok(())
}

/// Whether evaluating `e` twice gives the same as once (no random or health-checked choice).
fn pure(e: &Expr) -> bool {
    match e {
        Expr::Str(_) | Expr::Num(_) | Expr::Bool(_) | Expr::Nil | Expr::Var(_) => true,
        Expr::Table(fields) => fields.iter().all(|f| {
            pure(&f.value)
                && match &f.key {
                    Some(Key::Expr(k)) => pure(k),
                    _ => true,
                }
        }),
        Expr::Call { name, args } => {
            GEO_FUNCTIONS.contains(&name.as_str()) && args.iter().all(pure)
        }
        Expr::Index(a, b)
        | Expr::And(a, b)
        | Expr::Or(a, b)
        | Expr::Concat(a, b)
        | Expr::Eq(a, b, _) => pure(a) && pure(b),
        Expr::Not(a) => pure(a),
    }
}

/// `e` with every variable and table index replaced by its value.
fn resolve(e: &Expr, env: &Env) -> Result<Expr, LuaError> {
    let r = |x: &Expr| resolve(x, env).map(Box::new);
    Ok(match e {
        Expr::Str(_) | Expr::Num(_) | Expr::Bool(_) | Expr::Nil => e.clone(),
        Expr::Var(name) => match env.get(name) {
            Some(v) => v.clone(),
            None => {
                return unsupported(format!(
                    "unsupported construct: variable '{name}' (only names assigned earlier in the block or by include() can be used)"
                ));
            }
        },
        Expr::Index(t, k) => {
            let (t, k) = (resolve(t, env)?, resolve(k, env)?);
            index(&t, &k)?
        }
        Expr::Table(fields) => Expr::Table(
            fields
                .iter()
                .map(|f| {
                    Ok(Field {
                        key: match &f.key {
                            Some(Key::Expr(k)) => Some(Key::Expr(resolve(k, env)?)),
                            other => other.clone(),
                        },
                        value: resolve(&f.value, env)?,
                    })
                })
                .collect::<Result<_, LuaError>>()?,
        ),
        Expr::Call { name, args } => Expr::Call {
            name: name.clone(),
            args: args
                .iter()
                .map(|a| resolve(a, env))
                .collect::<Result<_, _>>()?,
        },
        Expr::Not(a) => Expr::Not(r(a)?),
        Expr::And(a, b) => Expr::And(r(a)?, r(b)?),
        Expr::Or(a, b) => Expr::Or(r(a)?, r(b)?),
        Expr::Concat(a, b) => Expr::Concat(r(a)?, r(b)?),
        Expr::Eq(a, b, ne) => {
            // Names PowerDNS sets per query (qname, who, bestwho…) are not values we know at
            // load: say that the comparison is what cannot be compiled.
            let side = |x: &Expr| {
                r(x).map_err(|e| match x {
                    Expr::Var(name) => LuaError::Unsupported(format!(
                        "unsupported construct: operator '{}' on '{name}' ({COMPARISONS})",
                        if *ne { "~=" } else { "==" }
                    )),
                    _ => e,
                })
            };
            Expr::Eq(side(a)?, side(b)?, *ne)
        }
    })
}

/// `t[k]` on a literal table, as Lua reads it: a missing field is nil.
fn index(t: &Expr, k: &Expr) -> Result<Expr, LuaError> {
    let Expr::Table(fields) = t else {
        return invalid(format!(
            "cannot index {} (only tables have fields)",
            what(t)
        ));
    };
    let found = match k {
        Expr::Num(n) if n.fract() == 0.0 && *n >= 1.0 => fields
            .iter()
            .filter(|f| f.key.is_none())
            .nth(*n as usize - 1)
            .or_else(|| {
                fields
                    .iter()
                    .find(|f| matches!(&f.key, Some(Key::Expr(Expr::Num(m))) if m == n))
            }),
        Expr::Str(s) => fields.iter().find(|f| match &f.key {
            Some(Key::Name(n)) => n.as_bytes() == s.as_slice(),
            Some(Key::Expr(Expr::Str(x))) => x == s,
            _ => false,
        }),
        _ => None,
    };
    Ok(found.map_or(Expr::Nil, |f| f.value.clone()))
}

struct Compiler<'a> {
    rtype: RecordType,
    defaults: &'a ProbeDefaults,
}

/// The Lua string a list element converts to (numbers use Lua's formatting).
fn as_text(e: &Expr) -> Option<Vec<u8>> {
    match e {
        Expr::Str(s) => Some(s.clone()),
        Expr::Num(n) => Some(lua_number(*n).into_bytes()),
        _ => None,
    }
}

/// Lua's `%.14g` rendering for the numbers a body may hold.
fn lua_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn what(e: &Expr) -> &'static str {
    match e {
        Expr::Str(_) => "a string",
        Expr::Num(_) => "a number",
        Expr::Bool(_) => "a boolean",
        Expr::Nil => "nil",
        Expr::Table(_) => "a table",
        Expr::Call { .. } => "a function call",
        Expr::Var(_) | Expr::Index(..) => "a variable",
        Expr::Not(_) | Expr::Eq(..) => "a boolean",
        Expr::And(..) | Expr::Or(..) => "a logical expression",
        Expr::Concat(..) => "a string",
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Compiler<'_> {
    /// The value a `return` (or an expression body) gives, as a rule. `top`: the whole body
    /// is this expression, so a value that is never a record is a config error rather than a
    /// SERVFAIL leaf.
    fn result(&self, e: &Expr, top: bool) -> Result<Rule, LuaError> {
        let not_a_record = || {
            if top {
                let kind = match e {
                    Expr::Call { .. } | Expr::Not(_) => "a boolean",
                    _ => what(e),
                };
                invalid(format!(
                    "the body evaluates to {kind}, which is not a valid {} result",
                    self.rtype.name()
                ))
            } else {
                Ok(Rule::Fail)
            }
        };
        match e {
            Expr::Bool(_) | Expr::Nil | Expr::Not(_) => not_a_record(),
            Expr::Eq(..) => {
                self.cond(e)?;
                not_a_record()
            }
            Expr::Call { name, args } => match name.as_str() {
                "country" | "continent" | "region" | "asnum" | "netmask" => {
                    self.cond(e)?;
                    not_a_record()
                }
                "countryCode" | "continentCode" | "regionCode" | "latlon" | "latlonloc" => {
                    self.text_rule(e)
                }
                "include" => unsupported(
                    "include() gives no value; call it as a statement in a block starting with ';'",
                ),
                _ => self.call(name, args),
            },
            Expr::Concat(..) => self.text_rule(e),
            // `a and b`: b when a is truthy, else a (false or nil: not a record).
            Expr::And(a, b) => Ok(Rule::branch(
                self.cond(a)?,
                self.result(b, false)?,
                Rule::Fail,
            )),
            // `a or b`: a when a is truthy, else b.
            Expr::Or(a, b) => Ok(Rule::branch(
                self.cond(a)?,
                self.result(a, false)?,
                self.result(b, false)?,
            )),
            _ => self.rule(e),
        }
    }

    /// `e` as a condition (Lua truthiness: everything but false and nil is true).
    fn cond(&self, e: &Expr) -> Result<Cond, LuaError> {
        Ok(match e {
            Expr::Bool(b) => Cond::Const(*b),
            Expr::Nil => Cond::Const(false),
            Expr::Str(_) | Expr::Num(_) | Expr::Table(_) => Cond::Const(true),
            Expr::Concat(..) => {
                self.pieces(e)?;
                Cond::Const(true)
            }
            Expr::Not(a) => match self.cond(a)? {
                Cond::Const(b) => Cond::Const(!b),
                c => Cond::Not(Box::new(c)),
            },
            Expr::Eq(a, b, ne) => match (self.equal(a, b, *ne)?, ne) {
                (Cond::Const(v), true) => Cond::Const(!v),
                (c, true) => Cond::Not(Box::new(c)),
                (c, false) => c,
            },
            // Conditions have no side effects, so constants fold from either side.
            Expr::And(a, b) => match (self.cond(a)?, self.cond(b)?) {
                (Cond::Const(false), _) | (_, Cond::Const(false)) => Cond::Const(false),
                (Cond::Const(true), c) | (c, Cond::Const(true)) => c,
                (c, d) => Cond::And(Box::new(c), Box::new(d)),
            },
            Expr::Or(a, b) => match (self.cond(a)?, self.cond(b)?) {
                (Cond::Const(true), _) | (_, Cond::Const(true)) => Cond::Const(true),
                (Cond::Const(false), c) | (c, Cond::Const(false)) => c,
                (c, d) => Cond::Or(Box::new(c), Box::new(d)),
            },
            Expr::Call { name, args } => {
                let one = || {
                    arity(name, args, 1, 1)?;
                    self.match_list(&args[0], name)
                };
                match name.as_str() {
                    "country" => Cond::Geo(GeoField::Country, codes(one()?)),
                    "continent" => Cond::Geo(GeoField::Continent, codes(one()?)),
                    "region" => Cond::Geo(GeoField::Region, codes(one()?)),
                    // PowerDNS compares the decimal text of the number, case-insensitively.
                    "asnum" => Cond::Asn(
                        one()?
                            .iter()
                            .filter_map(|t| {
                                let s = std::str::from_utf8(t).ok()?;
                                s.parse::<u32>().ok().filter(|n| n.to_string() == s)
                            })
                            .collect(),
                    ),
                    "netmask" => {
                        arity(name, args, 1, 1)?;
                        Cond::Netmask(self.nets(&args[0], "netmask()")?)
                    }
                    "countryCode" | "continentCode" | "regionCode" | "latlon" | "latlonloc" => {
                        self.pieces(e)?;
                        Cond::Const(true)
                    }
                    n if is_supported(n) => {
                        return unsupported(format!(
                            "unsupported construct: {n}() as a condition (conditions use country, continent, region, asnum, netmask)"
                        ));
                    }
                    n => return unsupported_function(n),
                }
            }
            Expr::Var(_) | Expr::Index(..) => {
                return invalid("internal: unresolved variable in a condition");
            }
        })
    }

    /// `a == b` as a condition: a geo code function against a literal becomes a test of the
    /// client's 4-byte code; two literals fold now. Lua compares strings byte for byte, and
    /// the code functions give lower-case text or `--`, so `countryCode() == 'NL'` never holds
    /// (in PowerDNS either).
    fn equal(&self, a: &Expr, b: &Expr, ne: bool) -> Result<Cond, LuaError> {
        let refuse = || {
            unsupported(format!(
                "unsupported construct: operator '{}' between {} and {} ({COMPARISONS})",
                if ne { "~=" } else { "==" },
                what(a),
                what(b)
            ))
        };
        let field = |e: &Expr| -> Result<Option<GeoField>, LuaError> {
            let Expr::Call { name, args } = e else {
                return Ok(None);
            };
            let f = match name.as_str() {
                "countryCode" => GeoField::Country,
                "continentCode" => GeoField::Continent,
                "regionCode" => GeoField::Region,
                _ => return Ok(None),
            };
            arity(name, args, 0, 0)?;
            Ok(Some(f))
        };
        let (fa, fb) = (field(a)?, field(b)?);
        let (field, other) = match (fa, fb) {
            (Some(f), None) => (f, b),
            (None, Some(f)) => (f, a),
            (Some(_), Some(_)) => return refuse(),
            (None, None) => {
                let (Some(x), Some(y)) = (self.literal(a)?, self.literal(b)?) else {
                    return refuse();
                };
                return Ok(Cond::Const(x == y));
            }
        };
        Ok(match self.literal(other)? {
            Some(Lit::Str(s)) if s == b"--" => Cond::Geo(field, vec![UNKNOWN]),
            // Only text a code function can give may match: 1 to 4 bytes, no upper case
            // (a NUL would read as padding).
            Some(Lit::Str(s))
                if !s.iter().any(|c| c.is_ascii_uppercase() || *c == 0) && code(&s).is_some() =>
            {
                Cond::Geo(field, code(&s).into_iter().collect())
            }
            // A string a code never is, or another type (never equal to a string).
            Some(_) => Cond::Const(false),
            None => return refuse(),
        })
    }

    /// A value known at load that `==` can compare (tables compare by identity: refused).
    fn literal(&self, e: &Expr) -> Result<Option<Lit>, LuaError> {
        Ok(Some(match e {
            Expr::Str(s) => Lit::Str(s.clone()),
            Expr::Num(n) => Lit::Num(*n),
            Expr::Bool(b) => Lit::Bool(*b),
            Expr::Nil => Lit::Nil,
            Expr::Concat(..) => match self.pieces(e)?.as_slice() {
                [Piece::Lit(t)] => Lit::Str(t.to_vec()),
                _ => return Ok(None),
            },
            // A comparison or `not` that folded is a boolean.
            Expr::Eq(..) | Expr::Not(_) => match self.cond(e)? {
                Cond::Const(b) => Lit::Bool(b),
                _ => return Ok(None),
            },
            _ => return Ok(None),
        }))
    }

    /// `'xx'` or `{'xx', 'yy'}` (numbers as their text), for country() and friends.
    fn match_list(&self, e: &Expr, func: &str) -> Result<Vec<Vec<u8>>, LuaError> {
        if let Some(t) = as_text(e) {
            return Ok(vec![t]);
        }
        self.list(e, &format!("the argument of {func}()"))?
            .into_iter()
            .map(|i| {
                as_text(i).map_or_else(
                    || {
                        invalid(format!(
                            "{func}() takes a string or a list of strings, got {}",
                            what(i)
                        ))
                    },
                    Ok,
                )
            })
            .collect()
    }

    /// Netmasks (`'10.0.0.0/8'`, or an address: a host route), as PowerDNS's Netmask reads them.
    fn nets(&self, e: &Expr, what_: &str) -> Result<Vec<IpNet>, LuaError> {
        self.list(e, &format!("the netmasks given to {what_}"))?
            .into_iter()
            .map(|n| {
                let text = self.text(n)?;
                let s = std::str::from_utf8(&text).unwrap_or("").trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        LuaError::Invalid(format!(
                            "{what_} netmask '{}' is not an address or prefix",
                            show(&text)
                        ))
                    })
            })
            .collect()
    }

    /// A string built per query from literals and the client's geo codes.
    fn text_rule(&self, e: &Expr) -> Result<Rule, LuaError> {
        let pieces = self.pieces(e)?;
        if let [Piece::Lit(t)] = pieces.as_slice() {
            return Ok(Rule::Static(vec![self.value(t)?]));
        }
        if pieces
            .iter()
            .any(|p| matches!(p, Piece::Lit(t) if t.contains(&b'\\')))
        {
            return unsupported(
                "unsupported construct: a backslash in a string joined with '..' to a geo value",
            );
        }
        Ok(Rule::Text(pieces))
    }

    /// The parts of a `..` chain; adjacent literals are joined.
    fn pieces(&self, e: &Expr) -> Result<Vec<Piece>, LuaError> {
        let mut out: Vec<Piece> = Vec::new();
        let mut push = |p: Piece| match (out.last_mut(), p) {
            (Some(Piece::Lit(a)), Piece::Lit(b)) => {
                let mut v = a.to_vec();
                v.extend_from_slice(&b);
                *a = v.into();
            }
            (_, p) => out.push(p),
        };
        let mut stack = vec![e];
        while let Some(e) = stack.pop() {
            match e {
                Expr::Concat(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                Expr::Call { name, args } => {
                    let piece = match name.as_str() {
                        "countryCode" => Piece::Code(GeoField::Country),
                        "continentCode" => Piece::Code(GeoField::Continent),
                        "regionCode" => Piece::Code(GeoField::Region),
                        "latlon" => Piece::LatLon,
                        "latlonloc" => Piece::LatLonLoc,
                        n => {
                            return unsupported(format!(
                                "unsupported construct: {n}() joined with '..' (join strings, numbers and countryCode, continentCode, regionCode, latlon, latlonloc)"
                            ));
                        }
                    };
                    arity(name, args, 0, 0)?;
                    push(piece);
                }
                other => match as_text(other) {
                    Some(t) => push(Piece::Lit(t.into())),
                    None => {
                        return invalid(format!("cannot join {} with '..'", what(other)));
                    }
                },
            }
        }
        Ok(out)
    }

    fn rule(&self, e: &Expr) -> Result<Rule, LuaError> {
        match e {
            Expr::Str(_) | Expr::Num(_) => Ok(Rule::Static(vec![self.value(&self.text(e)?)?])),
            Expr::Table(_) => Ok(Rule::Static(self.values(e, "the result", true)?)),
            Expr::Bool(_) | Expr::Nil => invalid(format!(
                "the body evaluates to {}, which is not a valid {} result",
                what(e),
                self.rtype.name()
            )),
            Expr::Call { name, args } => self.call(name, args),
            _ => self.result(e, true),
        }
    }

    fn call(&self, name: &str, args: &[Expr]) -> Result<Rule, LuaError> {
        let arity = |min, max| arity(name, args, min, max);
        let values = |e: &Expr| self.values(e, &format!("the list given to {name}()"), false);
        match name {
            "ifurlup" | "ifportup" | "ifurlextup" => self.if_up_call(name, args),
            "pickrandom" => {
                arity(1, 1)?;
                Ok(Rule::Random(values(&args[0])?))
            }
            "pickrandomsample" => {
                arity(2, 2)?;
                let n = match &args[0] {
                    Expr::Num(n) if n.fract() == 0.0 => *n as i64,
                    other => {
                        return invalid(format!(
                            "pickrandomsample() needs a whole number as its first argument, got {}",
                            what(other)
                        ));
                    }
                };
                Ok(Rule::RandomSample {
                    n,
                    values: values(&args[1])?,
                })
            }
            "pickhashed" => {
                arity(1, 1)?;
                Ok(Rule::Hashed(values(&args[0])?))
            }
            "pickwhashed" => {
                arity(1, 1)?;
                Ok(Rule::WeightedHashed(self.weighted(&args[0], name, true)?))
            }
            "pickwrandom" => {
                arity(1, 1)?;
                Ok(Rule::WeightedRandom(self.weighted(&args[0], name, false)?))
            }
            "pickchashed" => {
                arity(1, 1)?;
                self.ring(&args[0])
            }
            "pickclosest" => {
                arity(1, 1)?;
                let addrs = self.addresses(&args[0], name)?;
                if addrs.is_empty() {
                    return invalid("pickclosest() needs at least one address");
                }
                Ok(Rule::Closest(addrs))
            }
            "all" => {
                arity(1, 1)?;
                Ok(Rule::All(values(&args[0])?))
            }
            "view" => {
                arity(1, 1)?;
                self.view(&args[0])
            }
            "createReverse" | "createReverse6" | "createForward" | "createForward6"
            | "filterForward" => self.generator(name, args).map(Rule::Generate),
            "closestMagic" => {
                arity(0, 0)?;
                Ok(Rule::ClosestMagic)
            }
            "latlonMagic" => {
                arity(0, 0)?;
                Ok(Rule::LatLonMagic)
            }
            "picknamehashed" => {
                arity(1, 1)?;
                Ok(Rule::NameHashed(self.weighted(&args[0], name, true)?))
            }
            "pickselfweighted" => {
                arity(2, 3)?;
                let url = self.url(&args[0], name)?;
                let opts = self.options(args.get(2), name, true)?;
                let addrs = self.addresses(&args[1], name)?;
                if addrs.is_empty() {
                    return invalid("pickselfweighted() needs at least one address");
                }
                let check = Check::HttpWeighted { url };
                match self.if_up(
                    [addrs.into_iter().map(|a| (a, check.clone())).collect()],
                    opts,
                )? {
                    Rule::IfUp(u) => Ok(Rule::SelfWeighted(u.candidates)),
                    other => Ok(other),
                }
            }
            other => unsupported_function(other),
        }
    }

    /// The name-derived functions; the logic lives in `steer::generate`.
    fn generator(
        &self,
        name: &str,
        args: &[Expr],
    ) -> Result<crate::steer::generate::Generator, LuaError> {
        use crate::steer::generate::{self as generate, Generator};
        match name {
            "createForward" | "createForward6" => {
                arity(name, args, 0, 0)?;
                Ok(if name == "createForward" {
                    Generator::Forward
                } else {
                    Generator::Forward6
                })
            }
            "createReverse" | "createReverse6" => {
                arity(name, args, 1, 2)?;
                let format = self.text(&args[0])?;
                let exceptions = match args.get(1) {
                    None => None,
                    Some(Expr::Table(fields)) => Some(
                        fields
                            .iter()
                            .map(|f| match (&f.key, as_text(&f.value)) {
                                (Some(Key::Expr(k)), Some(v)) => Ok((self.text(k)?, v)),
                                _ => invalid(format!(
                                    "{name}() exceptions must be {{['address']='name', ...}}"
                                )),
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                    ),
                    Some(other) => {
                        return invalid(format!(
                            "{name}() exceptions must be a table, got {}",
                            what(other)
                        ));
                    }
                };
                generate::reverse_rule(name == "createReverse6", self.rtype, &format, exceptions)
                    .map_err(LuaError::Invalid)
            }
            _ => {
                arity(name, args, 2, 3)?;
                let inner = match &args[0] {
                    Expr::Call { name: n, args: a }
                        if n == "createForward" || n == "createForward6" =>
                    {
                        self.generator(n, a)?
                    }
                    _ => {
                        return unsupported(
                            "filterForward() is supported with createForward() or createForward6() as its first argument",
                        );
                    }
                };
                let masks = match &args[1] {
                    Expr::Call { name: n, args: a } if n == "newNMG" && a.len() == 1 => self
                        .list(&a[0], "the list given to newNMG()")?
                        .into_iter()
                        .map(|e| self.text(e))
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => {
                        return unsupported(
                            "filterForward() needs newNMG({'netmask', ...}) as its second argument",
                        );
                    }
                };
                let fallback = args.get(2).map(|e| self.text(e)).transpose()?;
                generate::filter_rule(inner, &masks, fallback).map_err(LuaError::Invalid)
            }
        }
    }

    /// `ifurlup`, `ifportup` and `ifurlextup`: addresses with their health checks.
    fn if_up_call(&self, name: &str, args: &[Expr]) -> Result<Rule, LuaError> {
        match name {
            "ifurlup" => {
                arity(name, args, 2, 3)?;
                let url = self.url(&args[0], name)?;
                let opts = self.options(args.get(2), name, true)?;
                let check = Check::Http { url };
                let groups = self.groups(&args[1], name)?;
                self.if_up(
                    groups
                        .into_iter()
                        .map(|g| g.into_iter().map(|a| (a, check.clone())).collect()),
                    opts,
                )
            }
            "ifportup" => {
                arity(name, args, 2, 3)?;
                let port = self.port(&args[0])?;
                let opts = self.options(args.get(2), name, false)?;
                let groups = self.groups(&args[1], name)?;
                self.if_up(
                    groups
                        .into_iter()
                        .map(|g| g.into_iter().map(|a| (a, Check::Tcp { port })).collect()),
                    opts,
                )
            }
            "ifurlextup" => {
                arity(name, args, 1, 2)?;
                let opts = self.options(args.get(1), name, true)?;
                let groups = self.ext_groups(&args[0])?;
                self.if_up(groups, opts)
            }
            other => unsupported_function(other),
        }
    }

    fn text(&self, e: &Expr) -> Result<Vec<u8>, LuaError> {
        as_text(e).map_or_else(
            || invalid(format!("expected a string, got {}", what(e))),
            Ok,
        )
    }

    /// A record value for the record type, as RDATA.
    fn value(&self, text: &[u8]) -> Result<Rdata, LuaError> {
        encode_lua_value(self.rtype, text).map_err(LuaError::Invalid)
    }

    /// Table fields without keys; keyed fields are refused.
    fn list<'e>(&self, e: &'e Expr, what_: &str) -> Result<Vec<&'e Expr>, LuaError> {
        let Expr::Table(fields) = e else {
            return invalid(format!("{what_} must be a table, got {}", what(e)));
        };
        fields
            .iter()
            .map(|f| match f.key {
                None => Ok(&f.value),
                Some(_) => invalid(format!("{what_} must be a list without keys")),
            })
            .collect()
    }

    /// A list of values for the record type. `may_be_empty`: `{}` means NODATA.
    fn values(&self, e: &Expr, what_: &str, may_be_empty: bool) -> Result<Vec<Rdata>, LuaError> {
        let items = self.list(e, what_)?;
        if items.is_empty() && !may_be_empty {
            return invalid(format!("{what_} is empty"));
        }
        items
            .into_iter()
            .map(|item| match as_text(item) {
                Some(t) => self.value(&t),
                None => invalid(format!("{what_} must hold strings, got {}", what(item))),
            })
            .collect()
    }

    /// An address literal of the record's family.
    fn address(&self, e: &Expr, func: &str) -> Result<IpAddr, LuaError> {
        let text = self.text(e)?;
        let s = std::str::from_utf8(&text).unwrap_or("");
        let Ok(addr) = s.trim().parse::<IpAddr>() else {
            return invalid(format!(
                "{func}() candidate '{}' is not an IP address",
                show(&text)
            ));
        };
        match (self.rtype, addr) {
            (RecordType::A, IpAddr::V4(_)) | (RecordType::Aaaa, IpAddr::V6(_)) => Ok(addr),
            (RecordType::A, IpAddr::V6(_)) => invalid(format!(
                "{func}() candidate '{addr}' is IPv6 but the record type is A"
            )),
            (RecordType::Aaaa, IpAddr::V4(_)) => invalid(format!(
                "{func}() candidate '{addr}' is IPv4 but the record type is AAAA"
            )),
            (t, _) => invalid(format!(
                "{func}() answers addresses: use it in an A or AAAA record, not {}",
                t.name()
            )),
        }
    }

    fn addresses(&self, e: &Expr, func: &str) -> Result<Vec<IpAddr>, LuaError> {
        self.list(e, &format!("the address list given to {func}()"))?
            .into_iter()
            .map(|a| self.address(a, func))
            .collect()
    }

    /// A flat list (one group) or a list of lists (ordered groups) of addresses.
    fn groups(&self, e: &Expr, func: &str) -> Result<Vec<Vec<IpAddr>>, LuaError> {
        let items = self.list(e, &format!("the address list given to {func}()"))?;
        if items.is_empty() {
            return invalid(format!("{func}() needs at least one address"));
        }
        let nested = items.iter().filter(|i| matches!(i, Expr::Table(_))).count();
        if nested == 0 {
            return Ok(vec![self.addresses(e, func)?]);
        }
        if nested != items.len() {
            return invalid(format!(
                "{func}() addresses must be all strings or all groups (tables), not a mix"
            ));
        }
        let groups = items
            .into_iter()
            .map(|g| self.addresses(g, func))
            .collect::<Result<Vec<_>, _>>()?;
        if groups.iter().all(Vec::is_empty) {
            return invalid(format!("{func}() needs at least one address"));
        }
        Ok(groups)
    }

    /// `ifurlextup` groups: `{{['192.0.2.1']='https://…', …}, …}`, written order kept.
    fn ext_groups(&self, e: &Expr) -> Result<Vec<Vec<(IpAddr, Check)>>, LuaError> {
        let what_ = "ifurlextup() groups";
        let groups = self.list(e, what_)?;
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            let Expr::Table(fields) = g else {
                return invalid(format!(
                    "{what_} must be tables like {{['192.0.2.1']='https://…'}}, got {}",
                    what(g)
                ));
            };
            let mut group = Vec::with_capacity(fields.len());
            for f in fields {
                let Some(Key::Expr(key)) = &f.key else {
                    return invalid(format!(
                        "{what_} map addresses to URLs: write {{['192.0.2.1']='https://…'}}"
                    ));
                };
                let addr = self.address(key, "ifurlextup")?;
                let url = self.url(&f.value, "ifurlextup")?;
                group.push((addr, Check::HttpExternal { url }));
            }
            out.push(group);
        }
        if out.iter().all(Vec::is_empty) {
            return invalid("ifurlextup() needs at least one address");
        }
        Ok(out)
    }

    fn url(&self, e: &Expr, func: &str) -> Result<String, LuaError> {
        let text = self.text(e)?;
        let Ok(url) = String::from_utf8(text) else {
            return invalid(format!("{func}() URL is not valid UTF-8"));
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
                Ok(url)
            }
            _ => invalid(format!(
                "{func}() URL '{url}' is not an http:// or https:// URL with a host"
            )),
        }
    }

    fn port(&self, e: &Expr) -> Result<u16, LuaError> {
        match number(e) {
            Some(p) if p.fract() == 0.0 && (1.0..=65535.0).contains(&p) => Ok(p as u16),
            _ => invalid(format!(
                "ifportup() port must be a number from 1 to 65535, got {}",
                show(&as_text(e).unwrap_or_else(|| what(e).as_bytes().to_vec()))
            )),
        }
    }

    fn if_up(
        &self,
        groups: impl IntoIterator<Item = Vec<(IpAddr, Check)>>,
        opts: Options,
    ) -> Result<Rule, LuaError> {
        let mut candidates = Vec::new();
        let mut group_starts = Vec::new();
        for group in groups {
            if group.is_empty() {
                continue;
            }
            group_starts.push(candidates.len());
            for (addr, check) in group {
                candidates.push(Candidate {
                    addr,
                    probe: ProbeSpec {
                        addr,
                        check,
                        options: opts.check.clone(),
                    },
                });
            }
        }
        Ok(Rule::IfUp(IfUp {
            candidates,
            group_starts,
            selector: opts.selector,
            backup: opts.backup,
            fail_on_incomplete: opts.fail_on_incomplete,
        }))
    }

    /// `{{weight, 'value'}, …}` in PowerDNS's walk order, with running sums.
    fn weighted(&self, e: &Expr, func: &str, hashed: bool) -> Result<Weighted, LuaError> {
        let pairs = self.weight_pairs(e, func)?;
        let order = if hashed {
            hash::libstdcxx_order(pairs.len()).ok_or_else(|| {
                LuaError::Invalid(format!(
                    "{func}() has more than {} entries",
                    hash::MAX_WEIGHTED_ENTRIES
                ))
            })?
        } else {
            // Random picks do not depend on the walk order.
            (0..pairs.len()).collect()
        };
        let mut sum = 0u64;
        let mut entries = Vec::with_capacity(pairs.len());
        for i in order {
            let (w, ref text) = pairs[i];
            sum += w;
            entries.push((sum, self.value(text)?));
        }
        // PowerDNS sums weights in a C int.
        if sum == 0 {
            return invalid(format!("{func}() weights add up to 0"));
        }
        if sum > i32::MAX as u64 {
            return invalid(format!("{func}() weights add up to more than {}", i32::MAX));
        }
        Ok(Weighted { entries })
    }

    /// (weight, value text) in written order. Weights are truncated to integers as PowerDNS's
    /// `atoi` does; negative weights are refused (PowerDNS gives undefined answers for them).
    fn weight_pairs(&self, e: &Expr, func: &str) -> Result<Vec<(u64, Vec<u8>)>, LuaError> {
        let what_ = format!("the weighted list given to {func}()");
        let items = self.list(e, &what_)?;
        if items.is_empty() {
            return invalid(format!("{what_} is empty"));
        }
        items
            .into_iter()
            .map(|item| {
                let pair = self.list(item, &format!("each entry of {what_}"))?;
                let [w, v] = pair.as_slice() else {
                    return invalid(format!("each entry of {what_} must be {{weight, 'value'}}"));
                };
                let weight = match number(w) {
                    Some(n) if (0.0..2_147_483_648.0).contains(&n) => n.trunc() as u64,
                    Some(n) => {
                        return invalid(format!(
                            "{func}() weight {} is out of range (0..2147483647)",
                            lua_number(n)
                        ));
                    }
                    None => {
                        return invalid(format!(
                            "{func}() weight must be a number, got {}",
                            what(w)
                        ));
                    }
                };
                Ok((weight, self.text(v)?))
            })
            .collect()
    }

    fn ring(&self, e: &Expr) -> Result<Rule, LuaError> {
        let pairs = self.weight_pairs(e, "pickchashed")?;
        let total: u64 = pairs.iter().map(|p| p.0).sum();
        if total == 0 {
            return invalid("pickchashed() weights add up to 0");
        }
        if total > MAX_CHASHED_POINTS {
            return invalid(format!(
                "pickchashed() weights add up to more than {MAX_CHASHED_POINTS}"
            ));
        }
        let mut points = Vec::with_capacity(total as usize);
        let mut values = Vec::with_capacity(pairs.len());
        for (i, (w, text)) in pairs.iter().enumerate() {
            values.push(self.value(text)?);
            points.extend(
                hash::chashed_points(text, *w as u32)
                    .into_iter()
                    .map(|h| (h, i as u32)),
            );
        }
        // Equal hashes of different entries (astronomically rare) go to the written-first one.
        points.sort_unstable();
        Ok(Rule::ConsistentHashed(Ring { points, values }))
    }

    /// `view({{{nets…},{values…}}, …})`.
    fn view(&self, e: &Expr) -> Result<Rule, LuaError> {
        let what_ = "view() rules";
        let rules = self.list(e, what_)?;
        if rules.is_empty() {
            return invalid("view() needs at least one rule");
        }
        let mut out = Vec::with_capacity(rules.len());
        for (i, rule) in rules.into_iter().enumerate() {
            let parts = self.list(rule, what_)?;
            let [nets, values] = parts.as_slice() else {
                return invalid(format!(
                    "view() rule {} must be {{{{netmasks…}}, {{values…}}}}",
                    i + 1
                ));
            };
            let nets = self.nets(nets, "view()")?;
            if nets.is_empty() {
                return invalid(format!("view() rule {} has no netmasks", i + 1));
            }
            let values = self.values(values, &format!("view() rule {} values", i + 1), false)?;
            out.push(ViewRule { nets, values });
        }
        Ok(Rule::View(out))
    }

    /// The options table of an `if*up` call, typed, with `[probes]` defaults filled in.
    fn options(&self, e: Option<&Expr>, func: &str, http: bool) -> Result<Options, LuaError> {
        let mut o = self.default_options();
        let Some(e) = e else { return Ok(o) };
        let Expr::Table(fields) = e else {
            return invalid(format!("{func}() options must be a table, got {}", what(e)));
        };
        for f in fields {
            let name = match &f.key {
                Some(Key::Name(n)) => n.clone(),
                Some(Key::Expr(Expr::Str(s))) => show(s),
                _ => {
                    return invalid(format!(
                        "{func}() options must be name=value pairs, like {{selector='all'}}"
                    ));
                }
            };
            self.set_option(&mut o, &name, &f.value, func, http)?;
        }
        Ok(o)
    }

    /// Options as PowerDNS has them when none are given (probe timings from `[probes]`).
    fn default_options(&self) -> Options {
        let d = self.defaults;
        Options {
            selector: Selector::Random,
            backup: Selector::Random,
            fail_on_incomplete: false,
            check: CheckOptions {
                interval: d.interval,
                timeout: d.timeout,
                fall: d.minimum_failures,
                rise: d.rise,
                stringmatch: None,
                useragent: DEFAULT_USER_AGENT.to_string(),
                byteslimit: 0,
                httpcode: 200,
                headers: Vec::new(),
                source: None,
            },
        }
    }

    /// Applies option `name` = `v` of `func()`; `http`: whether it makes HTTP checks.
    fn set_option(
        &self,
        o: &mut Options,
        name: &str,
        v: &Expr,
        func: &str,
        http: bool,
    ) -> Result<(), LuaError> {
        match name {
            "selector" => o.selector = self.selector(v, name)?,
            "backupSelector" => o.backup = self.selector(v, name)?,
            "timeout" => {
                let secs = self.seconds(v, name)?;
                if secs == 0.0 {
                    return invalid(
                        "option 'timeout' is 0: PowerDNS then probes without any timeout; give a positive number of seconds",
                    );
                }
                o.check.timeout = Duration::from_secs_f64(secs);
            }
            "interval" => {
                let secs = self.seconds(v, name)?;
                if secs < 0.1 {
                    return invalid("option 'interval' must be at least 0.1 seconds");
                }
                o.check.interval = Duration::from_secs_f64(secs);
            }
            // PowerDNS 5.0 reads 0 as 1.
            "minimumFailures" => o.check.fall = self.integer(v, name, 0, 1000)?.max(1) as u32,
            "rise" => o.check.rise = self.integer(v, name, 1, 1000)? as u32,
            "stringmatch" | "useragent" | "byteslimit" | "httpcode" | "headers" => {
                if !http {
                    return invalid(format!(
                        "option '{name}' has no effect on {func}() (HTTP checks only)"
                    ));
                }
                self.set_http_option(&mut o.check, name, v)?;
            }
            "failOnIncompleteCheck" => {
                o.fail_on_incomplete = match v {
                    Expr::Bool(b) => *b,
                    Expr::Str(s) if s == b"true" => true,
                    Expr::Str(s) if s == b"false" => false,
                    _ => {
                        return invalid(
                            "option 'failOnIncompleteCheck' must be true, false, 'true' or 'false'",
                        );
                    }
                }
            }
            "source" => {
                let s = self.string(v, name)?;
                let Ok(addr) = s.parse::<IpAddr>() else {
                    return invalid(format!("option 'source' '{s}' is not an IP address"));
                };
                o.check.source = Some(addr);
            }
            // PowerDNS silently ignores unknown option names, so a typo such as
            // `selecter='all'` quietly changes behaviour there; here it is an error.
            other => {
                return invalid(format!(
                    "unknown option '{other}' for {func}() (known: selector, backupSelector, timeout, interval, minimumFailures, rise, stringmatch, useragent, byteslimit, httpcode, headers, failOnIncompleteCheck, source)"
                ));
            }
        }
        Ok(())
    }

    /// The options only HTTP checks read.
    fn set_http_option(
        &self,
        check: &mut CheckOptions,
        name: &str,
        v: &Expr,
    ) -> Result<(), LuaError> {
        match name {
            "stringmatch" => check.stringmatch = Some(self.string(v, name)?),
            "useragent" => check.useragent = self.string(v, name)?,
            "byteslimit" => check.byteslimit = self.integer(v, name, 0, i64::MAX)? as u64,
            "httpcode" => check.httpcode = self.integer(v, name, 100, 599)? as u16,
            "headers" => check.headers = self.headers(v)?,
            _ => unreachable!("not an HTTP option: {name}"),
        }
        Ok(())
    }

    fn selector(&self, v: &Expr, name: &str) -> Result<Selector, LuaError> {
        let s = self.string(v, name)?;
        Selector::parse(&s).map_or_else(
            || {
                invalid(format!(
                    "option '{name}' has unknown selector '{s}' (known: random, hashed, pickclosest, all, empty, pickfirst)"
                ))
            },
            Ok,
        )
    }

    fn string(&self, v: &Expr, name: &str) -> Result<String, LuaError> {
        match as_text(v) {
            Some(t) => String::from_utf8(t)
                .map_err(|_| LuaError::Invalid(format!("option '{name}' is not valid UTF-8"))),
            None => invalid(format!("option '{name}' must be a string, got {}", what(v))),
        }
    }

    fn seconds(&self, v: &Expr, name: &str) -> Result<f64, LuaError> {
        match number(v) {
            Some(n) if (0.0..=86400.0).contains(&n) => Ok(n),
            Some(n) => invalid(format!(
                "option '{name}' is {} seconds, outside 0..86400",
                lua_number(n)
            )),
            None => invalid(format!(
                "option '{name}' must be a number of seconds, got {}",
                what(v)
            )),
        }
    }

    fn integer(&self, v: &Expr, name: &str, min: i64, max: i64) -> Result<i64, LuaError> {
        match number(v) {
            Some(n) if n.fract() == 0.0 && n >= min as f64 && n <= max as f64 => Ok(n as i64),
            Some(n) => invalid(format!(
                "option '{name}' is {}, not a whole number in {min}..={max}",
                lua_number(n)
            )),
            None => invalid(format!("option '{name}' must be a number, got {}", what(v))),
        }
    }

    /// `headers={X_Token='a'}`: `_` in names becomes `-` (PowerDNS 5.1). Sorted by name, so the
    /// probe identity does not depend on Lua table order.
    fn headers(&self, v: &Expr) -> Result<Vec<(String, String)>, LuaError> {
        let Expr::Table(fields) = v else {
            return invalid("option 'headers' must be a table like {X_Api_Key='…'}");
        };
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            let name = match &f.key {
                Some(Key::Name(n)) => n.clone(),
                Some(Key::Expr(Expr::Str(s))) => show(s),
                _ => return invalid("option 'headers' must be a table of name=value pairs"),
            };
            let name = name.replace('_', "-");
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^`|~".contains(&b));
            if !valid_name {
                return invalid(format!(
                    "header name '{name}' is not a valid HTTP header name"
                ));
            }
            let value = self.string(&f.value, "headers")?;
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return invalid(format!("header '{name}' has a line break in its value"));
            }
            out.push((name, value));
        }
        out.sort();
        Ok(out)
    }
}

/// Numbers, or strings holding one (as PowerDNS passes options as strings).
fn number(e: &Expr) -> Option<f64> {
    match e {
        Expr::Num(n) => Some(*n),
        Expr::Str(s) => std::str::from_utf8(s)
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite()),
        _ => None,
    }
}

struct Options {
    selector: Selector,
    backup: Selector,
    fail_on_incomplete: bool,
    check: CheckOptions,
}

// ---------------------------------------------------------------------------------------------
// Values to RDATA
// ---------------------------------------------------------------------------------------------

/// A value returned by a LUA body, as PowerDNS converts it: the presentation format of the
/// type, with TXT values read as if in double quotes and CNAME targets taken as absolute.
pub(crate) fn encode_lua_value(rtype: RecordType, text: &[u8]) -> Result<Rdata, String> {
    match rtype {
        RecordType::Txt => {
            let bytes = unescape_txt(text)?;
            Ok(txt_rdata(std::iter::once(bytes.as_slice()))?.into())
        }
        _ => {
            let s = std::str::from_utf8(text)
                .map_err(|_| format!("'{}' is not valid UTF-8", show(text)))?;
            encode_presentation(rtype, s)
        }
    }
}

/// A `content = [...]` value in presentation format. TXT: one or more `"quoted"` strings, or
/// bare text taken as one string.
pub(crate) fn encode_content(rtype: RecordType, value: &str) -> Result<Rdata, String> {
    if rtype != RecordType::Txt {
        return encode_presentation(rtype, value);
    }
    let v = value.trim();
    if !v.starts_with('"') {
        let bytes = unescape_txt(v.as_bytes())?;
        return Ok(txt_rdata(std::iter::once(bytes.as_slice()))?.into());
    }
    let mut strings = Vec::new();
    let mut rest = v.as_bytes();
    while !rest.is_empty() {
        if rest[0] != b'"' {
            return Err(format!(
                "TXT value {value} mixes quoted and bare text; quote every part"
            ));
        }
        let mut i = 1;
        while i < rest.len() && rest[i] != b'"' {
            i += if rest[i] == b'\\' { 2 } else { 1 };
        }
        if i >= rest.len() {
            return Err(format!("TXT value {value} has an unterminated quote"));
        }
        strings.push(unescape_txt(&rest[1..i])?);
        rest = rest[i + 1..].trim_ascii_start();
    }
    Ok(txt_rdata(strings.iter().map(Vec::as_slice))?.into())
}

fn encode_presentation(rtype: RecordType, s: &str) -> Result<Rdata, String> {
    let t = s.trim();
    match rtype {
        RecordType::A => t
            .parse::<std::net::Ipv4Addr>()
            .map(|a| a.octets().to_vec().into())
            .map_err(|_| format!("'{s}' is not an IPv4 address (record type A)")),
        RecordType::Aaaa => t
            .parse::<std::net::Ipv6Addr>()
            .map(|a| a.octets().to_vec().into())
            .map_err(|_| format!("'{s}' is not an IPv6 address (record type AAAA)")),
        RecordType::Cname | RecordType::Ptr => name_wire(t).map(Into::into),
        RecordType::Txt => encode_lua_value(rtype, s.as_bytes()),
        RecordType::Lua => Err("a record of type LUA has no answer value".into()),
    }
}

/// A string built per query (`Rule::Text`) as RDATA of `rtype`, into `out`, without
/// allocating: what [`encode_lua_value`] gives for text without backslashes (the compiler
/// refuses those). None when the text is not a valid value (SERVFAIL) or does not fit.
pub(crate) fn encode_text_into(rtype: RecordType, text: &[u8], out: &mut [u8]) -> Option<usize> {
    let put = |out: &mut [u8], bytes: &[u8]| -> Option<usize> {
        out.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(bytes.len())
    };
    match rtype {
        RecordType::A => {
            let a: std::net::Ipv4Addr = std::str::from_utf8(text).ok()?.trim().parse().ok()?;
            put(out, &a.octets())
        }
        RecordType::Aaaa => {
            let a: std::net::Ipv6Addr = std::str::from_utf8(text).ok()?.trim().parse().ok()?;
            put(out, &a.octets())
        }
        RecordType::Cname | RecordType::Ptr => {
            let t = text.trim_ascii();
            let t = t.strip_suffix(b".").unwrap_or(t);
            let mut len = 0;
            if !t.is_empty() {
                for label in t.split(|&b| b == b'.') {
                    if label.is_empty() || label.len() > 63 {
                        return None;
                    }
                    *out.get_mut(len)? = label.len() as u8;
                    len += 1 + put(out.get_mut(len + 1..)?, label)?;
                }
            }
            *out.get_mut(len)? = 0;
            (len < 255).then_some(len + 1)
        }
        RecordType::Txt => {
            if text.is_empty() {
                return put(out, &[0]);
            }
            let mut len = 0;
            for chunk in text.chunks(255) {
                *out.get_mut(len)? = chunk.len() as u8;
                len += 1 + put(out.get_mut(len + 1..)?, chunk)?;
            }
            Some(len)
        }
        RecordType::Lua => None,
    }
}

/// A fixed buffer that `write!` fills without allocating.
struct StackText<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl fmt::Write for StackText<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let dst = self
            .out
            .get_mut(self.len..self.len + s.len())
            .ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

/// Appends micro-degrees `m` as C's `%f` prints the degrees (6 decimals).
fn push_micro(w: &mut StackText<'_>, m: i64) {
    use fmt::Write;
    let sign = if m < 0 { "-" } else { "" };
    let a = m.unsigned_abs();
    let _ = write!(w, "{sign}{}.{:06}", a / 1_000_000, a % 1_000_000);
}

/// `latlon()`: `"%f %f"` of the client's coordinates (micro-degrees; 0, 0 when unknown).
pub(crate) fn latlon_text(lat: i64, lon: i64, out: &mut [u8]) -> usize {
    let mut w = StackText { out, len: 0 };
    push_micro(&mut w, lat);
    let _ = fmt::Write::write_str(&mut w, " ");
    push_micro(&mut w, lon);
    w.len
}

/// `latlonloc()`: PowerDNS 4.7's LOC-style text, `"%d %d %d %c %d %d %d %c 0.00m 1.00m
/// 10000.00m 10.00m"` through boost::format, where the seconds are a double printed by `%d` as
/// a stream prints it (6 significant digits); 0 counts as south and west.
pub(crate) fn latlonloc_text(lat: i64, lon: i64, out: &mut [u8]) -> usize {
    use fmt::Write;
    let mut w = StackText { out, len: 0 };
    for (m, pos, neg) in [(lat, 'N', 'S'), (lon, 'E', 'W')] {
        let mut v = m as f64 / 1e6;
        let hem = if v > 0.0 {
            pos
        } else {
            v = -v;
            neg
        };
        let deg = v as i32;
        let min = ((v - f64::from(deg)) * 60.0) as i32;
        let sec = ((v - f64::from(deg)) * 60.0 - f64::from(min)) * 60.0;
        let _ = write!(w, "{deg} {min} ");
        write_g6(&mut w, sec);
        let _ = write!(w, " {hem} ");
    }
    let _ = w.write_str("0.00m 1.00m 10000.00m 10.00m");
    w.len
}

/// A double as a C++ stream prints it by default (`%g`, 6 significant digits).
fn write_g6(w: &mut StackText<'_>, v: f64) {
    use fmt::Write;
    if v == 0.0 {
        // Negated zero (an unknown location counts as south/west) prints as "-0".
        let _ = w.write_str(if v.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    let mut sci = [0u8; 40];
    let mut s = StackText {
        out: &mut sci,
        len: 0,
    };
    let _ = write!(s, "{v:.5e}");
    let len = s.len;
    let text = std::str::from_utf8(&sci[..len]).unwrap_or("0e0");
    let (mant, exp) = text.split_once('e').unwrap_or((text, "0"));
    let x: i32 = exp.parse().unwrap_or(0);
    let trim = |t: &str| -> (usize, usize) {
        // Length without trailing zeros (and the dot they leave).
        if !t.contains('.') {
            return (t.len(), 0);
        }
        let t2 = t.trim_end_matches('0');
        let t2 = t2.strip_suffix('.').unwrap_or(t2);
        (t2.len(), 0)
    };
    if (-4..6).contains(&x) {
        let mut fixed = [0u8; 40];
        let mut f = StackText {
            out: &mut fixed,
            len: 0,
        };
        let _ = write!(f, "{v:.*}", (5 - x) as usize);
        let n = f.len;
        let t = std::str::from_utf8(&fixed[..n]).unwrap_or("0");
        let _ = w.write_str(&t[..trim(t).0]);
    } else {
        let _ = w.write_str(&mant[..trim(mant).0]);
        let sign = if x < 0 { '-' } else { '+' };
        let _ = write!(w, "e{sign}{:02}", x.unsigned_abs());
    }
}

/// A domain name in wire format, taken as absolute (`'static'` → `static.`); case kept.
fn name_wire(name: &str) -> Result<Vec<u8>, String> {
    crate::dns::name_from_text_keep_case(name)
        .map_err(|e| format!("'{name}' is not a valid CNAME target: {}", e.describe(name)))
}

/// Decodes zone-file escapes (`\DDD`, `\X`) inside a TXT string.
fn unescape_txt(text: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let digits = text[i + 1..]
            .iter()
            .take(3)
            .take_while(|d| d.is_ascii_digit())
            .count();
        if digits == 3 {
            let v: u16 = std::str::from_utf8(&text[i + 1..i + 4])
                .ok()
                .and_then(|d| d.parse().ok())
                .unwrap_or(256);
            let Ok(v) = u8::try_from(v) else {
                return Err(format!(
                    "TXT escape '\\{}' is above 255",
                    show(&text[i + 1..i + 4])
                ));
            };
            out.push(v);
            i += 4;
        } else if let Some(&e) = text.get(i + 1) {
            out.push(e);
            i += 2;
        } else {
            return Err("TXT value ends with a lone backslash".into());
        }
    }
    Ok(out)
}

/// TXT RDATA from strings; each longer than 255 bytes is split into 255-byte character-strings.
fn txt_rdata<'s>(strings: impl Iterator<Item = &'s [u8]>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for s in strings {
        if s.is_empty() {
            out.push(0);
        }
        for chunk in s.chunks(255) {
            out.push(chunk.len() as u8);
            out.extend_from_slice(chunk);
        }
    }
    if out.len() > 65535 {
        return Err("TXT value is longer than 65535 bytes".into());
    }
    Ok(out)
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Selector::Random => "random",
            Selector::Hashed => "hashed",
            Selector::PickClosest => "pickclosest",
            Selector::All => "all",
            Selector::Empty => "empty",
            Selector::PickFirst => "pickfirst",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ProbeDefaults {
        ProbeDefaults {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            minimum_failures: 1,
            rise: 1,
            max_concurrent: 256,
            jitter: 0.1,
            tls_verify: false,
            max_redirects: 5,
            body_limit: 65536,
        }
    }

    fn a(body: &str) -> Result<Rule, LuaError> {
        compile(body, RecordType::A, &defaults())
    }

    fn of(body: &str, t: RecordType) -> Result<Rule, LuaError> {
        compile(body, t, &defaults())
    }

    fn err(body: &str) -> String {
        a(body).unwrap_err().to_string()
    }

    fn v4(s: &str) -> Rdata {
        s.parse::<std::net::Ipv4Addr>()
            .unwrap()
            .octets()
            .to_vec()
            .into()
    }

    #[test]
    fn literals_are_static_answers() {
        assert_eq!(
            a("'192.0.2.1'").unwrap(),
            Rule::Static(vec![v4("192.0.2.1")])
        );
        assert_eq!(
            a(" {'192.0.2.1', '192.0.2.2',} ").unwrap(),
            Rule::Static(vec![v4("192.0.2.1"), v4("192.0.2.2")])
        );
        assert_eq!(a("{}").unwrap(), Rule::Static(vec![]));
        assert_eq!(
            a("[[192.0.2.7]]").unwrap(),
            Rule::Static(vec![v4("192.0.2.7")])
        );
        assert_eq!(
            a("-- comment\n'192.0.2.1' --[[ trailing ]]").unwrap(),
            Rule::Static(vec![v4("192.0.2.1")])
        );
    }

    #[test]
    fn values_are_checked_against_the_record_type() {
        assert!(err("'2001:db8::1'").contains("not an IPv4 address"));
        assert!(err("'A 192.0.2.1'").contains("not an IPv4 address"));
        assert!(err("'not-an-ip'").contains("not an IPv4 address"));
        assert!(
            of("'192.0.2.1'", RecordType::Aaaa)
                .unwrap_err()
                .to_string()
                .contains("IPv6")
        );
        // CNAME targets are absolute, as PowerDNS makes them: 'static' → static.
        assert_eq!(
            of("'static'", RecordType::Cname).unwrap(),
            Rule::Static(vec![b"\x06static\x00".to_vec().into()])
        );
        assert_eq!(
            of("'Static.Lua.Test.'", RecordType::Cname).unwrap(),
            Rule::Static(vec![b"\x06Static\x03Lua\x04Test\x00".to_vec().into()])
        );
        assert!(of("'a..b'", RecordType::Cname).is_err());
    }

    #[test]
    fn txt_values() {
        assert_eq!(
            of("'hello world'", RecordType::Txt).unwrap(),
            Rule::Static(vec![b"\x0bhello world".to_vec().into()])
        );
        // Numbers become strings as Lua prints them.
        assert_eq!(
            of("{2, 1.5}", RecordType::Txt).unwrap(),
            Rule::Static(vec![b"\x012".to_vec().into(), b"\x031.5".to_vec().into()])
        );
        let long = "x".repeat(300);
        let Rule::Static(v) = of(&format!("'{long}'"), RecordType::Txt).unwrap() else {
            panic!()
        };
        assert_eq!(v[0][0], 255);
        assert_eq!(v[0][256], 45);
        assert_eq!(v[0].len(), 302);
        // Zone-file escapes are read as PowerDNS does (it wraps the value in quotes).
        assert_eq!(
            of("'a\\\\065'", RecordType::Txt).unwrap(),
            Rule::Static(vec![b"\x02aA".to_vec().into()])
        );
    }

    #[test]
    fn content_values() {
        assert_eq!(
            &*encode_content(RecordType::Txt, "\"a b\" \"c\"").unwrap(),
            b"\x03a b\x01c"
        );
        assert_eq!(
            &*encode_content(RecordType::Txt, "bare text").unwrap(),
            b"\x09bare text"
        );
        assert_eq!(
            &*encode_content(RecordType::Txt, "\"say \\\"hi\\\"\"").unwrap(),
            b"\x08say \"hi\""
        );
        assert!(encode_content(RecordType::Txt, "\"open").is_err());
        assert_eq!(
            &*encode_content(RecordType::A, "192.0.2.1").unwrap(),
            &[192, 0, 2, 1]
        );
        assert!(encode_content(RecordType::A, "192.0.2.300").is_err());
        assert_eq!(
            &*encode_content(RecordType::Cname, "www.example.net").unwrap(),
            b"\x03www\x07example\x03net\x00"
        );
    }

    #[test]
    fn selection_functions() {
        assert!(matches!(
            a("pickrandom({'192.0.2.1','192.0.2.2'})").unwrap(),
            Rule::Random(v) if v.len() == 2
        ));
        assert!(matches!(
            a("pickrandomsample(-1, {'192.0.2.1'})").unwrap(),
            Rule::RandomSample { n: -1, .. }
        ));
        assert!(matches!(
            a("pickhashed{'192.0.2.1'}").unwrap(),
            Rule::Hashed(v) if v.len() == 1
        ));
        assert!(matches!(
            a("all({'192.0.2.1'})").unwrap(),
            Rule::All(v) if v.len() == 1
        ));
        assert!(matches!(
            a("pickclosest({'192.0.2.1','198.51.100.1'})").unwrap(),
            Rule::Closest(v) if v.len() == 2
        ));
        assert!(err("all({})").contains("empty"));
        assert!(err("pickrandom({})").contains("empty"));
        assert!(err("pickclosest({'host.example'})").contains("not an IP address"));
        assert!(
            of("pickclosest({'192.0.2.1'})", RecordType::Txt)
                .unwrap_err()
                .to_string()
                .contains("A or AAAA")
        );
        assert!(err("pickrandomsample(1.5, {'192.0.2.1'})").contains("whole number"));
        assert!(err("pickrandom({'192.0.2.1'}, 2)").contains("takes 1 argument"));
    }

    #[test]
    fn weighted_lists_follow_powerdns_walk_order() {
        let Rule::WeightedHashed(w) =
            a("pickwhashed({{10,'192.0.2.1'},{20,'192.0.2.2'},{30,'192.0.2.3'}})").unwrap()
        else {
            panic!()
        };
        // Internal order .3(30) .2(20) .1(10).
        assert_eq!(
            w.entries,
            vec![
                (30, v4("192.0.2.3")),
                (50, v4("192.0.2.2")),
                (60, v4("192.0.2.1"))
            ]
        );
        // Weights are truncated, numeric strings accepted.
        let Rule::WeightedRandom(w) =
            a("pickwrandom({{'15.7','192.0.2.1'},{1,'192.0.2.2'}})").unwrap()
        else {
            panic!()
        };
        assert_eq!(w.total(), 16);
        assert!(err("pickwhashed({{0,'192.0.2.1'},{0,'192.0.2.2'}})").contains("add up to 0"));
        assert!(err("pickwhashed({{-1,'192.0.2.1'}})").contains("out of range"));
        assert!(err("pickwhashed({{'x','192.0.2.1'}})").contains("weight must be a number"));
        assert!(err("pickwhashed({{1}})").contains("{weight, 'value'}"));
    }

    #[test]
    fn chashed_ring() {
        let Rule::ConsistentHashed(r) =
            a("pickchashed({{2,'192.0.2.1'},{1,'192.0.2.2'}})").unwrap()
        else {
            panic!()
        };
        assert_eq!(r.points.len(), 3);
        assert!(r.points.windows(2).all(|p| p[0].0 <= p[1].0));
        assert!(r.points.contains(&(918744709, 0)));
        assert!(r.points.contains(&(1206295987, 1)));
    }

    #[test]
    fn view_rules() {
        let Rule::View(rules) = a(
            "view({{{'10.0.0.0/8', '192.0.2.77'},{'192.0.2.10'}},{{'0.0.0.0/0'},{'192.0.2.99'}}})",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].nets[1], "192.0.2.77/32".parse::<IpNet>().unwrap());
        assert!(err("view({{{'10.0.0.0/33'},{'192.0.2.1'}}})").contains("netmask"));
        assert!(err("view({{{'10.0.0.0/8'},{}}})").contains("empty"));
        assert!(err("view({{{'10.0.0.0/8'}}})").contains("rule 1"));
    }

    #[test]
    fn ifurlup_groups_options_and_probes() {
        let Rule::IfUp(u) = a(
            "ifurlup('https://hc.example/ok', {{'192.0.2.1','192.0.2.2'},{'192.0.2.3'}}, {selector='pickfirst', backupSelector='all', timeout='3', interval=10, minimumFailures=3, rise=2, stringmatch='OK', useragent='x', byteslimit=100, httpcode=204, headers={X_Api_Key='k'}, failOnIncompleteCheck='true', source='192.0.2.200'})",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(u.group_starts, vec![0, 2]);
        assert_eq!(u.candidates.len(), 3);
        assert_eq!(u.selector, Selector::PickFirst);
        assert_eq!(u.backup, Selector::All);
        assert!(u.fail_on_incomplete);
        let o = &u.candidates[0].probe.options;
        assert_eq!(o.timeout, Duration::from_secs(3));
        assert_eq!(o.interval, Duration::from_secs(10));
        assert_eq!((o.fall, o.rise), (3, 2));
        assert_eq!(o.stringmatch.as_deref(), Some("OK"));
        assert_eq!(o.httpcode, 204);
        assert_eq!(o.byteslimit, 100);
        assert_eq!(o.headers, vec![("X-Api-Key".to_string(), "k".to_string())]);
        assert_eq!(o.source, Some("192.0.2.200".parse().unwrap()));
        assert_eq!(
            u.candidates[2].probe.check,
            Check::Http {
                url: "https://hc.example/ok".into()
            }
        );

        // Defaults come from [probes] and PowerDNS.
        let Rule::IfUp(u) = a("ifurlup('http://h/', {'192.0.2.1'})").unwrap() else {
            panic!()
        };
        let o = &u.candidates[0].probe.options;
        assert_eq!(u.selector, Selector::Random);
        assert_eq!(u.backup, Selector::Random);
        assert_eq!(o.useragent, DEFAULT_USER_AGENT);
        assert_eq!((o.httpcode, o.fall, o.rise), (200, 1, 1));
        assert_eq!(o.timeout, Duration::from_secs(2));
        assert_eq!(o.interval, Duration::from_secs(5));
    }

    #[test]
    fn ifportup_and_ifurlextup() {
        let Rule::IfUp(u) =
            a("ifportup(443, {{'192.0.2.1'},{'192.0.2.2'}}, {selector='all'})").unwrap()
        else {
            panic!()
        };
        assert_eq!(u.group_starts, vec![0, 1]);
        assert_eq!(u.candidates[1].probe.check, Check::Tcp { port: 443 });
        assert!(err("ifportup(0, {'192.0.2.1'})").contains("port"));
        assert!(err("ifportup(80, {'192.0.2.1'}, {httpcode=200})").contains("HTTP checks only"));

        let Rule::IfUp(u) = a(
            "ifurlextup({{['192.0.2.1']='https://a.example/h', ['192.0.2.2']='https://b.example/h'}, {['192.0.2.3']='http://c.example/'}}, {selector='all'})",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(u.group_starts, vec![0, 2]);
        assert_eq!(
            u.candidates[1].probe.check,
            Check::HttpExternal {
                url: "https://b.example/h".into()
            }
        );
        assert_eq!(u.candidates[1].addr, "192.0.2.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn option_errors_name_the_option() {
        let e = |opts: &str| err(&format!("ifurlup('http://h/', {{'192.0.2.1'}}, {opts})"));
        assert!(e("{timeout=0}").contains("'timeout' is 0"));
        assert!(e("{timeout='soon'}").contains("'timeout' must be a number"));
        assert!(e("{selector='first'}").contains("unknown selector 'first'"));
        assert!(e("{backupSelector='wrandom'}").contains("unknown selector 'wrandom'"));
        assert!(e("{selecter='all'}").contains("unknown option 'selecter'"));
        assert!(e("{failOnIncompleteCheck=1}").contains("failOnIncompleteCheck"));
        assert!(e("{httpcode=999}").contains("'httpcode'"));
        assert!(e("{source='nowhere'}").contains("'source'"));
        assert!(e("{minimumFailures=1.5}").contains("'minimumFailures'"));
        assert!(e("{headers={['bad name']='x'}}").contains("header name"));
        assert!(e("'all'").contains("options must be a table"));
        // failOnIncompleteCheck accepts a boolean, unlike PowerDNS 4.7.
        assert!(a("ifurlup('http://h/', {'192.0.2.1'}, {failOnIncompleteCheck=true})").is_ok());
    }

    #[test]
    fn candidates_must_be_addresses_of_the_record_family() {
        assert!(err("ifurlup('http://h/', {'A 192.0.2.1'})").contains("not an IP address"));
        assert!(err("ifurlup('http://h/', {'2001:db8::1'})").contains("IPv6"));
        assert!(err("ifurlup('ftp://h/', {'192.0.2.1'})").contains("http://"));
        assert!(err("ifurlup('http://h/', {})").contains("at least one"));
        assert!(err("ifurlup('http://h/', {'192.0.2.1', {'192.0.2.2'}})").contains("mix"));
        assert!(of("ifurlup('http://h/', {'192.0.2.1'})", RecordType::Cname).is_err());
    }

    #[test]
    fn unsupported_constructs_name_themselves() {
        for (body, needle) in [
            ("country('NL')", "evaluates to a boolean"),
            ("netmask({'10.0.0.0/8'})", "evaluates to a boolean"),
            (
                "dblookup('www.example.test', 1)",
                "unsupported function 'dblookup'",
            ),
            ("include('cfg')", "include() gives no value"),
            (
                "pickfirst({'192.0.2.1'})",
                "unsupported function 'pickfirst'",
            ),
            ("1+1", "operator '+'"),
            ("qname == 'x'", "operator '==' on 'qname'"),
            ("not true", "evaluates to a boolean"),
            ("bestwho", "variable 'bestwho'"),
            ("if x then return 1 end", "'if'"),
            ("function() end", "function definition"),
            ("who:toString()", "method call on 'who'"),
            ("  ;error('boom')", "unexpected ';'"),
            (";error('boom')", "unsupported function 'error'"),
            (";while true do end", "'while'"),
            (";for i=1,2 do end", "'for'"),
            (
                ";x = pickrandom({'192.0.2.1'}) return x",
                "assigned a function result",
            ),
            (";local a, b = 1, 2", "multiple assignment"),
            (";x = 1", "never returns a value"),
            (";return y", "variable 'y'"),
            (
                ";if pickrandom({'192.0.2.1'}) then return '192.0.2.1' end",
                "as a condition",
            ),
            (
                ";include('cfg') return '192.0.2.1'",
                "no LUA record of type LUA at 'cfg'",
            ),
            ("countryCode()..pickrandom({'x'})", "joined with '..'"),
            ("'a\\\\'..countryCode()", "backslash"),
            ("\"quoted\"", "double quote at column 1"),
            ("'a' \"b\"", "double quote at column 5"),
        ] {
            let e = err(body);
            assert!(e.contains(needle), "{body}: {e}");
        }
        assert!(err("nil").contains("nil"));
        assert!(err("true").contains("boolean"));
    }

    #[test]
    fn equality_on_geo_codes_and_literals() {
        let txt = |s: &str| Rule::Static(vec![encode_content(RecordType::Txt, s).unwrap()]);
        let t = |body: &str| of(body, RecordType::Txt).unwrap();
        // Either order; ~= negates.
        assert_eq!(
            t(";if countryCode() == 'nl' then return 'dutch' else return 'not dutch' end"),
            branch(
                geo(GeoField::Country, &["nl"]),
                txt("dutch"),
                txt("not dutch")
            )
        );
        assert_eq!(
            t(";if 'eu' ~= continentCode() then return 'a' end return 'b'"),
            branch(
                Cond::Not(Box::new(geo(GeoField::Continent, &["eu"]))),
                txt("a"),
                txt("b")
            )
        );
        // '--' is what an unknown client's code reads as.
        assert_eq!(
            t(";if regionCode() == '--' then return 'a' end return 'b'"),
            branch(
                Cond::Geo(GeoField::Region, vec![UNKNOWN]),
                txt("a"),
                txt("b")
            )
        );
        // Text a code never is: upper case (Lua compares bytes), too long, empty, 'unknown',
        // another type.
        for lit in ["'NL'", "'nederland'", "''", "'unknown'", "1", "nil", "true"] {
            assert_eq!(
                t(&format!(
                    ";if countryCode() == {lit} then return 'a' end return 'b'"
                )),
                txt("b"),
                "{lit}"
            );
            assert_eq!(
                t(&format!(
                    ";if countryCode() ~= {lit} then return 'a' end return 'b'"
                )),
                txt("a"),
                "{lit}"
            );
        }
        // Literals and variables fold at load, with Lua's rules (no string/number coercion).
        for (cond, holds) in [
            ("1 == 1.0", true),
            ("'1' == 1", false),
            ("x == 'nl'", true),
            ("x ~= 'nl'", false),
            ("nil == false", false),
            ("'a'..1 == 'a1'", true),
            ("y == countryCode()", false),
            ("1 == 1 == true", true),
        ] {
            assert_eq!(
                t(&format!(
                    ";x = 'nl' y = 'NL' if {cond} then return 'a' end return 'b'"
                )),
                txt(if holds { "a" } else { "b" }),
                "{cond}"
            );
        }
        // A variable holding a code function compares like the call.
        assert_eq!(
            t(";local c = countryCode() if c == 'de' or c == 'at' then return 'a' end return 'b'"),
            branch(
                Cond::Or(
                    Box::new(geo(GeoField::Country, &["de"])),
                    Box::new(geo(GeoField::Country, &["at"]))
                ),
                txt("a"),
                txt("b")
            )
        );
        // `a == b and x or y` as an expression body.
        assert_eq!(
            t("countryCode() == 'nl' and 'dutch' or 'other'"),
            branch(
                geo(GeoField::Country, &["nl"]),
                branch(geo(GeoField::Country, &["nl"]), txt("dutch"), Rule::Fail),
                txt("other")
            )
        );
    }

    #[test]
    fn other_comparisons_are_refused_by_name() {
        let err = |b: &str| of(b, RecordType::Txt).unwrap_err().to_string();
        for (body, needle) in [
            ("countryCode() == 'nl'", "evaluates to a boolean"),
            (
                ";if countryCode() < 'x' then return 'a' end return 'b'",
                "operator '<'",
            ),
            (";if 1 >= 2 then return 'a' end return 'b'", "operator '>='"),
            (
                ";if qname == 'x' then return 'a' end return 'b'",
                "operator '==' on 'qname'",
            ),
            (
                ";if 'x' ~= who then return 'a' end return 'b'",
                "operator '~=' on 'who'",
            ),
            (
                ";if countryCode() == continentCode() then return 'a' end return 'b'",
                "between a function call and a function call",
            ),
            (
                ";if {} == {} then return 'a' end return 'b'",
                "between a table and a table",
            ),
            (
                ";if latlon() == '0 0' then return 'a' end return 'b'",
                "operator '=='",
            ),
            (
                ";if countryCode(1) == 'nl' then return 'a' end return 'b'",
                "countryCode",
            ),
            (
                ";if 1 + 1 == 2 then return 'a' end return 'b'",
                "operator '+'",
            ),
        ] {
            let e = err(body);
            assert!(e.contains(needle), "{body}: {e}");
        }
    }

    fn inc<'a>(records: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<Vec<String>> + 'a {
        move |name: &str| {
            let found: Vec<String> = records
                .iter()
                .filter(|r| r.0 == name)
                .map(|r| r.1.to_string())
                .collect();
            (!found.is_empty()).then_some(found)
        }
    }

    fn block(body: &str, t: RecordType, includes: &[(&str, &str)]) -> Result<Rule, LuaError> {
        compile_with_includes(body, t, &defaults(), &inc(includes))
    }

    fn geo(field: GeoField, codes: &[&str]) -> Cond {
        Cond::Geo(
            field,
            codes.iter().map(|c| code(c.as_bytes()).unwrap()).collect(),
        )
    }

    fn branch(cond: Cond, then: Rule, other: Rule) -> Rule {
        Rule::Branch(Box::new(Branch { cond, then, other }))
    }

    fn st(ip: &str) -> Rule {
        Rule::Static(vec![v4(ip)])
    }

    #[test]
    fn statement_blocks_compile_to_decision_trees() {
        let body = ";if country('NL') then return '192.0.2.1' \
                    elseif continent({'EU','af'}) then return '192.0.2.2' \
                    else return '192.0.2.3' end";
        assert_eq!(
            a(body).unwrap(),
            branch(
                geo(GeoField::Country, &["nl"]),
                st("192.0.2.1"),
                branch(
                    geo(GeoField::Continent, &["eu", "af"]),
                    st("192.0.2.2"),
                    st("192.0.2.3")
                )
            )
        );
        // Without else, the statements after the if run; falling off the end is SERVFAIL.
        assert_eq!(
            a(";if region('nh') then return '192.0.2.1' end").unwrap(),
            branch(geo(GeoField::Region, &["nh"]), st("192.0.2.1"), Rule::Fail)
        );
        assert_eq!(
            a(";if not netmask({'10.0.0.0/8', '192.0.2.7'}) and asnum({64500, '64501', 'AS1'}) or false then return '192.0.2.1' end return '192.0.2.2'")
                .unwrap(),
            branch(
                Cond::And(
                    Box::new(Cond::Not(Box::new(Cond::Netmask(vec![
                        "10.0.0.0/8".parse().unwrap(),
                        "192.0.2.7/32".parse().unwrap()
                    ])))),
                    Box::new(Cond::Asn(vec![64500, 64501]))
                ),
                st("192.0.2.1"),
                st("192.0.2.2")
            )
        );
        // Constant conditions fold away; nested ifs.
        assert_eq!(
            a(";if true then if false then return '192.0.2.9' end return '192.0.2.1' end").unwrap(),
            st("192.0.2.1")
        );
        // `return` alone, or a boolean, is SERVFAIL on that path.
        assert_eq!(
            a(";if country('nl') then return end return '192.0.2.1'").unwrap(),
            branch(geo(GeoField::Country, &["nl"]), Rule::Fail, st("192.0.2.1"))
        );
    }

    #[test]
    fn variables_tables_and_includes_are_substituted() {
        let body = ";local eu = {'192.0.2.1', '192.0.2.2'}
                    settings = {pool = 'pool.example.', weights = {{1, '192.0.2.3'}}}
                    if continent('eu') then return pickrandom(eu) end
                    return pickwrandom(settings.weights)";
        assert_eq!(
            a(body).unwrap(),
            branch(
                geo(GeoField::Continent, &["eu"]),
                Rule::Random(vec![v4("192.0.2.1"), v4("192.0.2.2")]),
                Rule::WeightedRandom(Weighted {
                    entries: vec![(1, v4("192.0.2.3"))]
                })
            )
        );
        // include() runs the LUA records at the name first; their names are then visible.
        let cfg = [(
            "config",
            "EUips={'192.0.2.0/24','2001:db8::/32'} settings={cc={'nl','de'}} ; other = EUips[1]",
        )];
        assert_eq!(
            block(
                ";include('config') if netmask(EUips) or country(settings['cc']) then return other end return '192.0.2.9'",
                RecordType::Txt,
                &cfg
            )
            .unwrap(),
            branch(
                Cond::Or(
                    Box::new(Cond::Netmask(vec![
                        "192.0.2.0/24".parse().unwrap(),
                        "2001:db8::/32".parse().unwrap()
                    ])),
                    Box::new(geo(GeoField::Country, &["nl", "de"]))
                ),
                Rule::Static(vec![b"\x0c192.0.2.0/24".to_vec().into()]),
                Rule::Static(vec![b"\x09192.0.2.9".to_vec().into()])
            )
        );
        let e = block(
            ";include('config') return '192.0.2.1'",
            RecordType::A,
            &[("config", "return 1")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("may only assign"), "{e}");
        // A missing field is nil: SERVFAIL on that path.
        assert_eq!(
            a(";t = {} if country('nl') then return t.x end return '192.0.2.1'").unwrap(),
            branch(geo(GeoField::Country, &["nl"]), Rule::Fail, st("192.0.2.1"))
        );
    }

    #[test]
    fn locals_follow_lua_scoping() {
        // A local declared inside a branch ends with it; the global is seen again.
        assert_eq!(
            a(";x = '192.0.2.1' if country('nl') then local x = '192.0.2.2' end return x").unwrap(),
            st("192.0.2.1")
        );
        // A plain assignment inside a branch changes the global on that path only.
        assert_eq!(
            a(";x = '192.0.2.1' if country('nl') then x = '192.0.2.2' end return x").unwrap(),
            branch(
                geo(GeoField::Country, &["nl"]),
                st("192.0.2.2"),
                st("192.0.2.1")
            )
        );
        // A local shadows what an included record assigns; included locals stay inside it.
        let cfg = [("cfg", "local t = '192.0.2.7' x = t y = t")];
        assert_eq!(
            block(
                ";local x = '192.0.2.1' include('cfg') return {x, y}",
                RecordType::A,
                &cfg
            )
            .unwrap(),
            Rule::Static(vec![v4("192.0.2.1"), v4("192.0.2.7")])
        );
        let e = block(";include('cfg') return t", RecordType::A, &cfg).unwrap_err();
        assert!(e.to_string().contains("variable 't'"), "{e}");
    }

    #[test]
    fn and_or_idiom_and_concatenation() {
        assert_eq!(
            a("country('NL') and '192.0.2.1' or '192.0.2.2'").unwrap(),
            branch(
                geo(GeoField::Country, &["nl"]),
                branch(geo(GeoField::Country, &["nl"]), st("192.0.2.1"), Rule::Fail),
                st("192.0.2.2")
            )
        );
        assert_eq!(
            of("continentCode()..'.pool.example.test.'", RecordType::Cname).unwrap(),
            Rule::Text(vec![
                Piece::Code(GeoField::Continent),
                Piece::Lit(b".pool.example.test.".to_vec().into())
            ])
        );
        assert_eq!(
            of("'a'..1 ..'b'", RecordType::Txt).unwrap(),
            Rule::Static(vec![b"\x03a1b".to_vec().into()])
        );
        assert_eq!(
            of("latlon()", RecordType::Txt).unwrap(),
            Rule::Text(vec![Piece::LatLon])
        );
        assert_eq!(
            of("('cc-'..countryCode())", RecordType::Txt).unwrap(),
            Rule::Text(vec![
                Piece::Lit(b"cc-".to_vec().into()),
                Piece::Code(GeoField::Country)
            ])
        );
    }

    #[test]
    fn text_encoding_without_allocation() {
        let mut out = [0u8; 600];
        let n = encode_text_into(RecordType::Cname, b"eu.pool.example.", &mut out).unwrap();
        assert_eq!(&out[..n], b"\x02eu\x04pool\x07example\x00");
        let n = encode_text_into(RecordType::Cname, b"static", &mut out).unwrap();
        assert_eq!(&out[..n], b"\x06static\x00");
        assert!(encode_text_into(RecordType::Cname, b"a..b", &mut out).is_none());
        let n = encode_text_into(RecordType::A, b"192.0.2.1", &mut out).unwrap();
        assert_eq!(&out[..n], &[192, 0, 2, 1]);
        assert!(encode_text_into(RecordType::A, b"--", &mut out).is_none());
        let long = [b'x'; 300];
        let n = encode_text_into(RecordType::Txt, &long, &mut out).unwrap();
        assert_eq!((n, out[0], out[256]), (302, 255, 45));
        assert!(encode_text_into(RecordType::Txt, &long, &mut [0u8; 100]).is_none());
    }

    #[test]
    fn latlon_formats() {
        let mut out = [0u8; 96];
        let n = latlon_text(52_367_600, 4_904_100, &mut out);
        assert_eq!(&out[..n], b"52.367600 4.904100");
        let n = latlon_text(-23_550_500, -46_633_300, &mut out);
        assert_eq!(&out[..n], b"-23.550500 -46.633300");
        let n = latlon_text(0, 0, &mut out);
        assert_eq!(&out[..n], b"0.000000 0.000000");
        let n = latlonloc_text(0, 0, &mut out);
        // PowerDNS 4.7.3 (lua_conditionals.rs): the negated zero seconds print as "-0".
        assert_eq!(&out[..n], b"0 0 -0 S 0 0 -0 W 0.00m 1.00m 10000.00m 10.00m");
        let n = latlonloc_text(52_367_600, 4_904_100, &mut out);
        assert_eq!(
            &out[..n],
            b"52 22 3.36 N 4 54 14.76 E 0.00m 1.00m 10000.00m 10.00m"
        );
        let n = latlonloc_text(-33_868_800, -46_633_300, &mut out);
        assert_eq!(
            &out[..n],
            b"33 52 7.68 S 46 37 59.88 W 0.00m 1.00m 10000.00m 10.00m"
        );
    }

    #[test]
    fn syntax_errors_say_where() {
        let e = a("pickrandom({'192.0.2.1'").unwrap_err();
        assert_eq!(e.kind(), "syntax");
        assert!(e.to_string().contains("column 24"), "{e}");
        assert!(err("pickrandom({'192.0.2.1)").contains("column 13"));
        assert!(err("all({'192.0.2.1' '192.0.2.2'})").contains("column 18"));
        assert!(err("").contains("empty expression"));
        assert!(err("'a' 'b'").contains("after the expression"));
        assert!(err("all({'\\q'})").contains("invalid escape"));
        assert!(err("all({'192.0.2.1'}) $").contains("unexpected character '$'"));
        let deep = format!("{}{}", "{".repeat(40), "}".repeat(40));
        assert!(err(&deep).contains("nested deeper"));
    }

    proptest::proptest! {
        /// Bodies from zone transfers are untrusted: any text gives a rule or an error.
        #[test]
        fn compile_never_panics(body in "[a-z{}()\\[\\]',;=0-9.:+ \\-\\\\x\n]{0,80}") {
            for t in [RecordType::A, RecordType::Aaaa, RecordType::Cname, RecordType::Txt] {
                let _ = compile(&body, t, &defaults());
            }
        }

        #[test]
        fn txt_content_never_panics(value in "[ -~]{0,40}") {
            let _ = encode_content(RecordType::Txt, &value);
        }
    }

    #[test]
    fn lua_string_escapes() {
        assert_eq!(
            of("'a\\tb\\65\\x42\\''", RecordType::Txt).unwrap(),
            Rule::Static(vec![b"\x06a\tbAB'".to_vec().into()])
        );
        assert_eq!(lua_number(2.0), "2");
        assert_eq!(lua_number(-1.0), "-1");
        assert_eq!(lua_number(0.25), "0.25");
    }
}
