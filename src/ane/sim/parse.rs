//! A parser for MIL program text: tokens → syntax tree, with line numbers in every error.
//!
//! Accepts the grammar the Neural Engine's in-memory compiler is fed by the reference
//! trainers (docs/ANE.md, "The simulated device"): `program(<ver>)`, an optional attribute block
//! (`[buildInfo = dict<string, string>({{"k", "v"}, …})]`), one `func name<opset>(typed
//! params) { statements } -> (outputs);`. Both MIL dialects (docs/ANE_HARDWARE.md C9) parse
//! to the same tree: the shorthand one (`string("x")`, `fp16(0.5)`, `uint64(64)`, scalar types
//! written `fp16`) and CoreML's typed one (`tensor<string, []>("x")`, `tensor<fp16, []>(0.5)`,
//! scalar types written `tensor<fp16, []>`, `dict<tensor<string, []>, tensor<string, []>>`).
//! A rank-0 tensor type is a scalar in the tree; which style each line used is recorded in
//! [`Program::shorthand_lines`] / [`Program::typed_lines`] for the dialect rule. Statements are
//! `<type> <var> = <op>(<param> = <arg>, …)[<attr> = <literal>, …];` where an argument is a
//! variable, a tuple of variables `(a, b)` or an inline literal, and `const` /
//! `constexpr_*` keep their values in the attribute brackets. Literals: `fp16(0.5)`,
//! `int32(-1)`, `bool(true)`, `string("x")`, `uint64(64)`, hex floats (`0x1p-3`), tensor
//! literals with nested lists, and `BLOBFILE(path = string(…), offset = uint64(…))`.
//! Whitespace around `=`, `,` and brackets is free; comments (`//`) are skipped.

use anyhow::{anyhow, bail, Result};

/// Element types of the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dt {
    Fp16,
    Fp32,
    Int32,
    Int8,
    Uint64,
    Bool,
    Str,
}

impl Dt {
    fn parse(s: &str) -> Option<Dt> {
        Some(match s {
            "fp16" => Dt::Fp16,
            "fp32" => Dt::Fp32,
            "int32" => Dt::Int32,
            "int8" => Dt::Int8,
            "uint64" => Dt::Uint64,
            "bool" => Dt::Bool,
            "string" => Dt::Str,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Dt::Fp16 => "fp16",
            Dt::Fp32 => "fp32",
            Dt::Int32 => "int32",
            Dt::Int8 => "int8",
            Dt::Uint64 => "uint64",
            Dt::Bool => "bool",
            Dt::Str => "string",
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, Dt::Fp16 | Dt::Fp32)
    }
}

/// A declared type: a tensor with a shape, or a scalar.
#[derive(Clone, Debug, PartialEq)]
pub struct Ty {
    pub dt: Dt,
    /// `None` for a scalar.
    pub shape: Option<Vec<usize>>,
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.shape {
            None => write!(f, "{}", self.dt.name()),
            Some(s) => {
                let d: Vec<String> = s.iter().map(|x| x.to_string()).collect();
                write!(f, "tensor<{}, [{}]>", self.dt.name(), d.join(", "))
            }
        }
    }
}

/// A literal value.
#[derive(Clone, Debug, PartialEq)]
pub enum Lit {
    /// A number of any numeric dtype (kept as f64: exact for every fp16, int32 and the
    /// uint64 offsets that occur).
    Num(Dt, f64),
    Bool(bool),
    Str(String),
    /// A tensor given inline; values flattened row-major.
    Tensor(Ty, Vec<Lit>),
    /// A tensor stored in a weight blob.
    Blob {
        ty: Ty,
        path: String,
        offset: u64,
    },
}

/// An operation argument.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Var(String),
    Tuple(Vec<String>),
    Lit(Lit),
}

/// One statement `<ty> <var> = <op>(<args>)[<attrs>];`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub line: usize,
    pub ty: Ty,
    pub var: String,
    pub op: String,
    pub args: Vec<(String, Arg)>,
    pub attrs: Vec<(String, Lit)>,
}

impl Stmt {
    /// The `name = string("…")` label, if any.
    pub fn label(&self) -> Option<&str> {
        self.attrs.iter().find_map(|(k, v)| match (k.as_str(), v) {
            ("name", Lit::Str(s)) => Some(s.as_str()),
            _ => None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    /// Line of the `func` header.
    pub line: usize,
    pub name: String,
    pub opset: String,
    pub params: Vec<(Ty, String)>,
    pub body: Vec<Stmt>,
    pub outputs: Vec<String>,
    /// Line of the `} -> (outputs);` closing the function.
    pub outputs_line: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub version: String,
    /// Line of `program(<ver>)`.
    pub version_line: usize,
    /// The entries of every attribute dictionary (`buildInfo`'s key/value pairs).
    pub attrs: Vec<(String, String)>,
    /// Names of the program attributes (`buildInfo`) with their lines.
    pub attr_names: Vec<(String, usize)>,
    pub functions: Vec<Function>,
    /// Lines (ascending, each once) that use the shorthand scalar style: a scalar type written
    /// `fp16`/`string`/…, or a literal `string("x")`, `fp16(0.5)`, `uint64(64)`.
    pub shorthand_lines: Vec<usize>,
    /// Lines (ascending, each once) that use the typed scalar style: `tensor<string, []>`
    /// as a type or `tensor<string, []>("x")` as a literal.
    pub typed_lines: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Num(String),
    Str(String),
    Punct(char),
    Arrow,
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "'{s}'"),
            Tok::Num(s) => write!(f, "number {s}"),
            Tok::Str(s) => write!(f, "string \"{s}\""),
            Tok::Punct(c) => write!(f, "'{c}'"),
            Tok::Arrow => write!(f, "'->'"),
        }
    }
}

fn lex(text: &str) -> Result<Vec<(Tok, usize)>> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut line = 1;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\n' {
                        bail!("line {line}: unterminated string");
                    }
                    i += 1;
                }
                if i >= b.len() {
                    bail!("line {line}: unterminated string");
                }
                out.push((Tok::Str(text[start..i].to_string()), line));
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'>') => {
                out.push((Tok::Arrow, line));
                i += 2;
            }
            b'-' | b'+' | b'.' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < b.len() {
                    let d = b[i];
                    let prev = b[i - 1];
                    let ok = d.is_ascii_alphanumeric()
                        || d == b'.'
                        || ((d == b'-' || d == b'+') && matches!(prev, b'e' | b'E' | b'p' | b'P'));
                    if !ok {
                        break;
                    }
                    i += 1;
                }
                out.push((Tok::Num(text[start..i].to_string()), line));
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'@' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'@')
                {
                    i += 1;
                }
                out.push((Tok::Ident(text[start..i].to_string()), line));
            }
            b'(' | b')' | b'[' | b']' | b'{' | b'}' | b'<' | b'>' | b',' | b'=' | b';' => {
                out.push((Tok::Punct(c as char), line));
                i += 1;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                bail!("line {line}: unexpected character '{ch}'");
            }
        }
    }
    Ok(out)
}

/// Parses a numeric literal: decimal, exponent or C99 hex float (`0x1.8p-3`), or the
/// words `inf`/`nan` with an optional sign.
pub fn parse_number(s: &str) -> Option<f64> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let v = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        let (mant, exp) = match hex.find(['p', 'P']) {
            Some(p) => (&hex[..p], hex[p + 1..].parse::<i32>().ok()?),
            None => (hex, 0),
        };
        let (ip, fp) = match mant.find('.') {
            Some(d) => (&mant[..d], &mant[d + 1..]),
            None => (mant, ""),
        };
        if ip.is_empty() && fp.is_empty() {
            return None;
        }
        let mut v = 0f64;
        for ch in ip.chars() {
            v = v * 16.0 + ch.to_digit(16)? as f64;
        }
        let mut scale = 1.0 / 16.0;
        for ch in fp.chars() {
            v += ch.to_digit(16)? as f64 * scale;
            scale /= 16.0;
        }
        v * 2f64.powi(exp)
    } else {
        match body {
            "inf" => f64::INFINITY,
            "nan" => f64::NAN,
            _ => body.parse::<f64>().ok()?,
        }
    };
    Some(if neg { -v } else { v })
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    shorthand: Vec<usize>,
    typed: Vec<usize>,
}

fn note(lines: &mut Vec<usize>, line: usize) {
    if lines.last() != Some(&line) {
        lines.push(line);
    }
}

impl Parser {
    fn line(&self) -> usize {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map(|t| t.1)
            .unwrap_or(1)
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }
    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.toks.get(self.pos + k).map(|t| &t.0)
    }
    fn next(&mut self, what: &str) -> Result<Tok> {
        let t = self
            .toks
            .get(self.pos)
            .map(|t| t.0.clone())
            .ok_or_else(|| {
                anyhow!(
                    "line {}: unexpected end of program, expected {what}",
                    self.line()
                )
            })?;
        self.pos += 1;
        Ok(t)
    }
    fn err<T>(&self, msg: String) -> Result<T> {
        Err(anyhow!("line {}: {msg}", self.line()))
    }
    fn punct(&mut self, c: char) -> Result<()> {
        match self.peek() {
            Some(Tok::Punct(p)) if *p == c => {
                self.pos += 1;
                Ok(())
            }
            Some(t) => {
                let t = t.clone();
                self.err(format!("expected '{c}', found {t}"))
            }
            None => self.err(format!("expected '{c}', found the end of the program")),
        }
    }
    fn is_punct(&self, c: char) -> bool {
        matches!(self.peek(), Some(Tok::Punct(p)) if *p == c)
    }
    fn eat(&mut self, c: char) -> bool {
        if self.is_punct(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn ident(&mut self, what: &str) -> Result<String> {
        match self.next(what)? {
            Tok::Ident(s) => Ok(s),
            t => {
                self.pos -= 1;
                self.err(format!("expected {what}, found {t}"))
            }
        }
    }
    fn keyword(&mut self, kw: &str) -> Result<()> {
        let s = self.ident(&format!("'{kw}'"))?;
        if s != kw {
            self.pos -= 1;
            return self.err(format!("expected '{kw}', found '{s}'"));
        }
        Ok(())
    }
    fn string(&mut self) -> Result<String> {
        match self.next("a string")? {
            Tok::Str(s) => Ok(s),
            t => {
                self.pos -= 1;
                self.err(format!("expected a quoted string, found {t}"))
            }
        }
    }

    fn dtype(&mut self) -> Result<Dt> {
        let s = self.ident("a type")?;
        Dt::parse(&s).map_or_else(
            || {
                self.pos -= 1;
                self.err(format!(
                    "unknown type '{s}' (known: fp16, fp32, int32, int8, uint64, bool, string, tensor<…>)"
                ))
            },
            Ok,
        )
    }

    /// A type; a rank-0 tensor type (`tensor<fp16, []>`) is the scalar type `fp16`. Records
    /// the scalar style of the line.
    fn ty(&mut self) -> Result<Ty> {
        let line = self.line();
        if matches!(self.peek(), Some(Tok::Ident(s)) if s == "tensor") {
            self.pos += 1;
            self.punct('<')?;
            let dt = self.dtype()?;
            self.punct(',')?;
            self.punct('[')?;
            let mut shape = Vec::new();
            if !self.is_punct(']') {
                loop {
                    let t = self.next("a dimension")?;
                    let Tok::Num(n) = &t else {
                        self.pos -= 1;
                        return self.err(format!("expected a dimension, found {t}"));
                    };
                    let d: usize = n.parse().map_err(|_| {
                        anyhow!(
                            "line {}: dimension {n} is not a non-negative integer",
                            self.line()
                        )
                    })?;
                    if d > 1 << 31 {
                        return self.err(format!("dimension {d} is implausibly large"));
                    }
                    shape.push(d);
                    if !self.eat(',') {
                        break;
                    }
                }
            }
            self.punct(']')?;
            self.punct('>')?;
            let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if elems.is_none_or(|e| e > 1 << 32) {
                return self.err(format!("tensor shape {shape:?} is implausibly large"));
            }
            if shape.is_empty() {
                note(&mut self.typed, line);
                return Ok(Ty { dt, shape: None });
            }
            Ok(Ty {
                dt,
                shape: Some(shape),
            })
        } else {
            let dt = self.dtype()?;
            note(&mut self.shorthand, line);
            Ok(Ty { dt, shape: None })
        }
    }

    /// A scalar inside `dtype( … )`.
    fn scalar_body(&mut self, dt: Dt) -> Result<Lit> {
        match dt {
            Dt::Bool => {
                let s = self.ident("true or false")?;
                match s.as_str() {
                    "true" => Ok(Lit::Bool(true)),
                    "false" => Ok(Lit::Bool(false)),
                    _ => self.err(format!("expected true or false, found '{s}'")),
                }
            }
            Dt::Str => Ok(Lit::Str(self.string()?)),
            _ => {
                let t = self.next("a number")?;
                let s = match &t {
                    Tok::Num(s) => s.clone(),
                    Tok::Ident(s) if s == "inf" || s == "nan" => s.clone(),
                    _ => {
                        self.pos -= 1;
                        return self.err(format!("expected a number, found {t}"));
                    }
                };
                let v = parse_number(&s)
                    .ok_or_else(|| anyhow!("line {}: '{s}' is not a number", self.line()))?;
                if !dt.is_float() && (v.fract() != 0.0 || !v.is_finite()) {
                    return self.err(format!("{} literal {s} is not an integer", dt.name()));
                }
                Ok(Lit::Num(dt, v))
            }
        }
    }

    /// Nested list of scalars, flattened.
    fn list(&mut self, dt: Dt, out: &mut Vec<Lit>) -> Result<()> {
        self.punct('[')?;
        if self.eat(']') {
            return Ok(());
        }
        loop {
            if self.is_punct('[') {
                self.list(dt, out)?;
            } else {
                out.push(self.scalar_body(dt)?);
            }
            if !self.eat(',') {
                break;
            }
        }
        self.punct(']')
    }

    fn literal(&mut self) -> Result<Lit> {
        let ty = self.ty()?;
        self.punct('(')?;
        let lit = match &ty.shape {
            None => self.scalar_body(ty.dt)?,
            Some(shape) => {
                if matches!(self.peek(), Some(Tok::Ident(s)) if s == "BLOBFILE") {
                    self.pos += 1;
                    self.punct('(')?;
                    let (mut path, mut offset) = (None, None);
                    loop {
                        let k = self.ident("path or offset")?;
                        self.punct('=')?;
                        let v = self.literal()?;
                        match (k.as_str(), v) {
                            ("path", Lit::Str(s)) => path = Some(s),
                            ("offset", Lit::Num(Dt::Uint64 | Dt::Int32, o)) if o >= 0.0 => {
                                offset = Some(o as u64)
                            }
                            (k, v) => {
                                return self.err(format!(
                                    "BLOBFILE takes path = string(…) and offset = uint64(…), got {k} = {v:?}"
                                ))
                            }
                        }
                        if !self.eat(',') {
                            break;
                        }
                    }
                    self.punct(')')?;
                    match (path, offset) {
                        (Some(path), Some(offset)) => Lit::Blob {
                            ty: ty.clone(),
                            path,
                            offset,
                        },
                        _ => return self.err("BLOBFILE needs both path and offset".into()),
                    }
                } else {
                    let mut vals = Vec::new();
                    self.list(ty.dt, &mut vals)?;
                    let n: usize = shape.iter().product();
                    if vals.len() != n {
                        return self.err(format!(
                            "tensor literal {ty} holds {} values, its shape needs {n}",
                            vals.len()
                        ));
                    }
                    Lit::Tensor(ty.clone(), vals)
                }
            }
        };
        self.punct(')')?;
        Ok(lit)
    }

    /// Whether the tokens ahead start a literal (`type(`).
    fn at_literal(&self) -> bool {
        match (self.peek(), self.peek_at(1)) {
            (Some(Tok::Ident(s)), Some(Tok::Punct(p))) => {
                (s == "tensor" && *p == '<') || (Dt::parse(s).is_some() && *p == '(')
            }
            _ => false,
        }
    }

    fn arg(&mut self) -> Result<Arg> {
        if self.eat('(') {
            let mut vs = Vec::new();
            if !self.is_punct(')') {
                loop {
                    vs.push(self.ident("a variable")?);
                    if !self.eat(',') {
                        break;
                    }
                }
            }
            self.punct(')')?;
            return Ok(Arg::Tuple(vs));
        }
        if self.at_literal() {
            return Ok(Arg::Lit(self.literal()?));
        }
        match self.peek() {
            Some(Tok::Ident(s)) if s == "true" || s == "false" => {
                let b = s == "true";
                self.pos += 1;
                Ok(Arg::Lit(Lit::Bool(b)))
            }
            Some(Tok::Num(_)) => {
                let t = self.next("a number")?;
                let Tok::Num(s) = t else { unreachable!() };
                let v = parse_number(&s)
                    .ok_or_else(|| anyhow!("line {}: '{s}' is not a number", self.line()))?;
                let hex = s.trim_start_matches(['-', '+']).starts_with("0x");
                let float = if hex {
                    s.contains(['p', 'P', '.'])
                } else {
                    s.contains(['.', 'e', 'E'])
                };
                let dt = if float { Dt::Fp32 } else { Dt::Int32 };
                Ok(Arg::Lit(Lit::Num(dt, v)))
            }
            _ => Ok(Arg::Var(self.ident("a variable, tuple or literal")?)),
        }
    }

    fn stmt(&mut self) -> Result<Stmt> {
        let line = self.line();
        let ty = self.ty()?;
        let var = self.ident("a variable name")?;
        self.punct('=')?;
        let op = self.ident("an operation name")?;
        self.punct('(')?;
        let mut args = Vec::new();
        if !self.is_punct(')') {
            loop {
                let k = self.ident("a parameter name")?;
                self.punct('=')?;
                let v = self.arg()?;
                if args.iter().any(|(a, _): &(String, Arg)| *a == k) {
                    return self.err(format!("parameter {k} given twice"));
                }
                args.push((k, v));
                if !self.eat(',') {
                    break;
                }
            }
        }
        self.punct(')')?;
        let mut attrs = Vec::new();
        if self.eat('[') {
            if !self.is_punct(']') {
                loop {
                    let k = self.ident("an attribute name")?;
                    self.punct('=')?;
                    let v = self.literal()?;
                    attrs.push((k, v));
                    if !self.eat(',') {
                        break;
                    }
                }
            }
            self.punct(']')?;
        }
        self.punct(';')?;
        Ok(Stmt {
            line,
            ty,
            var,
            op,
            args,
            attrs,
        })
    }

    fn function(&mut self) -> Result<Function> {
        let line = self.line();
        self.keyword("func")?;
        let name = self.ident("a function name")?;
        self.punct('<')?;
        let opset = self.ident("an opset such as ios18")?;
        self.punct('>')?;
        self.punct('(')?;
        let mut params = Vec::new();
        if !self.is_punct(')') {
            loop {
                let ty = self.ty()?;
                let n = self.ident("a parameter name")?;
                params.push((ty, n));
                if !self.eat(',') {
                    break;
                }
            }
        }
        self.punct(')')?;
        self.punct('{')?;
        let mut body = Vec::new();
        while !self.is_punct('}') {
            if self.peek().is_none() {
                return self.err(format!("function {name} is not closed with '}}'"));
            }
            body.push(self.stmt()?);
        }
        let outputs_line = self.line();
        self.punct('}')?;
        match self.next("'->' and the outputs")? {
            Tok::Arrow => {}
            t => {
                self.pos -= 1;
                return self.err(format!(
                    "expected '->' and the outputs after the function body, found {t}"
                ));
            }
        }
        self.punct('(')?;
        let mut outputs = Vec::new();
        loop {
            outputs.push(self.ident("an output variable")?);
            if !self.eat(',') {
                break;
            }
        }
        self.punct(')')?;
        self.punct(';')?;
        Ok(Function {
            line,
            name,
            opset,
            params,
            body,
            outputs,
            outputs_line,
        })
    }

    fn program(&mut self) -> Result<Program> {
        let version_line = self.line();
        self.keyword("program")?;
        self.punct('(')?;
        let version = match self.next("a version")? {
            Tok::Num(s) => s,
            t => return self.err(format!("expected a program version, found {t}")),
        };
        self.punct(')')?;
        let mut attrs = Vec::new();
        let mut attr_names = Vec::new();
        if self.eat('[') {
            loop {
                let line = self.line();
                let key = self.ident("an attribute name")?;
                attr_names.push((key, line));
                self.punct('=')?;
                // dict<string, string>({{"k", "v"}, …}), or with tensor<string, []> types.
                self.keyword("dict")?;
                self.punct('<')?;
                for sep in [',', '>'] {
                    let t = self.ty()?;
                    if t.shape.is_some() || t.dt != Dt::Str {
                        return self.err(format!("attribute dictionaries map strings, not {t}"));
                    }
                    self.punct(sep)?;
                }
                self.punct('(')?;
                self.punct('{')?;
                if !self.is_punct('}') {
                    loop {
                        self.punct('{')?;
                        let k = self.string()?;
                        self.punct(',')?;
                        let v = self.string()?;
                        self.punct('}')?;
                        attrs.push((k, v));
                        if !self.eat(',') {
                            break;
                        }
                    }
                }
                self.punct('}')?;
                self.punct(')')?;
                if !self.eat(',') {
                    break;
                }
            }
            self.punct(']')?;
        }
        self.punct('{')?;
        let mut functions = Vec::new();
        while !self.is_punct('}') {
            if self.peek().is_none() {
                return self.err("program body is not closed with '}'".into());
            }
            functions.push(self.function()?);
        }
        self.punct('}')?;
        if let Some(t) = self.peek() {
            let t = t.clone();
            return self.err(format!("unexpected {t} after the end of the program"));
        }
        Ok(Program {
            version,
            version_line,
            attrs,
            attr_names,
            functions,
            shorthand_lines: std::mem::take(&mut self.shorthand),
            typed_lines: std::mem::take(&mut self.typed),
        })
    }
}

/// Parses MIL program text.
pub fn parse(text: &str) -> Result<Program> {
    let toks = lex(text)?;
    let mut p = Parser {
        toks,
        pos: 0,
        shorthand: Vec::new(),
        typed: Vec::new(),
    };
    let mut prog = p.program()?;
    prog.shorthand_lines.sort_unstable();
    prog.shorthand_lines.dedup();
    prog.typed_lines.sort_unstable();
    prog.typed_lines.dedup();
    Ok(prog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0x1p-3"), Some(0.125));
        assert_eq!(parse_number("-0x1.8p1"), Some(-3.0));
        assert_eq!(parse_number("0.00001"), Some(1e-5));
        assert_eq!(parse_number("1e-05"), Some(1e-5));
        assert_eq!(parse_number("-65504"), Some(-65504.0));
        assert_eq!(parse_number("-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_number("1x"), None);
    }

    #[test]
    fn parses_the_reference_forms() {
        // Spacing as the reference mixes it; label ≠ variable name; inline literal argument;
        // hex float; nested tensor literal; uint64 offset.
        let t = r#"program(1.3)
[buildInfo = dict<string, string>({{"coremlc-version", "3505.4.1"}, {"k", ""}})]
{
    func main<ios18>(tensor<fp16, [1, 4, 1, 2]> x) {
        fp16 sc=const()[name=string("sc"),val=fp16(0x1p-3)];
        tensor<int32, [2, 2]> m = const()[name = string("m"), val = tensor<int32, [2, 2]>([[0, -1], [2, 3]])];
        tensor<fp16, [4,4,1,1]> W = const()[name=string("W"), val=tensor<fp16, [4,4,1,1]>(BLOBFILE(path=string("@model_path/weights/w.bin"), offset=uint64(64)))];
        tensor<fp16, [1, 4, 1, 2]> y = mul(x = x, y = sc)[name = string("scaled")];
        tensor<fp16, [1, 4, 1, 2]> z = matmul(x=y, y=y, transpose_x = false, transpose_y = true)[name=string("mm")];
    } -> (y);
}
"#;
        let p = parse(t).unwrap();
        assert_eq!(p.version, "1.3");
        assert_eq!(p.attrs[0], ("coremlc-version".into(), "3505.4.1".into()));
        let f = &p.functions[0];
        assert_eq!((f.name.as_str(), f.opset.as_str()), ("main", "ios18"));
        assert_eq!(f.params[0].1, "x");
        assert_eq!(f.body.len(), 5);
        assert_eq!(f.body[0].attrs[1].1, Lit::Num(Dt::Fp16, 0.125));
        let Lit::Tensor(_, v) = &f.body[1].attrs[1].1 else {
            panic!()
        };
        assert_eq!(v[1], Lit::Num(Dt::Int32, -1.0));
        assert_eq!(
            f.body[2].attrs[1].1,
            Lit::Blob {
                ty: Ty {
                    dt: Dt::Fp16,
                    shape: Some(vec![4, 4, 1, 1])
                },
                path: "@model_path/weights/w.bin".into(),
                offset: 64
            }
        );
        assert_eq!(f.body[3].label(), Some("scaled"));
        assert_eq!(f.body[3].var, "y");
        assert_eq!(f.body[4].args[3].1, Arg::Lit(Lit::Bool(true)));
        assert_eq!(f.outputs, vec!["y".to_string()]);
    }

    #[test]
    fn malformed_programs_name_the_line() {
        let e = parse("program(1.3)\n{\n func main<ios18>(tensor<fp16, [1,2,1,2]> x) {\n  tensor<fp16, [1,2,1,2]> y = mul(x = x, y = x)[name = string(\"y\")]\n } -> (y);\n}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5") && e.contains("expected ';'"), "{e}");
        let e = parse("program(1.3)\n{ func main<ios18>() { } -> (y); ")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'}'"), "{e}");
        let e = parse("program(1.3) { func main<ios18>(tensor<fp17, [1]> x) {} -> (x); }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown type 'fp17'"), "{e}");
        let e = parse("program(1.3) { func main<ios18>(tensor<fp16, [1]> x) { tensor<int32, [3]> v = const()[val = tensor<int32, [3]>([1, 2])]; } -> (x); }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds 2 values"), "{e}");
    }

    #[test]
    fn both_dialects_parse_to_the_same_tree() {
        let short = r#"program(1.3)
[buildInfo = dict<string, string>({{"coremlc-version", "3505.4.1"}})]
{
    func main<ios18>(tensor<fp16, [1, 4, 1, 2]> x) {
        fp16 sc = const()[name = string("sc"), val = fp16(0.5)];
        bool f = const()[name = string("f"), val = bool(false)];
        tensor<fp16, [4, 4, 1, 1]> W = const()[name = string("W"), val = tensor<fp16, [4, 4, 1, 1]>(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64(64)))];
        tensor<fp16, [1, 4, 1, 2]> y = mul(x = x, y = sc)[name = string("y")];
    } -> (y);
}
"#;
        let typed = r#"program(1.0)
[buildInfo = dict<tensor<string, []>, tensor<string, []>>({{"coremlc-version", "3505.4.1"}})]
{
    func main<ios16>(tensor<fp16, [1, 4, 1, 2]> x) {
        tensor<fp16, []> sc = const()[name = tensor<string, []>("sc"), val = tensor<fp16, []>(0.5)];
        tensor<bool, []> f = const()[name = tensor<string, []>("f"), val = tensor<bool, []>(false)];
        tensor<fp16, [4, 4, 1, 1]> W = const()[name = tensor<string, []>("W"), val = tensor<fp16, [4, 4, 1, 1]>(BLOBFILE(path = tensor<string, []>("@model_path/weights/w.bin"), offset = tensor<uint64, []>(64)))];
        tensor<fp16, [1, 4, 1, 2]> y = mul(x = x, y = sc)[name = tensor<string, []>("y")];
    } -> (y);
}
"#;
        let (a, b) = (parse(short).unwrap(), parse(typed).unwrap());
        assert_eq!(a.attrs, b.attrs);
        assert_eq!(a.attr_names, vec![("buildInfo".to_string(), 2)]);
        assert_eq!(a.functions[0].body, b.functions[0].body);
        assert_eq!(a.functions[0].params, b.functions[0].params);
        assert_eq!((a.functions[0].line, a.functions[0].outputs_line), (4, 9));
        assert_eq!(a.shorthand_lines, vec![2, 5, 6, 7, 8]);
        assert!(a.typed_lines.is_empty());
        assert_eq!(b.typed_lines, vec![2, 5, 6, 7, 8]);
        assert!(b.shorthand_lines.is_empty());
        assert_eq!((a.version.as_str(), b.version.as_str()), ("1.3", "1.0"));
    }
}
