//! Exact values of answers that are rational numbers: integers of any size, fractions, and
//! their sums, products, integer powers, factorials, absolute values and perfect-square
//! roots. Compared exactly, so `2^{64}+1` is not `2^{64}` and `10^{-400}` is not `0`; a
//! float tolerance is only for answers with an inexact part (a decimal, `\pi`, a root).

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

use super::parse::Expr;

/// Largest numerator or denominator computed, in bits (~315,000 decimal digits); a value
/// beyond it is [`Exactness::TooLarge`].
const MAX_BITS: u64 = 1 << 20;

/// Largest `n` whose `n!` is computed (~1.5 MB of digits would follow from more).
const MAX_FACTORIAL: u64 = 20_000;

/// What an answer's value is, as far as exact arithmetic goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Exactness {
    /// A rational number, exactly.
    Rational(BigRational),
    /// Rational, but too large to compute (`10^{10^{9}}`): compared as written.
    TooLarge,
    /// Has an inexact or irrational part, a variable, or is undefined.
    Inexact,
}

use Exactness::{Inexact, Rational, TooLarge};

fn bits(r: &BigRational) -> u64 {
    r.numer().bits().max(r.denom().bits())
}

/// Keeps a result only while it stays within [`MAX_BITS`].
fn bounded(r: BigRational) -> Exactness {
    if bits(&r) > MAX_BITS {
        TooLarge
    } else {
        Rational(r)
    }
}

/// Combines two operands: inexact wins over too large, too large over rational.
fn both(
    a: Exactness,
    b: Exactness,
    f: impl FnOnce(BigRational, BigRational) -> Exactness,
) -> Exactness {
    match (a, b) {
        (Rational(x), Rational(y)) => f(x, y),
        (Inexact, _) | (_, Inexact) => Inexact,
        _ => TooLarge,
    }
}

/// The exact value of `e`, where it is a rational number.
pub fn exactness(e: &Expr) -> Exactness {
    match e {
        Expr::Int(n) => bounded(BigRational::from_integer(n.clone())),
        Expr::Neg(a) => match exactness(a) {
            Rational(x) => Rational(-x),
            other => other,
        },
        Expr::Add(a, b) => both(exactness(a), exactness(b), |x, y| bounded(x + y)),
        Expr::Mul(a, b) => both(exactness(a), exactness(b), |x, y| bounded(x * y)),
        Expr::Div(a, b) => both(exactness(a), exactness(b), |x, y| {
            if y.is_zero() {
                Inexact
            } else {
                bounded(x / y)
            }
        }),
        Expr::Pow(a, b) => both(exactness(a), exactness(b), power),
        Expr::Factorial(a) => match exactness(a) {
            Rational(n) if n.is_integer() && !n.is_negative() => factorial(n.to_integer()),
            Rational(_) => Inexact,
            other => other,
        },
        Expr::Func(f, a) => match (f.as_str(), exactness(a)) {
            ("abs", Rational(x)) => Rational(x.abs()),
            ("sqrt", Rational(x)) => perfect_square_root(&x).map_or(Inexact, Rational),
            (_, TooLarge) if f == "abs" => TooLarge,
            _ => Inexact,
        },
        _ => Inexact,
    }
}

/// `base^exp` for an integer exponent; other exponents are roots (inexact here).
fn power(base: BigRational, exp: BigRational) -> Exactness {
    if !exp.is_integer() {
        return Inexact;
    }
    let k = exp.to_integer();
    if base.is_zero() {
        return if k.is_negative() {
            Inexact
        } else if k.is_zero() {
            Rational(BigRational::one())
        } else {
            Rational(base)
        };
    }
    if base.abs().is_one() {
        let odd = k.bits() > 0 && (&k % 2u32) != BigInt::zero();
        return Rational(if base.is_negative() && odd {
            -BigRational::one()
        } else {
            BigRational::one()
        });
    }
    // The result has about |k| times the base's bits: refuse before computing.
    let Some(k) = k
        .to_i32()
        .filter(|k| k.unsigned_abs() as u64 * bits(&base) <= MAX_BITS)
    else {
        return TooLarge;
    };
    Rational(num_traits::Pow::pow(base, k))
}

fn factorial(n: BigInt) -> Exactness {
    match n.to_u64() {
        Some(n) if n <= MAX_FACTORIAL => {
            let f = (2..=n).fold(BigInt::one(), |acc, k| acc * k);
            bounded(BigRational::from_integer(f))
        }
        _ => TooLarge,
    }
}

fn perfect_square_root(x: &BigRational) -> Option<BigRational> {
    if x.is_negative() {
        return None;
    }
    let root = |n: &BigInt| Some(n.sqrt()).filter(|r| r * r == *n);
    Some(BigRational::new(root(x.numer())?, root(x.denom())?))
}

/// Whether two answers without variables have equal values: exactly when both are rational;
/// as written when one is too large to compute; else `None` (a float comparison decides).
pub fn exact_eq(a: &Expr, b: &Expr) -> Option<bool> {
    match (exactness(a), exactness(b)) {
        (Rational(x), Rational(y)) => Some(x == y),
        (TooLarge, _) | (_, TooLarge) => Some(a == b),
        (Rational(x), Inexact) => Some(false).filter(|_| !fits_f64(&x)),
        (Inexact, Rational(y)) => Some(false).filter(|_| !fits_f64(&y)),
        (Inexact, Inexact) => None,
    }
}

/// Whether a rational's float is finite (a finite exact value never equals `\infty`, and
/// one beyond the float range equals no float).
fn fits_f64(x: &BigRational) -> bool {
    x.to_f64().is_some_and(f64::is_finite)
}
