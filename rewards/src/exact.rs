//! Exact arithmetic expressions: parsing and evaluation over rationals.
//!
//! Used by the [`countdown`](crate::countdown) reward (which numbers were used, and the value),
//! and by `oxrl-envs` (re-exported there as `oxrl_envs::expr`) for its calculator tool and
//! generated arithmetic. Exact rationals avoid `0.1 + 0.2 != 0.3` style false negatives; all
//! operations are overflow-checked so hostile input yields an error, never a panic.
//!
//! Grammar: `expr := term (('+'|'-') term)*`, `term := unary (('*'|'/') unary)*`,
//! `unary := '-' unary | power`, `power := atom (('^'|'**') unary)?`,
//! `atom := number | '(' expr ')'`. `×`, `x` between numbers is not accepted; `×`/`÷`/`−` are.

use std::fmt;

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// The text is not an expression in the grammar.
    #[error("syntax error at character {pos}: {reason}")]
    Syntax {
        /// 0-based char position.
        pos: usize,
        /// What was expected.
        reason: String,
    },
    /// Division by zero.
    #[error("division by zero")]
    DivisionByZero,
    /// A value left the i128 range, or an exponent was too large.
    #[error("number too large")]
    Overflow,
}

/// An exact rational number `num / den`, reduced, with `den > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rational {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

impl Rational {
    /// An integer.
    pub fn int(n: i128) -> Self {
        Self { num: n, den: 1 }
    }

    /// `num / den`, reduced.
    pub fn new(num: i128, den: i128) -> Result<Self, ExprError> {
        if den == 0 {
            return Err(ExprError::DivisionByZero);
        }
        let g = gcd(num, den).max(1);
        let sign = if den < 0 { -1 } else { 1 };
        Ok(Self {
            num: num.checked_mul(sign).ok_or(ExprError::Overflow)? / g,
            den: den.checked_mul(sign).ok_or(ExprError::Overflow)? / g,
        })
    }

    /// Numerator (sign carrier).
    pub fn numer(&self) -> i128 {
        self.num
    }

    /// Denominator (positive).
    pub fn denom(&self) -> i128 {
        self.den
    }

    /// The integer value, if this is an integer.
    pub fn as_integer(&self) -> Option<i128> {
        (self.den == 1).then_some(self.num)
    }

    /// Nearest `f64`.
    pub fn to_f64(&self) -> f64 {
        self.num as f64 / self.den as f64
    }

    fn add(self, o: Self) -> Result<Self, ExprError> {
        let num = self
            .num
            .checked_mul(o.den)
            .zip(o.num.checked_mul(self.den))
            .and_then(|(a, b)| a.checked_add(b))
            .ok_or(ExprError::Overflow)?;
        Self::new(num, self.den.checked_mul(o.den).ok_or(ExprError::Overflow)?)
    }

    fn neg(self) -> Result<Self, ExprError> {
        Ok(Self {
            num: self.num.checked_neg().ok_or(ExprError::Overflow)?,
            den: self.den,
        })
    }

    fn mul(self, o: Self) -> Result<Self, ExprError> {
        let num = self.num.checked_mul(o.num).ok_or(ExprError::Overflow)?;
        Self::new(num, self.den.checked_mul(o.den).ok_or(ExprError::Overflow)?)
    }

    fn div(self, o: Self) -> Result<Self, ExprError> {
        if o.num == 0 {
            return Err(ExprError::DivisionByZero);
        }
        self.mul(Self::new(o.den, o.num)?)
    }

    fn pow(self, e: Self) -> Result<Self, ExprError> {
        // Only small integer exponents: anything else is irrational or astronomically large.
        let e = e
            .as_integer()
            .filter(|e| e.abs() <= 128)
            .ok_or(ExprError::Overflow)?;
        let mut acc = Self::int(1);
        for _ in 0..e.abs() {
            acc = acc.mul(self)?;
        }
        if e < 0 {
            Self::int(1).div(acc)
        } else {
            Ok(acc)
        }
    }
}

impl fmt::Display for Rational {
    /// Integers print as integers; other values as a decimal rounded to 6 places, trailing
    /// zeros trimmed (what a calculator shows).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            return write!(f, "{}", self.num);
        }
        let text = format!("{:.6}", self.to_f64());
        write!(f, "{}", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number literal.
    Num(Rational),
    /// Unary minus.
    Neg(Box<Expr>),
    /// A binary operation.
    Bin(Op, Box<Expr>, Box<Expr>),
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `^` or `**`
    Pow,
}

impl Expr {
    /// Parses `src` (whitespace is ignored).
    pub fn parse(src: &str) -> Result<Self, ExprError> {
        let mut p = Parser {
            chars: src.chars().filter(|c| !c.is_whitespace()).collect(),
            pos: 0,
        };
        let e = p.expr()?;
        if p.pos < p.chars.len() {
            return Err(p.error("unexpected character"));
        }
        Ok(e)
    }

    /// The exact value.
    pub fn eval(&self) -> Result<Rational, ExprError> {
        match self {
            Expr::Num(r) => Ok(*r),
            Expr::Neg(e) => e.eval()?.neg(),
            Expr::Bin(op, a, b) => {
                let (a, b) = (a.eval()?, b.eval()?);
                match op {
                    Op::Add => a.add(b),
                    Op::Sub => a.add(b.neg()?),
                    Op::Mul => a.mul(b),
                    Op::Div => a.div(b),
                    Op::Pow => a.pow(b),
                }
            }
        }
    }

    /// Every number literal, left to right (Countdown checks them against the given numbers).
    pub fn literals(&self) -> Vec<Rational> {
        let mut out = Vec::new();
        self.collect_literals(&mut out);
        out
    }

    fn collect_literals(&self, out: &mut Vec<Rational>) {
        match self {
            Expr::Num(r) => out.push(*r),
            Expr::Neg(e) => e.collect_literals(out),
            Expr::Bin(_, a, b) => {
                a.collect_literals(out);
                b.collect_literals(out);
            }
        }
    }

    /// Whether the expression uses an operator outside `allowed`, or unary minus when
    /// `allow_neg` is false.
    pub fn uses_only(&self, allowed: &[Op], allow_neg: bool) -> bool {
        match self {
            Expr::Num(_) => true,
            Expr::Neg(e) => allow_neg && e.uses_only(allowed, allow_neg),
            Expr::Bin(op, a, b) => {
                allowed.contains(op)
                    && a.uses_only(allowed, allow_neg)
                    && b.uses_only(allowed, allow_neg)
            }
        }
    }
}

/// Parses and evaluates `src`.
pub fn evaluate(src: &str) -> Result<Rational, ExprError> {
    Expr::parse(src)?.eval()
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn error(&self, reason: &str) -> ExprError {
        ExprError::Syntax {
            pos: self.pos,
            reason: reason.to_owned(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(c);
        self.pos += usize::from(hit);
        hit
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.term()?;
        loop {
            let op = match self.peek() {
                Some('+') => Op::Add,
                Some('-' | '−') => Op::Sub,
                _ => return Ok(left),
            };
            self.pos += 1;
            left = Expr::Bin(op, Box::new(left), Box::new(self.term()?));
        }
    }

    fn term(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        loop {
            let op = match (self.peek(), self.chars.get(self.pos + 1)) {
                (Some('*'), Some('*')) => return Ok(left), // `**` is power, handled below
                (Some('*' | '×'), _) => Op::Mul,
                (Some('/' | '÷'), _) => Op::Div,
                _ => return Ok(left),
            };
            self.pos += 1;
            left = Expr::Bin(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.eat('-') || self.eat('−') {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        self.power()
    }

    fn power(&mut self) -> Result<Expr, ExprError> {
        let base = self.atom()?;
        let is_pow = if self.eat('^') {
            true
        } else if self.peek() == Some('*') && self.chars.get(self.pos + 1) == Some(&'*') {
            self.pos += 2;
            true
        } else {
            false
        };
        if !is_pow {
            return Ok(base);
        }
        Ok(Expr::Bin(Op::Pow, Box::new(base), Box::new(self.unary()?)))
    }

    fn atom(&mut self) -> Result<Expr, ExprError> {
        if self.eat('(') {
            let e = self.expr()?;
            if !self.eat(')') {
                return Err(self.error("expected `)`"));
            }
            return Ok(e);
        }
        self.number()
    }

    fn number(&mut self) -> Result<Expr, ExprError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        if text.is_empty() {
            return Err(self.error("expected a number or `(`"));
        }
        parse_decimal(&text)
            .map(Expr::Num)
            .ok_or_else(|| self.error("malformed number"))
    }
}

/// `"12.5"` → 25/2; `None` for malformed text or overflow.
fn parse_decimal(text: &str) -> Option<Rational> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let digits = format!("{int}{frac}");
    let num: i128 = digits.parse().ok()?;
    let den = 10i128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    Rational::new(num, den).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> String {
        evaluate(s).unwrap().to_string()
    }

    #[test]
    fn precedence_associativity_and_parentheses() {
        assert_eq!(val("2 + 3 * 4"), "14");
        assert_eq!(val("(2 + 3) * 4"), "20");
        assert_eq!(val("10 - 4 - 3"), "3");
        assert_eq!(val("2 ^ 3 ^ 2"), "512");
        assert_eq!(val("2 ** 10"), "1024");
        assert_eq!(val("-3 * -(2 + 1)"), "9");
        assert_eq!(val("100 ÷ 8 × 2"), "25");
    }

    #[test]
    fn exact_rationals_and_decimals() {
        assert_eq!(evaluate("0.1 + 0.2").unwrap(), evaluate("0.3").unwrap());
        assert_eq!(val("1 / 3"), "0.333333");
        assert_eq!(evaluate("6 / 4").unwrap(), Rational::new(3, 2).unwrap());
        assert_eq!(val("7.50 * 2"), "15");
    }

    #[test]
    fn errors_instead_of_panics() {
        assert_eq!(evaluate("1 / (2 - 2)"), Err(ExprError::DivisionByZero));
        assert_eq!(evaluate("99999999999 ^ 99"), Err(ExprError::Overflow));
        assert!(matches!(evaluate("2 +"), Err(ExprError::Syntax { .. })));
        assert!(matches!(evaluate("(1 + 2"), Err(ExprError::Syntax { .. })));
        assert!(matches!(evaluate("1.2.3"), Err(ExprError::Syntax { .. })));
        assert!(matches!(
            evaluate("import os"),
            Err(ExprError::Syntax { .. })
        ));
    }

    #[test]
    fn literals_in_order() {
        let e = Expr::parse("(25 - 5) * 3 / 6").unwrap();
        let lits: Vec<i128> = e
            .literals()
            .iter()
            .map(|r| r.as_integer().unwrap())
            .collect();
        assert_eq!(lits, vec![25, 5, 3, 6]);
        assert!(e.uses_only(&[Op::Add, Op::Sub, Op::Mul, Op::Div], false));
        assert!(!Expr::parse("2^3").unwrap().uses_only(&[Op::Add], false));
    }
}
