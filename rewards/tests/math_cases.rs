//! Table of math-reward cases. Rows marked "MV" are from HF Math-Verify's own test suite
//! (`tests/test_all.py`: gold, prediction, expected); the rest cover the issue's list
//! (GSM8K `####`, boxed, "the answer is", units, percentages, intervals, sets, equations).

use oxrl_rewards::math::MathReward;
use oxrl_rewards::{Completion, Reward, RewardFailure};

fn check(rows: &[(&str, &str, f64)]) {
    let r = MathReward::default();
    let mut bad = Vec::new();
    for (gold, pred, want) in rows {
        let got = r.score_one(pred, gold);
        let v = got.clone().unwrap_or(0.0);
        if v != *want {
            bad.push(format!(
                "gold={gold:?} pred={pred:?} want={want} got={got:?}"
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} cases wrong:\n{}",
        bad.len(),
        rows.len(),
        bad.join("\n")
    );
}

#[test]
fn math_verify_number_extraction() {
    check(&[
        ("-5", "-5", 1.0),                                           // MV
        ("7425000", "7,425,000", 1.0),                               // MV
        ("1000", "1 000", 1.0),                                      // MV
        ("1000", "1000.0", 1.0),                                     // MV
        ("1000.0", "1,000.0", 1.0),                                  // MV
        ("1000.99", "1000,99", 1.0),                                 // MV
        ("1,22", "1.22", 1.0),                                       // MV
        ("2.74", "Soucis : 2,74 $ a..", 1.0),                        // MV
        ("0.4", ".4", 1.0),                                          // MV
        ("1000.99", "1,000.99", 1.0),                                // MV
        ("1000.99", "$1,000.99", 1.0),                               // MV
        ("1000.99", "1,000.99$", 1.0),                               // MV
        ("1000.99", "the number is not 10 which is 1,000.99€", 1.0), // MV
        ("1000.99", "so the number is 10 which is 1,000.99m²", 1.0), // MV
        ("1000.99", "not it's not 10 it's 1,000.99m²", 1.0),         // MV
        ("0,111", "0.111", 1.0),                                     // MV
        ("2", "AZYUK2A", 0.0),                                       // MV
    ]);
}

#[test]
fn math_verify_fractions_sets_latex() {
    check(&[
        ("10/9", "\\frac{10}{9}", 1.0),                                 // MV
        ("-10/9", "-\\frac{10}{9}", 1.0),                               // MV
        ("$[0,1)$", "$[0,1)$", 1.0),                                    // MV
        ("$[0,9)$", "$[0,1)$", 0.0),                                    // MV
        ("$(0,9)$", "$[0,9)$", 0.0),                                    // MV
        ("$1$", "$-[0,1)$", 0.0),                                       // MV
        ("$9$", "Answer \\[ 9 \\]", 1.0),                               // MV
        ("$9$", "Answer $ 9 $", 1.0),                                   // MV
        ("$9$", "Answer $$ 9 $$", 1.0),                                 // MV
        ("$9$", "Answer \\( 9 \\)", 1.0),                               // MV
        ("$10$", "Answer \\( (9+1) \\)", 1.0),                          // MV
        ("$9$", "Answer \\[ \n 9 \n \\]", 1.0),                         // MV
        ("$9$", "Answer $$ \n 9 \n $$", 1.0),                           // MV
        ("$10/9$", "Answer $ \\frac{1}{2} \\$ = \\frac{10}{9} $", 1.0), // MV
        ("$1/3$", "$\\frac13 $", 1.0),                                  // MV
        ("$1$", "$\\frac3{3} $", 1.0),                                  // MV
        ("$\\sqrt{3}$", "$\\sqrt3 $", 1.0),                             // MV
        ("$1/3$", "$\\cfrac{1}{3} $", 1.0),                             // MV
        ("$1/3$", "$\\dfrac{1}{3} $", 1.0),                             // MV
        ("$1/3$", "$\\tfrac{1}{3} $", 1.0),                             // MV
        ("$1/3$", "$ 1/3 $", 1.0),                                      // MV
        ("$1/3$", "$\\left( \\frac{1}{3} \\right)$", 1.0),              // MV
        ("$1/3$", "$\\boxed{\\frac{1}{3}}$", 1.0),                      // MV
        ("$1/3$", "$\\frac{1}{3} \\text{meters}$", 1.0),                // MV
        ("$1/3$", "$\\frac{1}{3} \\textbf{meters}$", 1.0),              // MV
        ("$1/3$", "$k = \\frac{1}{3}$", 1.0),                           // MV
    ]);
}

#[test]
fn math_verify_percent_and_problems() {
    check(&[
        ("$28\\%$", "28 percent", 1.0),                                    // MV
        ("$28\\%$", "28 pct", 1.0),                                        // MV
        ("$28\\%$", "28 %", 1.0),                                          // MV
        ("$28\\%$", "$28$ %", 1.0),                                        // MV
        ("$28\\%$", "$28$ percent", 1.0),                                  // MV
        ("$28\\%$", "$\\boxed{28}$ pct", 1.0),                             // MV
        ("$2-2p$", "Since $x<2$, it follows that $|x-2|=2-x$. If $2-x=p$, then $x=2-p$. Thus $x-p=\\boxed{2-2p}$.", 1.0), // MV
        ("$(3, \\frac{\\pi}{2})$", "the polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$", 1.0), // MV
        ("$\\frac{14}{3}$", "$=2+\\frac{5}{3}+1=\\boxed{\\frac{14}{3}}$", 1.0), // MV
        ("$\\text{Evelyn}$", "Therefore, $\\boxed{\\text{Evelyn}}$ is our answer.", 1.0), // MV
        ("$90^\\circ$", "Hence, the angle between the lines is $\\boxed{90^\\circ}.$", 1.0), // MV
        ("$3\\sqrt{13}$", "\\sqrt{117} = \\boxed{3\\sqrt{13}}. \\end{align*}", 1.0), // MV
        ("\\boxed{\n\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}\n}.", "\\boxed{\n\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}\n}.", 1.0), // MV
    ]);
}

#[test]
fn issue_cases() {
    check(&[
        // GSM8K gold solutions and completions.
        (
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
            "She sold 72 clips in total.\n#### 72",
            1.0,
        ),
        ("#### 72", "so 48 + 24 = 72 clips.", 1.0),
        ("#### 72", "so 48 + 24 = 71 clips.", 0.0),
        ("72", "The answer is 72.", 1.0),
        ("72", "The final answer is $72$. I hope it is correct.", 1.0),
        ("72", "Answer: 73", 0.0),
        // Thousands, currency, units.
        ("1234567", "It costs \\$1,234,567 in total", 1.0),
        ("1234567", "\\boxed{1{,}234{,}567}", 1.0),
        ("18", "She makes $18 every day.", 1.0),
        ("18", "She makes \\boxed{18 \\text{ dollars}}", 1.0),
        ("5", "\\boxed{5 \\text{ cm}}", 1.0),
        ("7425000", "7,425,001", 0.0),
        // Percentages, decimals vs fractions.
        ("25\\%", "\\boxed{0.25}", 1.0),
        ("0.25", "\\boxed{25\\%}", 1.0),
        ("0.5", "\\boxed{\\frac{1}{2}}", 1.0),
        ("\\frac{3}{4}", "\\boxed{0.75}", 1.0),
        ("\\frac{1}{3}", "\\boxed{0.333}", 0.0),
        ("\\frac{1}{3}", "\\boxed{0.3333333}", 1.0),
        ("2\\frac{1}{2}", "\\boxed{2.5}", 1.0),
        // Negative numbers and scientific notation.
        ("-3", "\\boxed{-3}", 1.0),
        ("-3", "\\boxed{3}", 0.0),
        ("6.02 \\times 10^{23}", "\\boxed{6.02e23}", 1.0),
        ("1.5e-3", "\\boxed{0.0015}", 1.0),
        ("1e-8", "\\boxed{2e-8}", 0.0),
        // Algebra.
        ("x^2 + 2x + 1", "\\boxed{(x+1)^2}", 1.0),
        ("x^2 + 2x + 1", "\\boxed{(x-1)^2}", 0.0),
        ("\\frac{x}{2}", "\\boxed{0.5x}", 1.0),
        ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", 1.0),
        ("\\pi/2", "\\boxed{\\frac{\\pi}{2}}", 1.0),
        ("2+2", "\\boxed{4}", 1.0),
        // x = 3 vs 3; equations.
        ("3", "\\boxed{x = 3}", 1.0),
        ("x = 3", "\\boxed{3}", 1.0),
        ("y = 2x + 1", "\\boxed{y = 1 + 2x}", 1.0),
        ("y = 2x + 1", "\\boxed{y = 2x - 1}", 0.0),
        // Intervals and sets.
        ("(-\\infty, 2]", "\\boxed{(-\\infty, 2]}", 1.0),
        ("(-\\infty, 2]", "\\boxed{(-\\infty, 2)}", 0.0),
        ("[0,1) \\cup (2, 3]", "\\boxed{(2,3] \\cup [0,1)}", 1.0),
        ("\\{1, 2, 3\\}", "\\boxed{\\{3, 1, 2\\}}", 1.0),
        ("\\{1, 2, 3\\}", "\\boxed{\\{1, 2\\}}", 0.0),
        (
            "1, 2",
            "The solutions are $x = 2, 1$ hmm: \\boxed{2, 1}",
            1.0,
        ),
        ("(1, 2)", "\\boxed{(2, 1)}", 0.0),
        // Textual answers.
        ("Evelyn", "The fastest is \\boxed{\\text{Evelyn}}", 1.0),
        ("Evelyn", "The answer is Evelyn.", 1.0),
        ("Evelyn", "The answer is Briana.", 0.0),
        // The last \boxed wins over an earlier one far before it; boxes close together are
        // one answer, as in Math-Verify (here the list {3, 4}).
        (
            "4",
            "first \\boxed{3}. That was a slip in the second step, so I recompute every term again from the start and get \\boxed{4}",
            1.0,
        ),
        ("4", "first \\boxed{3}, corrected: \\boxed{4}", 0.0),
    ]);
}

#[test]
fn failures_are_typed() {
    let r = MathReward::default();
    assert!(matches!(
        r.score_one("no digits at all", "5"),
        Err(RewardFailure::Parse(_))
    ));
    assert!(matches!(
        r.score_one("\\boxed{5}", "  "),
        Err(RewardFailure::BadReference(_))
    ));
    let out = r.score_batch(&[
        Completion::new("\\boxed{5}"),
        Completion::new("\\boxed{5}").with("answer", 5),
    ]);
    assert!(
        matches!(out[0], Err(RewardFailure::BadReference(_))),
        "{:?}",
        out[0]
    );
    assert_eq!(out[1], Ok(1.0));
}

#[test]
fn adversarial_inputs_do_not_panic() {
    let r = MathReward::default();
    let deep = format!("\\boxed{{{}1{}}}", "(".repeat(5000), ")".repeat(5000));
    let huge = "9".repeat(100_000);
    for c in [
        deep.as_str(),
        huge.as_str(),
        "\\boxed{",
        "$$$$",
        "\\frac{}{}",
        "\\boxed{1/0}",
        "\\boxed{170!}",
        "\\boxed{10^{10^{10}}}",
    ] {
        let _ = r.score_one(c, "1");
    }
    assert_eq!(r.score_one("\\boxed{1/0}", "1"), Ok(0.0));
    // Deep nesting and long operator chains, scored on rayon's worker threads (small stacks).
    let nested = format!("\\boxed{{{}1{}}}", "(".repeat(900), ")".repeat(900));
    let signs = format!("\\boxed{{{}1}}", "-".repeat(1900));
    let powers = format!("\\boxed{{2{}}}", "^2".repeat(900));
    let batch: Vec<Completion> = [nested, signs, powers]
        .iter()
        .map(|c| Completion::new(c.clone()).with("answer", "1"))
        .collect();
    let out = r.score_batch(&batch);
    assert_eq!(out.len(), 3);
}

#[test]
fn math_verify_complex_expressions() {
    check(&[
        ("$\\frac{1}{12}$", "$0.0833333333333333$", 1.0), // MV
        ("$(1,\\frac{9}{2})$", "$(1,4.5)$", 1.0),         // MV
        ("$\\frac{x+2}{7}$", "$\\frac{x}{7}+\\frac{2}{7}$", 1.0), // MV
        ("$\\tan^2(y)+1$", "$\\sec^2(y)$", 1.0),          // MV
        ("$34x+45y-20z+100=0$", "$-34x-45y+20z-100=0$", 1.0), // MV
        (
            "$\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{15+2\\sqrt{33}}$",
            "$\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{2\\sqrt{33}+15}$",
            1.0,
        ), // MV
        ("$(a+5)(b+2)$", "$(+5)(b+2)$", 0.0),             // MV
        ("$2$", "$\\frac{1+\\sqrt{5}}{2}$", 0.0),         // MV
        ("$4$", "$\\frac{34}{16}+\\frac{\\sqrt{1358}}{16}$", 0.0), // MV
        ("$1\\sqrt{19}$", "$1$", 0.0),                    // MV
        ("$x+2n+1$", "$x+1$", 0.0),                       // MV
        (
            r"$\begin{pmatrix}\frac{1}{3\sqrt[3]{x}^2}&0&0\\\\0&1&0\\\\-\sin(x)&0&0\\\\\\end{pmatrix}$",
            r"$\begin{pmatrix}\frac{1}{3x^{2/3}}&0&0\\0&1&0\\-\sin(x)&0&0\end{pmatrix}$",
            1.0,
        ), // MV (second matrix written without the test file's escaping slip)
        (
            r"$\\left(\\frac{1}{5},\\frac{1}{6}\\right)$",
            r"Thus, $(p,q) = \boxed{\left( \frac{1}{5}, \frac{1}{6} \right)}.$ Final Answer: The final answer is $\left( \frac{1}{5}, \frac{1}{6} \right)$. I hope it is correct. <|im_start|>user",
            1.0,
        ), // MV issue 10
    ]);
}

#[test]
fn math_verify_long_completions() {
    check(&[
        // MV issue 1: rational at the end of free text.
        ("$2/3$", "So, we can rewrite the equation as: P(A) = 1/2 + (1/2) * (1/2) * P(A) Now, we can solve for P(A): P(A) - (1/4) * P(A) = 1/2 (3/4) * P(A) = 1/2 P(A) = (1/2) / (3/4) P(A) = (1/2) * (4/3) P(A) = 2/3 Therefore, the probability that Alice wins the game is 2/3. <|im_start|>user", 1.0),
        // MV issue 2: a closing plain number after earlier math spans.
        ("$12$", "Solving for $d$, we get $d = \\frac{90}{n}$. Since $d$ must be an integer, $n$ must be a divisor of 90. The divisors of 90 are 1, 2, 3, 5, 6, 9, 10, 15, 18, 30, 45, and 90. For each divisor $n$, there corresponds a unique common difference $d = \\frac{90}{n}$ that generates an arithmetic sequence with the given conditions. Therefore, there are 12 distinct arithmetic sequences that meet the three given conditions. I hope it is correct. <|im_start|>user", 1.0),
        // MV issue 3: ordered pair in the last span.
        ("$(7,6)$", "Now, substitute this value of $x$ back into the expression for $y$: $y = 8.8 - 0.4(7)$ $y = 8.8 - 2.8 = 6$ So, the ordered pair $(x, y)$ that solves the system is $(7, 6)$. <|im_start|>user", 1.0),
        // MV issue 4: correctly extracted wrong interval.
        ("$[0,1)$", "Combining these conditions, we find that the domain of $q(x)$ is the interval $(0, 1)$, since $x$ must be greater than or equal to 0 and less than 1, but not equal to 1. Final Answer: The final answer is $(0, 1)$. I hope it is correct. <|im_start|>user", 0.0),
        // MV issue 5: last boxed is a union, gold an interval.
        ("$[-3,2]$", "which is $\\boxed{[-3, 2]}$. Final Answer: The final answer is $[-3, 2]$. I apologize for the mistake. Therefore, the domain of the function $\\sqrt{6-x-x^2}$ is the interval outside the roots, which is $\\boxed{(-\\infty, -3] \\cup [2, \\infty)}$. Final Answer: The final answer is $(-\\infty, -3] \\cup [2, \\infty)$. I hope it is correct. <|im_start|>user", 0.0),
        // MV issue 6: `\!` thousands spacing inside \boxed with an escaped dollar.
        ("$16386.20$", "Rounded to the nearest cent, Paula's investment is worth $\\boxed{\\$16,\\!386.20}$ at the end of the 5-year period. The answer is $16,\\!386.20$. I apologize for the repetition", 1.0),
        // MV issue 7: "Final Answer:" followed by a non-answer span, number later.
        ("$120$", "Therefore, the volume of rectangular prism $ABCDEFGH$ is $5 \\times 6 \\times 4 = 120$. Final Answer: The volume of $ABCDEFGH$ is 120. I hope it is correct.", 1.0),
        // MV issue 8: large number with commas.
        ("12000023", "Therefore, we remove this integer from the list and sum the remaining integers: $85 + (-67) + 12,\\!000,\\!003 + (-3) = 12,\\!000,\\!023$. Final Answer: The final answer is 12,000,023. I hope it is correct. <|im_start|>user", 1.0),
        // MV issue 9: boxed with {,} thousands separator.
        ("$14916$", "Therefore, the smallest possible value for $N$ is $14{,}922$. Final Answer: The smallest possible value of $N$ is $\\boxed{14{,}916}$. I hope it is correct. <|im_start|>user", 1.0),
    ]);
}

#[test]
fn math_verify_latex_notation_math() {
    check(&[
        ("$2$", "Of the two-digit perfect squares, only $4^2=16$ and $6^2=36$ end in $6$. Thus, there are $\\boxed{2}$ distinct possible values for $B$.", 1.0), // MV
        ("$15\\mbox{ cm}^2$", "Therefore, the area of the triangle is $$\\frac{1}{2}\\times 3 \\times 10 = \\boxed{15\\mbox{ cm}^2}.$$", 1.0), // MV
        ("$-2,1$", "Checking, we find that the only integer roots are $\\boxed{-2,1}.$", 1.0), // MV
        ("$9$", "Then, $129^{34}+96^{38} \\equiv \\boxed{9} \\pmod{11}.$", 1.0), // MV
        ("$90^\\circ$", "Therefore, \\begin{align*} \\angle BAC &= \\angle BAD + \\angle DAC \\\\ &= 50^\\circ+40^\\circ \\\\ &= \\boxed{90^\\circ}. \\end{align*}", 1.0), // MV
        ("$0$", "Hence, the degree of $p(x)$ (which is the constant polynomial 1) is $\\boxed{0}.$", 1.0), // MV
        ("$204_5$", "for a quotient of $\\boxed{204_5}$. Note that in the above calculation we have used that $13_5$ divided by $2_5$ is $4_5$.", 1.0), // MV
        ("$(6,31,-1)$", "Then solving the system of equations, we find $(p,q,r) = \\boxed{(6,31,-1)}.$", 1.0), // MV
        ("$1 \\pm \\sqrt{19}$", "By the quadratic formula, $x = \\boxed{1 \\pm \\sqrt{19}}.$", 1.0), // MV
        ("$3 \\pm 2 \\sqrt{2}$", "By the quadratic formula, the roots are $x = \\boxed{3 \\pm 2 \\sqrt{2}}.$", 1.0), // MV
        ("$\\{1\\pm\\sqrt{5},-2\\}$", "The roots of $P(x)$ are $-2$ and $1 \\pm \\sqrt{5}$, so the answer is $\\boxed{\\{1\\pm\\sqrt{5},-2\\}}.$", 1.0), // MV
        ("$f(2) < f(1) < f(4)$", "Hence, $\\boxed{f(2) < f(1) < f(4)}.$", 1.0), // MV
        ("$2 \\sin b \\cos a$", "By sum-to-product,\n\\[\\sin (a + b) - \\sin (a - b) = \\boxed{2 \\sin b \\cos a}.\\]", 1.0), // MV
        ("$\\frac{\\pi r}{h+r}$", "Thus we have $s = x+y+z = (z+x)+y = h+r$. The answer is $\\boxed{\\frac{\\pi r}{h+r}}$.", 1.0), // MV
        ("$125$ miles", "The distance is $\\boxed{125\\textnormal{ miles}}.$", 1.0), // MV
        (
            "$[-1, -\\frac{1}{2}) \\cup (-\\frac{1}{2}, 0) \\cup (0, 1) \\cup (1, \\infty)$",
            "The solution set is $\\boxed{[-1, -\\tfrac12) \\cup (-\\tfrac12, 0) \\cup (0, 1) \\cup (1, \\infty)}.$",
            1.0,
        ), // MV
        ("$\\sqrt{2}+\\sqrt{5}$", "The answer is $\\boxed{\\sqrt 2+\\sqrt 5}$", 1.0), // MV
        ("$\\frac{9}{4}\\pi$", "Therefore $\\boxed{\\frac94\\pi}$.", 1.0), // MV
        ("x \\in \\boxed{\\{-1\\} \\cup [0,7)}.$", "x \\in \\boxed{\\{-1\\} \\cup [0,7)}.$", 1.0), // MV
        // Not from Math-Verify: ± answers must match both roots.
        ("$1 \\pm \\sqrt{19}$", "$\\boxed{1 + \\sqrt{19}}$", 0.0),
        ("$\\frac{-1 \\pm \\sqrt{5}}{2}$", "$\\boxed{\\frac{-1 - \\sqrt{5}}{2}, \\frac{-1 + \\sqrt{5}}{2}}$", 1.0),
    ]);
}

#[test]
fn math_verify_relations() {
    check(&[
        ("$x >= 5$", "Therefore $x \\geq 5$ is the solution.", 1.0), // MV
        ("$x < 3$", "We find that $x \\lt 3$.", 1.0),                // MV
        ("$x \\leq 2$", "Thus $x <= 2$ is our answer.", 1.0),        // MV
        ("$x > 5$", "Therefore $x \\gt 5$ is the solution.", 1.0),   // MV
        ("$x != 3$", "We find that $x \\neq 3$.", 1.0),              // MV
        ("$x > 5$", "Therefore $x < 5$ is the solution.", 0.0),      // MV
        ("$x \\geq 5$", "The solution is $x \\leq 5$", 0.0),         // MV
        ("$x \\neq 5$", "The solution is $x != 5$", 1.0),            // MV
        ("$x \\leq 5$", "$5 \\geq x$", 1.0),                         // MV
        ("$x \\geq 5$", "$5 \\leq x$", 1.0),                         // MV
        ("$x = 11$", "$x = 5+5+1 = 7 =11$", 1.0),                    // MV
        ("$7 = 11a+c$", "$11a+c$", 0.0),                             // MV
        ("$x = 1/3$", "$x = 5+5+1 = 1/3 \\approx 11$", 1.0),         // MV
        ("$11$", "$x=11$", 1.0),                                     // MV
        ("$11$", "$x\\approx11$", 1.0),                              // MV
        ("$1/3$", "$x=1/3\\approx1.3$", 1.0),                        // MV
        ("$x < 1$", "$-x > -1$", 1.0),                               // MV
        ("$x < 1$", "$x > -1$", 0.0),                                // MV
        ("$x <= 1$", "$-x >= -1$", 1.0),                             // MV
        ("$a +3z = 0$", "$0$", 0.0),                                 // MV
        ("$2x + z = 1$", "$1$", 0.0),                                // MV
        ("$a^2 + b = 0$", "$0$", 0.0),                               // MV
        ("$k=1$", "$1$", 1.0),                                       // MV
        ("$1$", "$k=1$", 1.0),                                       // MV
        ("$z = 1 + 1 = 2$", "$z = 3+3 = 2$", 1.0),                   // MV
        ("$2x+4y-3=0$", "$y=-\\frac{1}{2}x+\\frac{3}{4}$", 1.0),     // MV
        // Not from Math-Verify: a scaled inequality keeps its direction only for c > 0.
        ("$2x < 4$", "$x < 2$", 1.0),
        ("$x \\le 2$", "$x < 2$", 0.0),
    ]);
}

#[test]
fn math_verify_matrices() {
    check(&[
        (
            r"$\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}$",
            r"The identity matrix is $ \begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix} $.",
            1.0,
        ), // MV
        (
            r"$\begin{bmatrix}0 & 0 \\0 & 0\end{bmatrix}$",
            r"Here is a zero matrix: $ \begin{pmatrix}0 & 0 \\0 & 0\end{pmatrix} $",
            1.0,
        ), // MV
        (
            r"$\begin{pmatrix}1 & 2 \\3 & 4\end{pmatrix}$",
            r"Special matrix: $ \left[\begin{array}{cc}1 & 2 \\3 & 4\end{array}\right] $",
            1.0,
        ), // MV
        (
            r"$\begin{pmatrix}\frac{1}{2} & \frac{3}{4} \\ \frac{5}{6} & \frac{7}{8}\end{pmatrix}$",
            r"Matrix with fractions: $ \begin{pmatrix}\frac{1}{2} & \frac{3}{4} \\ \frac{5}{6} & \frac{7}{8}\end{pmatrix} $",
            1.0,
        ), // MV
        (
            r"$\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}$",
            r"The matrix is $\begin{pmatrix}1 & 2 \\ 3 & 5\end{pmatrix}$",
            0.0,
        ), // MV
    ]);
}

/// `\pm b` is the set of both values (docs/rewards.md): it equals `{b, -b}` and `x = \pm b`,
/// and neither value alone (both scored 1 before).
#[test]
fn plus_minus_is_both_values_not_one() {
    check(&[
        ("2", "$\\pm 2$", 0.0),
        ("\\pm 2", "$2$", 0.0),
        ("\\pm 2", "$\\pm 2$", 1.0),
        ("\\pm 2", "$\\{-2, 2\\}$", 1.0),
        ("\\{2, -2\\}", "$x = \\pm 2$", 1.0),
        (
            "\\frac{1 \\pm \\sqrt{5}}{2}",
            "$\\frac{1 + \\sqrt{5}}{2}, \\frac{1 - \\sqrt{5}}{2}$",
            1.0,
        ),
    ]);
}

/// Integers and rationals compare exactly (a float made `10^{400}` equal `10^{500}` and
/// `\infty`, `2^{64}+1` equal `2^{64}`, `10^{-400}` equal `0`); powers too large to compute
/// compare as written; a tolerance applies only where a value is inexact.
#[test]
fn integers_and_rationals_compare_exactly() {
    check(&[
        ("10^{400}", "$10^{500}$", 0.0),
        ("10^{400}", "$10^{400}$", 1.0),
        ("10^{400}", "$100^{200}$", 1.0),
        ("\\infty", "$10^{400}$", 0.0),
        ("10^{400}", "$\\infty$", 0.0),
        ("2^{64}+1", "$2^{64}$", 0.0),
        ("2^{64}+1", "$18446744073709551617$", 1.0),
        ("18446744073709551617", "$18446744073709551616$", 0.0),
        ("10^{-400}", "$0$", 0.0),
        ("10^{-400}", "$\\frac{1}{10^{400}}$", 1.0),
        ("\\frac{1}{3}", "$\\frac{2}{6}$", 1.0),
        ("\\frac{1}{3}", "$\\frac{1}{3} + 10^{-30}$", 0.0),
        ("30!", "$265252859812191058636308480000000$", 1.0),
        ("30!", "$265252859812191058636308480000001$", 0.0),
        ("\\sqrt{16}", "$4$", 1.0),
        ("(-1)^{10^{12}+1}", "$-1$", 1.0),
        // Too large to compute: equal only as written.
        ("10^{10^{9}}", "$10^{10^{9}}$", 1.0),
        ("10^{10^{9}}", "$10^{10^{9}+1}$", 0.0),
        ("10^{10^{9}}", "$\\infty$", 0.0),
        // Inexact values keep the tolerance (Math-Verify reads decimals as floats).
        ("\\frac{1}{3}", "$0.3333333$", 1.0),
        ("\\frac{1}{2}", "$0.5$", 1.0),
        ("\\sqrt{2}", "$1.41421356$", 1.0),
        ("\\frac{1}{3}", "$0.333$", 0.0),
    ]);
}

/// The families where oxrl disagreed with HF Math-Verify (issue 14): an inequality against
/// the equivalent interval (a reference relation against a predicted set, not the reverse),
/// `x \in S`, `±` against a two-element set, several boxed answers against one list, sets
/// against tuples, and intervals with decimal endpoints against fractional ones. Every
/// expected value is Math-Verify 0.9.0's own verdict, `verify(parse(gold), parse(pred))`.
#[test]
fn math_verify_families() {
    check(&[
        ("\\boxed{(1,2)}", "\\boxed{\\{2,1\\}}", 0.0),
        ("\\boxed{(1,2)}", "\\boxed{1, 2}", 1.0),
        ("\\boxed{(1,2)}", "\\boxed{2, 1}", 0.0),
        ("\\boxed{1,2}", "\\boxed{(2,1)}", 1.0),
        ("\\boxed{(2,1)}", "\\boxed{(1,2)}", 0.0),
        ("\\boxed{(2,1)}", "\\boxed{\\{1,2\\}}", 0.0),
        ("\\boxed{[1,2]}", "\\boxed{\\{1,2\\}}", 0.0),
        ("\\boxed{\\{1,2\\}}", "\\boxed{[1,2]}", 0.0),
        ("\\boxed{(1,2,3)}", "\\boxed{\\{1,2,3\\}}", 1.0),
        ("\\boxed{\\{1,2,3\\}}", "\\boxed{(3,2,1)}", 1.0),
        ("\\boxed{(1,2,3)}", "\\boxed{\\{3,2,1\\}}", 0.0),
        (
            "\\boxed{1 \\pm \\sqrt{2}}",
            "\\boxed{1+\\sqrt2, 1-\\sqrt2}",
            1.0,
        ),
        (
            "\\boxed{1+\\sqrt2, 1-\\sqrt2}",
            "\\boxed{1 \\pm \\sqrt{2}}",
            1.0,
        ),
        (
            "\\boxed{\\{1-\\sqrt2, 1+\\sqrt2\\}}",
            "\\boxed{1 \\pm \\sqrt{2}}",
            1.0,
        ),
        (
            "\\boxed{\\pm\\frac{1}{2}}",
            "\\boxed{\\frac12, -\\frac12}",
            1.0,
        ),
        ("\\boxed{x = \\pm 3}", "\\boxed{3, -3}", 1.0),
        ("\\boxed{3, -3}", "\\boxed{x = \\pm 3}", 1.0),
        ("\\boxed{x=3, x=-3}", "\\boxed{\\pm 3}", 1.0),
        (
            "\\boxed{1}",
            "First \\boxed{1}. Later, after much thought, \\boxed{2}.",
            0.0,
        ),
        (
            "\\boxed{2}",
            "First \\boxed{1}. Later, after much thought, \\boxed{2}.",
            0.0,
        ),
        ("\\boxed{1,2}", "\\boxed{1} or \\boxed{2}", 1.0),
        ("\\boxed{(1,2)}", "\\boxed{1} and \\boxed{2}", 1.0),
        ("\\boxed{\\{1,2\\}}", "\\boxed{1}, \\boxed{2}", 1.0),
        ("\\boxed{2}", "\\boxed{2} and \\boxed{2}", 1.0),
        (
            "\\boxed{(-\\infty, 0.5)}",
            "\\boxed{(-\\infty, \\frac{1}{2})}",
            1.0,
        ),
        (
            "\\boxed{\\left[ 0.25, 0.75 \\right]}",
            "\\boxed{\\left[\\frac{1}{4}, \\frac{3}{4}\\right]}",
            1.0,
        ),
        (
            "\\boxed{(-0.5, 2.25]}",
            "\\boxed{(-\\frac12, \\frac94]}",
            1.0,
        ),
        (
            "\\boxed{[1.5, \\infty)}",
            "\\boxed{[\\frac32, \\infty)}",
            1.0,
        ),
        ("\\boxed{[0.33, 1]}", "\\boxed{[\\frac13, 1]}", 0.0),
        ("\\boxed{[0.333333, 1]}", "\\boxed{[\\frac13, 1]}", 1.0),
        ("\\boxed{[\\frac13, 1]}", "\\boxed{[0.3333333, 1]}", 1.0),
        ("\\boxed{(\\frac{1}{3}, 2)}", "\\boxed{(0.333, 2)}", 0.0),
        ("\\boxed{x > 3}", "\\boxed{(3, \\infty)}", 1.0),
        ("\\boxed{(3, \\infty)}", "\\boxed{x > 3}", 0.0),
        ("\\boxed{x \\ge -1}", "\\boxed{[-1, \\infty)}", 1.0),
        ("\\boxed{x < 5}", "\\boxed{(-\\infty, 5)}", 1.0),
        ("\\boxed{-2 \\le x < 3}", "\\boxed{[-2, 3)}", 1.0),
        ("\\boxed{-2 \\le x < 3}", "\\boxed{x \\in [-2, 3)}", 1.0),
        ("\\boxed{x \\in [-2, 3)}", "\\boxed{[-2,3)}", 1.0),
        ("\\boxed{3 > x > 1}", "\\boxed{(1,3)}", 1.0),
        ("\\boxed{1<x<2}", "\\boxed{(1,2]}", 0.0),
        ("\\boxed{1<x<2}", "\\boxed{1<x<2}", 1.0),
        ("\\boxed{1<x<2}", "\\boxed{2>x>1}", 0.0),
        ("\\boxed{(1,2)}", "\\boxed{(1,2)}", 1.0),
        ("\\boxed{x \\in (1,2)}", "\\boxed{1 < x < 2}", 0.0),
        ("\\boxed{y \\in (1,2)}", "\\boxed{(1,2)}", 1.0),
        ("\\boxed{1 < y < 2}", "\\boxed{(1, 2)}", 1.0),
        ("\\boxed{1 < x < 2}", "\\boxed{\\{1,2\\}}", 1.0),
        (
            "\\boxed{x<1 \\text{ or } x>2}",
            "\\boxed{(-\\infty,1)\\cup(2,\\infty)}",
            0.0,
        ),
        (
            "\\boxed{(-\\infty,1)\\cup(2,\\infty)}",
            "\\boxed{x<1 \\text{ or } x>2}",
            0.0,
        ),
        (
            "$-3 < x < 5$",
            "The solution set is $\\boxed{(-3, 5)}$.",
            1.0,
        ),
        (
            "$-3 < x < 5$",
            "So $x \\in \\left(-3, 5\\right)$, i.e. \\boxed{\\left(-3,5\\right)}",
            1.0,
        ),
        ("$x \\le 4$", "\\boxed{(-\\infty, 4]}", 1.0),
        ("$x \\le 4$", "\\boxed{(-\\infty, 4)}", 0.0),
        (
            "$x > -\\frac{1}{2}$",
            "\\boxed{\\left(-\\frac12, \\infty\\right)}",
            1.0,
        ),
        ("$x > -\\frac{1}{2}$", "\\boxed{(-0.5, \\infty)}", 1.0),
        ("$0 \\leq x \\leq \\pi$", "\\boxed{[0, \\pi]}", 1.0),
        ("$2 \\ge x \\ge -1$", "\\boxed{[-1, 2]}", 1.0),
        ("$[-1, 2]$", "\\boxed{-1 \\le x \\le 2}", 0.0),
        ("$(-3,5)$", "\\boxed{x \\in (-3,5)}", 1.0),
        ("$x \\in (-3,5)$", "\\boxed{(-3, 5)}", 1.0),
        ("$t \\in [0, 1)$", "\\boxed{[0,1)}", 1.0),
        (
            "$\\pm 4$",
            "The solutions are $x = \\pm 4$, so \\boxed{\\pm 4}",
            1.0,
        ),
        ("$\\pm 4$", "\\boxed{4, -4}", 1.0),
        ("$\\pm 4$", "\\boxed{-4} and \\boxed{4}", 1.0),
        ("$4, -4$", "\\boxed{\\pm4}", 1.0),
        ("$\\pm 4$", "\\boxed{4}", 0.0),
        (
            "$3 \\pm 2\\sqrt{2}$",
            "\\boxed{3+2\\sqrt{2}, 3-2\\sqrt{2}}",
            1.0,
        ),
        ("$3 \\pm 2\\sqrt{2}$", "\\boxed{3+2\\sqrt{2}}", 0.0),
        ("$1, 3$", "The roots are \\boxed{1} and \\boxed{3}.", 1.0),
        ("$1, 3$", "The roots are \\boxed{3} and \\boxed{1}.", 1.0),
        ("$1, 3, 5$", "\\boxed{1}, \\boxed{3}, and \\boxed{5}", 1.0),
        ("$3$", "\\boxed{1} and \\boxed{3}", 0.0),
        (
            "$3$",
            "We get \\boxed{3}. So the answer is \\boxed{3}.",
            1.0,
        ),
        ("$(1, 3)$", "\\boxed{1}, \\boxed{3}", 1.0),
        ("$\\{1, 3\\}$", "\\boxed{(3, 1)}", 1.0),
        ("$\\{1, 3\\}$", "\\boxed{(1, 3)}", 1.0),
        ("$(1, 3)$", "\\boxed{\\{3, 1\\}}", 0.0),
        ("$(1, 3)$", "\\boxed{\\{1, 3\\}}", 1.0),
        ("$(1,2,3)$", "\\boxed{1, 2, 3}", 1.0),
        ("$(1,2,3)$", "\\boxed{3, 2, 1}", 0.0),
        ("$1, 2, 3$", "\\boxed{(3,2,1)}", 1.0),
        ("$[1,3]$", "\\boxed{\\{1,3\\}}", 0.0),
        ("$(0.5, 2)$", "\\boxed{(\\frac{1}{2}, 2)}", 1.0),
        ("$(\\frac{1}{2}, 2)$", "\\boxed{(0.5, 2)}", 1.0),
        (
            "$[0.2, 0.4]$",
            "\\boxed{\\left[\\frac{1}{5}, \\frac{2}{5}\\right]}",
            1.0,
        ),
        (
            "$\\left[\\frac{1}{5}, \\frac{2}{5}\\right]$",
            "\\boxed{[0.2, 0.4]}",
            1.0,
        ),
        (
            "$(-\\infty, -2.5]$",
            "\\boxed{(-\\infty, -\\frac{5}{2}]}",
            1.0,
        ),
        ("$(1.5, 4.25)$", "\\boxed{(\\frac32, \\frac{17}{4})}", 1.0),
        ("$(1.5, 4.25)$", "\\boxed{(\\frac32, \\frac{17}{5})}", 0.0),
        ("$[\\frac{2}{3}, 1]$", "\\boxed{[0.67, 1]}", 0.0),
        ("$[\\frac{2}{3}, 1]$", "\\boxed{[0.666667, 1]}", 1.0),
        (
            "$(-\\infty, 1) \\cup (2, \\infty)$",
            "\\boxed{(-\\infty,1)\\cup(2,\\infty)}",
            1.0,
        ),
        (
            "$(-\\infty, 1) \\cup (2, \\infty)$",
            "\\boxed{(2,\\infty)\\cup(-\\infty,1)}",
            1.0,
        ),
        ("$12$", "The answer is \\boxed{12}.", 1.0),
        ("$\\frac{3}{4}$", "\\boxed{0.75}", 1.0),
        ("$2^{100}$", "\\boxed{1267650600228229401496703205376}", 1.0),
        ("$2^{100}$", "\\boxed{1267650600228229401496703205377}", 0.0),
    ]);
}

/// A deliberate difference: digit groups apart by a LaTeX space (`1\,000`, `10\,000\,000`,
/// `1\;000`, `\thinspace`) are one number. Math-Verify reads `1\,000` as the product 1·000 = 0,
/// so it scores `\boxed{1\,000}` wrong against 1000 and right against 0.
#[test]
fn latex_thin_spaces_separate_thousands() {
    check(&[
        ("1000", "\\boxed{1\\,000}", 1.0),
        ("\\boxed{1\\,000}", "\\boxed{1000}", 1.0),
        ("10000000", "The total is $10\\,000\\,000$.", 1.0),
        ("12345.5", "\\boxed{12\\,345.5}", 1.0),
        ("1000", "\\boxed{1\\;000}", 1.0),
        ("1000", "\\boxed{1\\thinspace 000}", 1.0),
        ("0", "\\boxed{1\\,000}", 0.0),
        ("1000", "\\boxed{1\\,00}", 0.0),
    ]);
}
