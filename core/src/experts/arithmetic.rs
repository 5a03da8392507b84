//! The synthetic arithmetic domain: multi-digit addition, subtraction and
//! multiplication by a digit, each with a worked answer a small model can learn.
//!
//! A problem is asked as `Q: 4821+397\nA:` and answered on one line, digit by
//! digit from the right with carries (digits are indexed from the right, `d0`
//! is the units):
//!
//! ```text
//! Q: 4821+397
//! A: d0 1+7+0=8 c0; d1 2+9+0=11 c1; d2 8+3+1=12 c1; d3 4+0+1=5 c0; rev d4 0 d3 5 d2 2 d1 1 d0 8; so 5218
//! ```
//!
//! Step `dI` reads the operands' digits `I` places left of the `+` and of the
//! line end of the question, fixed offsets a model learns without knowing an
//! operand's length (a shorter operand gives 0); `rev` lists the result digits
//! from the most significant one, each found by its step's index, and `so`
//! gives the result as a plain number. The answer of any model is read the
//! same way ([`parse_answer`]): the last integer on the first non-empty line it
//! generates.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::corpus::Split;

/// Number of held-out test problems (the exact-match benchmark).
pub const TEST_PROBLEMS: usize = 500;
const VALID_PROBLEMS: usize = 1_000;
const TRAIN_PROBLEMS: usize = 40_000;

/// An operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// a + b, both up to 3 digits.
    Add,
    /// a − b with a ≥ b, both up to 3 digits.
    Sub,
    /// a × b with a up to 3 digits and b a digit from 2 to 9.
    Mul,
}

/// One problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Problem {
    /// Left operand.
    pub a: u32,
    /// Operation.
    pub op: Op,
    /// Right operand.
    pub b: u32,
}

impl Problem {
    /// A random problem: operation uniform, each operand's digit count uniform in 1..=3.
    pub fn random(rng: &mut StdRng) -> Self {
        let number = |rng: &mut StdRng| {
            let len = rng.random_range(1..=3u32);
            let lo = if len == 1 { 0 } else { 10u32.pow(len - 1) };
            rng.random_range(lo..10u32.pow(len))
        };
        match rng.random_range(0..3) {
            0 => Problem { a: number(rng), op: Op::Add, b: number(rng) },
            1 => {
                let (x, y) = (number(rng), number(rng));
                Problem { a: x.max(y), op: Op::Sub, b: x.min(y) }
            }
            _ => Problem { a: number(rng), op: Op::Mul, b: rng.random_range(2..=9) },
        }
    }

    /// The correct result.
    pub fn answer(&self) -> u64 {
        let (a, b) = (u64::from(self.a), u64::from(self.b));
        match self.op {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
        }
    }

    fn symbol(&self) -> char {
        match self.op {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
        }
    }

    /// The question, as given to every model: `Q: 4821+397\nA:`.
    pub fn prompt(&self) -> String {
        crate::gate::question(self.a, self.symbol(), self.b)
    }

    /// The worked answer line (with a leading space and a final newline).
    pub fn worked(&self) -> String {
        let n = digits(self.a).len().max(if self.op == Op::Mul { 1 } else { digits(self.b).len() });
        let (da, db) = (padded(self.a, n), padded(self.b, if self.op == Op::Mul { 1 } else { n }));
        let sym = self.symbol();
        let mut out = String::new();
        let mut carry = 0u32;
        let mut result = Vec::with_capacity(n + 1);
        for i in 0..n {
            let (x, y) = (da[i], if self.op == Op::Mul { db[0] } else { db[i] });
            let (s, next) = match self.op {
                Op::Add => (x + y + carry, (x + y + carry) / 10),
                Op::Mul => (x * y + carry, (x * y + carry) / 10),
                Op::Sub if x >= y + carry => (x - y - carry, 0),
                Op::Sub => (x + 10 - y - carry, 1),
            };
            let joiner = if self.op == Op::Mul { '+' } else { sym };
            out.push_str(&format!(" d{i} {x}{sym}{y}{joiner}{carry}={s} c{next};"));
            result.push(s % 10);
            carry = next;
        }
        result.push(carry);
        out.push_str(" rev");
        for i in (0..=n).rev() {
            out.push_str(&format!(" d{i} {}", result[i]));
        }
        out.push_str(&format!("; so {}\n", self.answer()));
        out
    }

    /// Question and worked answer: one document of the corpus.
    pub fn document(&self) -> String {
        self.prompt() + &self.worked()
    }
}

/// Decimal digits of `x`, least significant first.
fn digits(x: u32) -> Vec<u32> {
    let mut out = vec![x % 10];
    let mut rest = x / 10;
    while rest > 0 {
        out.push(rest % 10);
        rest /= 10;
    }
    out
}

fn padded(x: u32, n: usize) -> Vec<u32> {
    let mut d = digits(x);
    d.resize(n, 0);
    d
}

/// The problems of a split: seeded, the test split has [`TEST_PROBLEMS`]
/// distinct problems, and no validation or test problem occurs in training.
pub fn split_problems(split: Split) -> Vec<Problem> {
    let unique = |seed: u64, count: usize, exclude: &std::collections::HashSet<Problem>| {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let p = Problem::random(&mut rng);
            if !exclude.contains(&p) && seen.insert(p) {
                out.push(p);
            }
        }
        out
    };
    let none = std::collections::HashSet::new();
    let test = unique(13, TEST_PROBLEMS, &none);
    if split == Split::Test {
        return test;
    }
    let valid = unique(12, VALID_PROBLEMS, &test.iter().copied().collect());
    if split == Split::Valid {
        return valid;
    }
    let held_out: std::collections::HashSet<Problem> = test.into_iter().chain(valid).collect();
    let mut rng = StdRng::seed_from_u64(11);
    let mut out = Vec::with_capacity(TRAIN_PROBLEMS);
    while out.len() < TRAIN_PROBLEMS {
        let p = Problem::random(&mut rng);
        if !held_out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The answer in a model's output: the last integer on its first non-empty line.
pub fn parse_answer(generated: &str) -> Option<u64> {
    let line = generated.lines().find(|l| !l.trim().is_empty())?;
    let mut last = None;
    let mut current = String::new();
    for c in line.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            current.push(c);
        } else if !current.is_empty() {
            last = current.parse().ok();
            current.clear();
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_matches_the_documentation() {
        let p = Problem { a: 4821, op: Op::Add, b: 397 };
        assert_eq!(
            p.document(),
            "Q: 4821+397\nA: d0 1+7+0=8 c0; d1 2+9+0=11 c1; d2 8+3+1=12 c1; d3 4+0+1=5 c0; \
             rev d4 0 d3 5 d2 2 d1 1 d0 8; so 5218\n"
        );
        let sub = Problem { a: 1000, op: Op::Sub, b: 999 };
        assert!(sub.worked().contains("d0 0-9-0=1 c1; d1 0-9-1=0 c1"), "{}", sub.worked());
        let mul = Problem { a: 95, op: Op::Mul, b: 7 };
        assert_eq!(mul.worked(), " d0 5*7+0=35 c3; d1 9*7+3=66 c6; rev d2 6 d1 6 d0 5; so 665\n");
    }

    #[test]
    fn rev_digits_always_spell_the_answer() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..2_000 {
            let p = Problem::random(&mut rng);
            let worked = p.worked();
            let rev = worked.split(" rev").nth(1).unwrap().split(';').next().unwrap();
            let digits: String = rev.split_whitespace().skip(1).step_by(2).collect();
            assert_eq!(digits.trim_start_matches('0').parse::<u64>().unwrap_or(0), p.answer(), "{worked}");
            assert_eq!(parse_answer(&worked), Some(p.answer()));
        }
    }

    #[test]
    fn splits_are_disjoint_and_sized() {
        let test = split_problems(Split::Test);
        assert_eq!(test.len(), TEST_PROBLEMS);
        let train: std::collections::HashSet<Problem> = split_problems(Split::Train).into_iter().collect();
        assert!(test.iter().all(|p| !train.contains(p)));
        assert_eq!(split_problems(Split::Test), test, "deterministic");
    }

    #[test]
    fn parse_answer_takes_the_last_integer_of_the_first_line() {
        assert_eq!(parse_answer(" 12 + 30 = 42\n7"), Some(42));
        assert_eq!(parse_answer("\n\n so 5218"), Some(5218));
        assert_eq!(parse_answer("no digits"), None);
        assert_eq!(parse_answer(""), None);
    }
}
