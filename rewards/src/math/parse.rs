//! A small parser for answers written in LaTeX or plain text, into an [`Expr`] tree that
//! can be evaluated numerically. It covers what Math-Verify's latex2sympy path is used for in
//! practice: numbers (decimal, scientific, `\times 10^{k}`), `\frac`/`\dfrac`/`\tfrac`/`\cfrac`
//! (also malformed `\frac13`), `\sqrt[n]{x}`, powers, implicit multiplication, `\pi`, `e`,
//! `\infty`, common functions, tuples and intervals, sets, unions, equations, `\text{}`
//! answers, and `pmatrix`/`bmatrix` matrices.

use std::collections::BTreeSet;

use num_bigint::BigInt;
use num_traits::ToPrimitive;

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// An integer as written (any size): exact, as are fractions and powers built from it.
    Int(BigInt),
    /// An inexact number: a decimal (`0.5`, `2e-3`, read as a float, as Math-Verify does),
    /// or a constant (`\pi`, `e`, `\infty`).
    Num(f64),
    /// A free variable (`x`, `a_1`).
    Var(String),
    /// `-a`.
    Neg(Box<Expr>),
    /// `a + b`.
    Add(Box<Expr>, Box<Expr>),
    /// `a * b`.
    Mul(Box<Expr>, Box<Expr>),
    /// `a / b`.
    Div(Box<Expr>, Box<Expr>),
    /// `a ^ b`.
    Pow(Box<Expr>, Box<Expr>),
    /// A named function of one argument (`sin`, `ln`, `sqrt`, `abs`, ...).
    Func(String, Box<Expr>),
    /// `n!`.
    Factorial(Box<Expr>),
    /// A bracketed list: a point `(a, b)` or an interval `[a, b)`; brackets are kept.
    Tuple {
        /// Opening bracket, `(` or `[`.
        open: char,
        /// Closing bracket, `)` or `]`.
        close: char,
        /// The items.
        items: Vec<Expr>,
    },
    /// An unordered collection: `\{a, b\}` or a bare list `a, b`.
    Set(Vec<Expr>),
    /// `A \cup B`.
    Union(Vec<Expr>),
    /// An equality chain `a = b = c` (at least two members).
    Eq(Vec<Expr>),
    /// An inequality, canonical: `<` (for `<` and `>`), `≤` (for `≤` and `≥`) or `≠`;
    /// `a > b` is stored as `b < a`.
    Rel {
        /// `<`, `≤` or `≠`.
        op: char,
        /// Left side.
        lhs: Box<Expr>,
        /// Right side.
        rhs: Box<Expr>,
    },
    /// A chain of inequalities `a < b ≤ c`, one [`Expr::Rel`] per link.
    Chain(Vec<Expr>),
    /// A textual answer (`\text{Evelyn}`), lower-cased and trimmed.
    Text(String),
    /// A matrix, row-major.
    Matrix(Vec<Vec<Expr>>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A numeral as written (`204`, `0.5`, `2.5e3`).
    Num(String),
    /// A letter run or a `\command` (without the backslash, marked by `cmd`).
    Word { text: String, cmd: bool },
    /// A one-character operator or bracket; `{`/`}` escaped as `\{`/`\}` become `⦃`/`⦄`.
    Sym(char),
    /// A `\text{...}`-style group.
    Text(String),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            // Scientific notation: 1e-3, 2.5E+10 (only when digits follow the exponent).
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                    i = j;
                }
            }
            let text: String = chars[start..i].iter().collect();
            numeral(&text)?;
            out.push(Tok::Num(text));
        } else if c == '\\' {
            let next = chars.get(i + 1).copied();
            match next {
                Some(n) if n.is_ascii_alphabetic() => {
                    let start = i + 1;
                    i += 1;
                    while i < chars.len() && chars[i].is_ascii_alphabetic() {
                        i += 1;
                    }
                    let name: String = chars[start..i].iter().collect();
                    if matches!(
                        name.as_str(),
                        "left"
                            | "right"
                            | "bigl"
                            | "bigr"
                            | "Bigl"
                            | "Bigr"
                            | "big"
                            | "Big"
                            | "displaystyle"
                            | "quad"
                            | "qquad"
                    ) {
                        continue;
                    }
                    let sym = match name.as_str() {
                        "le" | "leq" | "leqslant" => Some('≤'),
                        "ge" | "geq" | "geqslant" => Some('≥'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "ne" | "neq" => Some('≠'),
                        "approx" => Some('≈'),
                        "pm" => Some('±'),
                        "in" => Some('∈'),
                        _ => None,
                    };
                    if let Some(c) = sym {
                        out.push(Tok::Sym(c));
                        continue;
                    }
                    if matches!(
                        name.as_str(),
                        "text"
                            | "textbf"
                            | "textnormal"
                            | "mathrm"
                            | "mbox"
                            | "textit"
                            | "mathbf"
                            | "operatorname"
                    ) {
                        let (content, end) = read_group(&chars, i)?;
                        i = end;
                        if name == "mathrm" || name == "mathbf" || name == "operatorname" {
                            // Treated as ordinary math content (e.g. \mathrm{e}).
                            out.extend(tokenize(&content)?);
                        } else {
                            out.push(Tok::Text(content));
                        }
                    } else {
                        out.push(Tok::Word {
                            text: name,
                            cmd: true,
                        });
                    }
                }
                Some('{') => {
                    out.push(Tok::Sym('⦃'));
                    i += 2;
                }
                Some('}') => {
                    out.push(Tok::Sym('⦄'));
                    i += 2;
                }
                Some('\\') => {
                    out.push(Tok::Sym(';')); // matrix row separator
                    i += 2;
                }
                _ => i += 2, // spacing commands \, \; \! \  and escapes
            }
        } else if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_alphabetic() {
                i += 1;
            }
            out.push(Tok::Word {
                text: chars[start..i].iter().collect(),
                cmd: false,
            });
        } else if "+-*/^_()[]{},=!|&<>".contains(c) {
            let next = chars.get(i + 1).copied();
            let two = match (c, next) {
                ('*', Some('*')) => Some('^'),
                ('<', Some('=')) => Some('≤'),
                ('>', Some('=')) => Some('≥'),
                ('!', Some('=')) => Some('≠'),
                _ => None,
            };
            if let Some(t) = two {
                out.push(Tok::Sym(t));
                i += 2;
            } else {
                out.push(Tok::Sym(c));
                i += 1;
            }
        } else if c == '·' || c == '×' {
            out.push(Tok::Sym('*'));
            i += 1;
        } else if c == '÷' {
            out.push(Tok::Sym('/'));
            i += 1;
        } else if c == '−' {
            out.push(Tok::Sym('-'));
            i += 1;
        } else if "≤≥≠≈±".contains(c) {
            out.push(Tok::Sym(c));
            i += 1;
        } else if c == 'π' {
            out.push(Tok::Word {
                text: "pi".into(),
                cmd: true,
            });
            i += 1;
        } else if c == '∞' {
            out.push(Tok::Word {
                text: "infty".into(),
                cmd: true,
            });
            i += 1;
        } else if c == '√' {
            out.push(Tok::Word {
                text: "sqrt".into(),
                cmd: true,
            });
            i += 1;
        } else {
            return Err(format!("unexpected character `{c}`"));
        }
    }
    Ok(out)
}

/// Reads a `{...}` group starting at `i` (whitespace skipped); returns its content and the
/// index after the closing brace.
fn read_group(chars: &[char], mut i: usize) -> Result<(String, usize), String> {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    if chars.get(i) != Some(&'{') {
        return Err("expected `{` after text command".into());
    }
    let mut depth = 0usize;
    let start = i + 1;
    while i < chars.len() {
        match chars[i] {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Ok((chars[start..i].iter().collect(), i + 1));
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err("unbalanced braces".into())
}

const FUNCS: &[&str] = &[
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
    "ln", "log", "exp",
];

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn peek_sym(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Sym(c))
    }
    fn peek_cmd(&self, name: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word { text, cmd: true }) if text == name)
    }
    fn eat_sym(&mut self, c: char) -> bool {
        if self.peek_sym(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_sym(&mut self, c: char) -> Result<(), String> {
        if self.eat_sym(c) {
            Ok(())
        } else {
            Err(format!("expected `{c}` at token {}", self.pos))
        }
    }

    /// Top level: unions, lists, equations.
    fn parse_top(&mut self) -> Result<Expr, String> {
        let first = self.parse_union()?;
        if self.peek_sym(',') {
            let mut items = vec![first];
            while self.eat_sym(',') {
                items.push(self.parse_union()?);
            }
            return Ok(Expr::Set(items));
        }
        Ok(first)
    }

    fn parse_union(&mut self) -> Result<Expr, String> {
        let first = self.parse_relation()?;
        if self.peek_cmd("cup") {
            let mut items = vec![first];
            while self.peek_cmd("cup") {
                self.pos += 1;
                items.push(self.parse_relation()?);
            }
            return Ok(Expr::Union(items));
        }
        Ok(first)
    }

    fn parse_relation(&mut self) -> Result<Expr, String> {
        let mut items = vec![self.parse_additive()?];
        let mut ops = Vec::new();
        while let Some(Tok::Sym(c @ ('=' | '<' | '>' | '≤' | '≥' | '≠' | '≈' | '∈'))) =
            self.peek().cloned()
        {
            self.pos += 1;
            // `x \in [1, 2]` states what x is, as `x = [1, 2]` would (Math-Verify reads it so).
            ops.push(if c == '∈' { '=' } else { c });
            items.push(self.parse_additive()?);
        }
        if ops.is_empty() {
            return Ok(items.pop().unwrap_or(Expr::Num(f64::NAN)));
        }
        // `x ≈ 11` is `x = 11`; otherwise an approximation ends the chain:
        // `x = 1/3 ≈ 0.33` is `x = 1/3`.
        if ops[0] == '≈' {
            ops[0] = '=';
        }
        if let Some(k) = ops.iter().position(|&o| o == '≈') {
            ops.truncate(k);
            items.truncate(k + 1);
        }
        if ops.iter().all(|&o| o == '=') {
            return Ok(Expr::Eq(items));
        }
        if ops.contains(&'=') {
            return Err("mixed equality and inequality".into());
        }
        let mut rels: Vec<Expr> = ops
            .iter()
            .zip(items.windows(2))
            .map(|(&op, w)| {
                let (a, b) = (Box::new(w[0].clone()), Box::new(w[1].clone()));
                match op {
                    '<' => Expr::Rel {
                        op: '<',
                        lhs: a,
                        rhs: b,
                    },
                    '>' => Expr::Rel {
                        op: '<',
                        lhs: b,
                        rhs: a,
                    },
                    '≤' => Expr::Rel {
                        op: '≤',
                        lhs: a,
                        rhs: b,
                    },
                    '≥' => Expr::Rel {
                        op: '≤',
                        lhs: b,
                        rhs: a,
                    },
                    _ => Expr::Rel {
                        op: '≠',
                        lhs: a,
                        rhs: b,
                    },
                }
            })
            .collect();
        Ok(if rels.len() == 1 {
            rels.pop().unwrap_or(Expr::Num(f64::NAN))
        } else {
            Expr::Chain(rels)
        })
    }

    fn parse_additive(&mut self) -> Result<Expr, String> {
        let mut acc = if self.eat_sym('-') {
            Expr::Neg(Box::new(self.parse_term()?))
        } else if self.eat_sym('±') {
            // A leading `± b` is the set {b, -b}, as `a ± b` below.
            let t = self.parse_term()?;
            Expr::Set(vec![t.clone(), Expr::Neg(Box::new(t))])
        } else {
            self.eat_sym('+');
            self.parse_term()?
        };
        loop {
            if self.eat_sym('+') {
                let t = self.parse_term()?;
                acc = Expr::Add(Box::new(acc), Box::new(t));
            } else if self.eat_sym('-') {
                let t = self.parse_term()?;
                acc = Expr::Add(Box::new(acc), Box::new(Expr::Neg(Box::new(t))));
            } else if self.eat_sym('±') {
                // `a ± b` is the set {a + b, a - b}; see `lift_sets`.
                let t = self.parse_term()?;
                let plus = Expr::Add(Box::new(acc.clone()), Box::new(t.clone()));
                let minus = Expr::Add(Box::new(acc), Box::new(Expr::Neg(Box::new(t))));
                acc = Expr::Set(vec![plus, minus]);
            } else {
                return Ok(acc);
            }
        }
    }

    fn starts_primary(&self) -> bool {
        match self.peek() {
            Some(Tok::Num(_)) => true,
            Some(Tok::Word { text, cmd }) => {
                !(*cmd
                    && matches!(
                        text.as_str(),
                        "cup" | "cdot" | "times" | "div" | "right" | "end"
                    ))
            }
            Some(Tok::Sym(c)) => matches!(c, '(' | '{' | '⦃' | '|'),
            Some(Tok::Text(_)) => false,
            None => false,
        }
    }

    fn parse_term(&mut self) -> Result<Expr, String> {
        let mut acc = self.parse_unary()?;
        loop {
            if self.eat_sym('*') || self.eat_cmd("cdot") || self.eat_cmd("times") {
                let r = self.parse_unary()?;
                acc = Expr::Mul(Box::new(acc), Box::new(r));
            } else if self.eat_sym('/') || self.eat_cmd("div") {
                let r = self.parse_unary()?;
                acc = Expr::Div(Box::new(acc), Box::new(r));
            } else if self.starts_primary() {
                // Implicit multiplication, with one exception: a whole number written right
                // before a numeric \frac is a mixed number (`2\frac{1}{2}` = 5/2).
                let mixed = matches!(acc, Expr::Int(_)) && self.peek_frac_numeric();
                let r = self.parse_power()?;
                acc = if mixed {
                    Expr::Add(Box::new(acc), Box::new(r))
                } else {
                    Expr::Mul(Box::new(acc), Box::new(r))
                };
            } else {
                return Ok(acc);
            }
        }
    }

    fn peek_frac_numeric(&self) -> bool {
        let is_frac =
            matches!(self.peek(), Some(Tok::Word { text, cmd: true }) if text.ends_with("frac"));
        let toks = &self.toks[self.pos..];
        is_frac
            && matches!(
                toks,
                [
                    _,
                    Tok::Sym('{'),
                    Tok::Num(_),
                    Tok::Sym('}'),
                    Tok::Sym('{'),
                    Tok::Num(_),
                    Tok::Sym('}'),
                    ..
                ]
            )
    }

    fn eat_cmd(&mut self, name: &str) -> bool {
        if self.peek_cmd(name) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn parse_unary(&mut self) -> Result<Expr, String> {
        if self.eat_sym('-') {
            return Ok(Expr::Neg(Box::new(self.parse_unary()?)));
        }
        if self.eat_sym('+') {
            return self.parse_unary();
        }
        self.parse_power()
    }

    fn parse_power(&mut self) -> Result<Expr, String> {
        let mut base = self.parse_primary()?;
        // `204_5`: a number written in base 5.
        if let (Expr::Int(v), true) = (&base, self.peek_sym('_')) {
            let digits = v.to_string();
            self.pos += 1;
            let radix = match self.parse_arg()? {
                Expr::Int(b) => b.to_u32().filter(|b| (2..=36).contains(b)),
                _ => None,
            }
            .ok_or("bad number base")?;
            let value = BigInt::parse_bytes(digits.as_bytes(), radix)
                .ok_or_else(|| format!("`{digits}` is not a base-{radix} number"))?;
            base = Expr::Int(value);
        }
        loop {
            if self.eat_sym('!') {
                base = Expr::Factorial(Box::new(base));
            } else if self.eat_sym('^') {
                let exp = if self.peek_sym('{') {
                    self.parse_group()?
                } else if self.eat_sym('-') {
                    Expr::Neg(Box::new(self.parse_primary()?))
                } else {
                    self.parse_primary()?
                };
                base = Expr::Pow(Box::new(base), Box::new(exp));
            } else {
                return Ok(base);
            }
        }
    }

    /// `{ expr }`, or a single token argument as in `\frac12` / `\sqrt3`.
    fn parse_arg(&mut self) -> Result<Expr, String> {
        if self.peek_sym('{') {
            return self.parse_group();
        }
        match self.peek().cloned() {
            Some(Tok::Num(text)) => {
                // `\frac13`: a bare argument is a single digit.
                self.pos += 1;
                if text.len() > 1 && text.chars().all(|c| c.is_ascii_digit()) {
                    let (head, tail) = text.split_at(1);
                    // Put the remaining digits back as their own number token.
                    self.toks.insert(self.pos, Tok::Num(tail.to_string()));
                    return numeral(head);
                }
                numeral(&text)
            }
            Some(Tok::Word { .. }) => self.parse_primary(),
            _ => Err("expected an argument".into()),
        }
    }

    /// Skips a `{...}` group of raw tokens.
    fn skip_group(&mut self) -> Result<(), String> {
        self.expect_sym('{')?;
        while !self.eat_sym('}') {
            if self.peek().is_none() {
                return Err("unclosed group".into());
            }
            self.pos += 1;
        }
        Ok(())
    }

    fn parse_group(&mut self) -> Result<Expr, String> {
        self.expect_sym('{')?;
        let e = self.parse_top()?;
        self.expect_sym('}')?;
        Ok(e)
    }

    fn parse_primary(&mut self) -> Result<Expr, String> {
        let tok = self.peek().cloned().ok_or("unexpected end of input")?;
        self.pos += 1;
        match tok {
            Tok::Num(text) => numeral(&text),
            Tok::Text(t) => Ok(Expr::Text(t.trim().to_lowercase())),
            Tok::Sym('{') => {
                self.pos -= 1;
                self.parse_group()
            }
            Tok::Sym('|') => {
                let e = self.parse_additive()?;
                self.expect_sym('|')?;
                Ok(Expr::Func("abs".into(), Box::new(e)))
            }
            Tok::Sym('⦃') => {
                let mut items = Vec::new();
                if !self.peek_sym('⦄') {
                    items.push(self.parse_union()?);
                    while self.eat_sym(',') {
                        items.push(self.parse_union()?);
                    }
                }
                self.expect_sym('⦄')?;
                Ok(Expr::Set(items))
            }
            Tok::Sym(open @ ('(' | '[')) => {
                let first = self.parse_union()?;
                let mut items = vec![first];
                while self.eat_sym(',') {
                    items.push(self.parse_union()?);
                }
                let close = match self.peek() {
                    Some(Tok::Sym(c @ (')' | ']'))) => *c,
                    _ => return Err("unclosed bracket".into()),
                };
                self.pos += 1;
                if items.len() == 1 && open == '(' && close == ')' {
                    return Ok(items.pop().unwrap_or(Expr::Num(f64::NAN)));
                }
                if items.len() == 1 && open == '[' && close == ']' {
                    return Ok(items.pop().unwrap_or(Expr::Num(f64::NAN)));
                }
                if items.len() == 1 {
                    return Err("bracket mismatch".into());
                }
                Ok(Expr::Tuple { open, close, items })
            }
            Tok::Word { text, cmd } => self.parse_word(&text, cmd),
            Tok::Sym(c) => Err(format!("unexpected `{c}`")),
        }
    }

    fn parse_word(&mut self, text: &str, cmd: bool) -> Result<Expr, String> {
        let name = text;
        match name {
            "frac" | "dfrac" | "tfrac" | "cfrac" if cmd => {
                let n = self.parse_arg()?;
                let d = self.parse_arg()?;
                Ok(Expr::Div(Box::new(n), Box::new(d)))
            }
            "sqrt" => {
                let index = if self.eat_sym('[') {
                    let e = self.parse_additive()?;
                    self.expect_sym(']')?;
                    Some(e)
                } else {
                    None
                };
                let arg = if !cmd && self.peek_sym('(') {
                    self.parse_primary()?
                } else {
                    self.parse_arg()?
                };
                Ok(match index {
                    None => Expr::Func("sqrt".into(), Box::new(arg)),
                    Some(k) => Expr::Pow(
                        Box::new(arg),
                        Box::new(Expr::Div(Box::new(Expr::Int(1.into())), Box::new(k))),
                    ),
                })
            }
            "pi" => Ok(Expr::Num(std::f64::consts::PI)),
            "infty" | "inf" | "infinity" => Ok(Expr::Num(f64::INFINITY)),
            "begin" if cmd => self.parse_matrix(),
            f if FUNCS.contains(&f) => {
                let mut power = None;
                if self.eat_sym('^') {
                    power = Some(if self.peek_sym('{') {
                        self.parse_group()?
                    } else {
                        self.parse_primary()?
                    });
                }
                let arg = if self.peek_sym('{') || self.peek_sym('(') {
                    self.parse_primary()?
                } else {
                    self.parse_power()?
                };
                let f = Expr::Func(f.to_string(), Box::new(arg));
                Ok(match power {
                    Some(p) => Expr::Pow(Box::new(f), Box::new(p)),
                    None => f,
                })
            }
            _ if cmd => {
                // Greek letters and other symbols are variables; anything else is unknown.
                const GREEK: &[&str] = &[
                    "alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "sigma",
                    "phi", "omega", "tau", "rho", "eta", "psi", "chi", "xi", "zeta", "nu", "kappa",
                ];
                if GREEK.contains(&name) {
                    Ok(self.subscripted(name.to_string())?)
                } else {
                    Err(format!("unsupported command \\{name}"))
                }
            }
            _ => {
                if name == "e" {
                    return Ok(Expr::Num(std::f64::consts::E));
                }
                let letters: Vec<char> = name.chars().collect();
                if letters.len() > 3 || !letters.iter().all(|c| c.is_ascii_alphabetic()) {
                    return Err(format!("unknown word `{name}`"));
                }
                // `xy` is x*y; the last letter may carry a subscript.
                let mut acc: Option<Expr> = None;
                for (k, ch) in letters.iter().enumerate() {
                    let v = if k + 1 == letters.len() {
                        self.subscripted(ch.to_string())?
                    } else {
                        Expr::Var(ch.to_string())
                    };
                    acc = Some(match acc {
                        None => v,
                        Some(a) => Expr::Mul(Box::new(a), Box::new(v)),
                    });
                }
                acc.ok_or_else(|| "empty word".to_string())
            }
        }
    }

    fn subscripted(&mut self, name: String) -> Result<Expr, String> {
        if !self.eat_sym('_') {
            return Ok(Expr::Var(name));
        }
        let sub = match self.peek().cloned() {
            Some(Tok::Sym('{')) => {
                let e = self.parse_group()?;
                format!("{e:?}")
            }
            Some(Tok::Num(text)) => {
                self.pos += 1;
                text
            }
            Some(Tok::Word { text, .. }) => {
                self.pos += 1;
                text
            }
            _ => return Err("bad subscript".into()),
        };
        Ok(Expr::Var(format!("{name}_{sub}")))
    }

    fn parse_matrix(&mut self) -> Result<Expr, String> {
        self.expect_sym('{')?;
        let env = match self.peek().cloned() {
            Some(Tok::Word { text, .. }) => text,
            _ => return Err("bad environment".into()),
        };
        self.pos += 1;
        self.expect_sym('}')?;
        if !env.ends_with("matrix") && env != "array" {
            return Err(format!("unsupported environment {env}"));
        }
        if env == "array" {
            // Column spec `{cc}` / `{c|c}`.
            self.skip_group()?;
        }
        let mut rows = vec![Vec::new()];
        loop {
            if self.eat_cmd("end") {
                self.skip_group()?;
                break;
            }
            let cell = self.parse_additive()?;
            // Safe: rows always has at least one row.
            if let Some(row) = rows.last_mut() {
                row.push(cell);
            }
            if self.eat_sym('&') {
                continue;
            }
            if self.eat_sym(';') {
                // Tolerate doubled and trailing row breaks (`\\\\`, `... \\ \end`).
                while self.eat_sym(';') {}
                if !self.peek_cmd("end") {
                    rows.push(Vec::new());
                }
                continue;
            }
            if !self.peek_cmd("end") {
                return Err("bad matrix".into());
            }
        }
        if rows.iter().any(|r| r.len() != rows[0].len()) {
            return Err("ragged matrix".into());
        }
        Ok(Expr::Matrix(rows))
    }
}

/// A numeral's value: an exact [`Expr::Int`] for digits alone, else an inexact float.
fn numeral(text: &str) -> Result<Expr, String> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<BigInt>() {
            return Ok(Expr::Int(n));
        }
    }
    text.parse()
        .map(Expr::Num)
        .map_err(|_| format!("bad number `{text}`"))
}

/// Deepest bracket nesting accepted.
const MAX_NESTING: usize = 64;
/// Most sign/power/factorial operators accepted (each may add a level of recursion).
const MAX_OPERATORS: usize = 256;

/// Parses a normalized answer string.
pub fn parse(s: &str) -> Result<Expr, String> {
    // The parser is recursive: bound the nesting so that no input can exhaust a stack.
    let mut depth = 0usize;
    let mut max_depth = 0usize;
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        max_depth = max_depth.max(depth);
    }
    if max_depth > MAX_NESTING {
        return Err(format!("nesting deeper than {MAX_NESTING}"));
    }
    if s.chars()
        .filter(|c| matches!(c, '-' | '+' | '^' | '!'))
        .count()
        > MAX_OPERATORS
    {
        return Err(format!("more than {MAX_OPERATORS} operators"));
    }
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return Err("empty answer".into());
    }
    // A lone text group is a textual answer.
    let mut p = Parser { toks, pos: 0 };
    let e = p.parse_top()?;
    if p.pos != p.toks.len() {
        return Err(format!("trailing input at token {}", p.pos));
    }
    Ok(lift_sets(e))
}

/// Moves `±` sets out of arithmetic (`\frac{1 ± \sqrt5}{2}` becomes the set of both
/// values) and flattens sets nested in sets (`\{1 ± \sqrt5, -2\}` has three members).
pub fn lift_sets(e: Expr) -> Expr {
    use Expr::*;
    fn members(e: Expr) -> Vec<Expr> {
        match e {
            Set(items) => items,
            other => vec![other],
        }
    }
    fn product(a: Expr, b: Expr, f: &dyn Fn(Box<Expr>, Box<Expr>) -> Expr) -> Expr {
        if !matches!(a, Set(_)) && !matches!(b, Set(_)) {
            return f(Box::new(a), Box::new(b));
        }
        let (xs, ys) = (members(a), members(b));
        let mut out = Vec::new();
        for x in &xs {
            for y in &ys {
                out.push(f(Box::new(x.clone()), Box::new(y.clone())));
            }
        }
        Set(out)
    }
    fn unary(a: Expr, f: &dyn Fn(Box<Expr>) -> Expr) -> Expr {
        match a {
            Set(items) => Set(items.into_iter().map(|x| f(Box::new(x))).collect()),
            other => f(Box::new(other)),
        }
    }
    match e {
        Add(a, b) => product(lift_sets(*a), lift_sets(*b), &Add),
        Mul(a, b) => product(lift_sets(*a), lift_sets(*b), &Mul),
        Div(a, b) => product(lift_sets(*a), lift_sets(*b), &Div),
        Pow(a, b) => product(lift_sets(*a), lift_sets(*b), &Pow),
        Neg(a) => unary(lift_sets(*a), &Neg),
        Factorial(a) => unary(lift_sets(*a), &Factorial),
        Func(f, a) => unary(lift_sets(*a), &|x| Func(f.clone(), x)),
        Set(items) => Set(items
            .into_iter()
            .flat_map(|x| members(lift_sets(x)))
            .collect()),
        Tuple { open, close, items } => Tuple {
            open,
            close,
            items: items.into_iter().map(lift_sets).collect(),
        },
        Union(items) => Union(items.into_iter().map(lift_sets).collect()),
        Eq(items) => Eq(items.into_iter().map(lift_sets).collect()),
        Chain(items) => Chain(items.into_iter().map(lift_sets).collect()),
        Rel { op, lhs, rhs } => Rel {
            op,
            lhs: Box::new(lift_sets(*lhs)),
            rhs: Box::new(lift_sets(*rhs)),
        },
        Matrix(rows) => Matrix(
            rows.into_iter()
                .map(|r| r.into_iter().map(lift_sets).collect())
                .collect(),
        ),
        other => other,
    }
}

impl Expr {
    /// Free variables.
    pub fn vars(&self, out: &mut BTreeSet<String>) {
        match self {
            Expr::Var(v) => {
                out.insert(v.clone());
            }
            Expr::Int(_) | Expr::Num(_) | Expr::Text(_) => {}
            Expr::Neg(a) | Expr::Func(_, a) | Expr::Factorial(a) => a.vars(out),
            Expr::Rel { lhs: a, rhs: b, .. } => {
                a.vars(out);
                b.vars(out);
            }
            Expr::Add(a, b) | Expr::Mul(a, b) | Expr::Div(a, b) | Expr::Pow(a, b) => {
                a.vars(out);
                b.vars(out);
            }
            Expr::Tuple { items, .. }
            | Expr::Set(items)
            | Expr::Union(items)
            | Expr::Eq(items)
            | Expr::Chain(items) => items.iter().for_each(|i| i.vars(out)),
            Expr::Matrix(rows) => rows.iter().flatten().for_each(|i| i.vars(out)),
        }
    }

    /// Numeric value under an assignment of the variables; NaN where undefined or not a number.
    pub fn eval(&self, env: &dyn Fn(&str) -> f64) -> f64 {
        match self {
            Expr::Int(n) => n.to_f64().unwrap_or(f64::NAN),
            Expr::Num(v) => *v,
            Expr::Var(v) => env(v),
            Expr::Neg(a) => -a.eval(env),
            Expr::Add(a, b) => a.eval(env) + b.eval(env),
            Expr::Mul(a, b) => a.eval(env) * b.eval(env),
            Expr::Div(a, b) => a.eval(env) / b.eval(env),
            Expr::Pow(a, b) => {
                let (x, y) = (a.eval(env), b.eval(env));
                // Odd roots of negatives: (-8)^(1/3) = -2.
                if x < 0.0 && y.fract() != 0.0 {
                    let inv = 1.0 / y;
                    if (inv - inv.round()).abs() < 1e-9 && (inv.round() as i64) % 2 != 0 {
                        return -(-x).powf(y);
                    }
                }
                x.powf(y)
            }
            Expr::Factorial(a) => {
                let n = a.eval(env);
                if n < 0.0 || n.fract() != 0.0 || n > 170.0 {
                    return f64::NAN;
                }
                (1..=(n as u64)).map(|k| k as f64).product()
            }
            Expr::Func(f, a) => {
                let x = a.eval(env);
                match f.as_str() {
                    "sqrt" => x.sqrt(),
                    "abs" => x.abs(),
                    "sin" => x.sin(),
                    "cos" => x.cos(),
                    "tan" => x.tan(),
                    "cot" => 1.0 / x.tan(),
                    "sec" => 1.0 / x.cos(),
                    "csc" => 1.0 / x.sin(),
                    "arcsin" => x.asin(),
                    "arccos" => x.acos(),
                    "arctan" => x.atan(),
                    "sinh" => x.sinh(),
                    "cosh" => x.cosh(),
                    "tanh" => x.tanh(),
                    "ln" => x.ln(),
                    "log" => x.log10(),
                    "exp" => x.exp(),
                    _ => f64::NAN,
                }
            }
            _ => f64::NAN,
        }
    }
}
