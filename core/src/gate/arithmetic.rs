//! Arithmetic asked in words, put into the arithmetic expert's question form.
//!
//! The arithmetic expert was trained on questions written `Q: 482+397\nA:` and
//! knows nothing else: asked "What is 482 + 397?" it answers nonsense, and the
//! gate, trained on the same questions, does not recognise the words either. A
//! subtask that asks exactly one problem the expert covers is therefore also
//! written in that form, for the gate and for the arithmetic expert (every other
//! expert gets the words as they were).
//!
//! Covered, as in training: `a + b` and `a − b` with `a ≥ b`, both of 1 to 3
//! digits, and `a × b` with `a` of 1 to 3 digits and `b` a digit from 2 to 9
//! (either order). Operators: `+ plus`, `- − minus`, `* × x times`, `multiplied
//! by`. Around the problem only a few asking words may appear ("what is",
//! "compute", "how much is", "please", `= ? .`); anything else ("I have 3
//! apples plus 2 pears, write a story") is left alone.

/// The id of the arithmetic expert in `models/experts/`.
pub const ARITHMETIC_EXPERT: &str = "arithmetic";
/// How every question to the arithmetic expert begins (in its training
/// corpus, a line starting with it starts a new problem).
pub const QUESTION_START: &str = "Q: ";

/// Words that may surround the problem in a question.
const ASKING_WORDS: [&str; 16] = [
    "what",
    "is",
    "what's",
    "whats",
    "compute",
    "calculate",
    "evaluate",
    "how",
    "much",
    "please",
    "the",
    "result",
    "of",
    "solve",
    "equals",
    "answer",
];

/// The question `a op b` in the expert's form, `op` one of `+ - *`.
pub fn question(a: u32, op: char, b: u32) -> String {
    format!("{QUESTION_START}{a}{op}{b}\nA:")
}

/// The expert's question for `text` if it asks exactly one covered problem.
pub fn arithmetic_question(text: &str) -> Option<String> {
    let lower = text.to_lowercase().replace("multiplied by", " * ");
    let spaced: String = lower
        .chars()
        .flat_map(|c| match c {
            '+' | '-' | '−' | '*' | '×' | '=' | '?' | '!' | ',' | ':' => [' ', c, ' '],
            _ => [c, '\0', '\0'],
        })
        .filter(|&c| c != '\0')
        .collect();
    let words: Vec<&str> =
        spaced.split_whitespace().map(|w| w.trim_end_matches('.')).filter(|w| !w.is_empty()).collect();
    let number = |w: &str| (w.len() <= 3 && w.chars().all(|c| c.is_ascii_digit())).then(|| w.parse::<u32>().ok())?;
    let operator = |w: &str| match w {
        "+" | "plus" => Some('+'),
        "-" | "−" | "minus" => Some('-'),
        "*" | "×" | "x" | "times" => Some('*'),
        _ => None,
    };
    let at =
        words.windows(3).position(|w| number(w[0]).is_some() && operator(w[1]).is_some() && number(w[2]).is_some())?;
    let asking = |w: &&str| ASKING_WORDS.contains(w) || ["=", "?", "!", ",", ":"].contains(w);
    if !words[..at].iter().chain(&words[at + 3..]).all(asking) {
        return None;
    }
    let (a, op, b) = (number(words[at])?, operator(words[at + 1])?, number(words[at + 2])?);
    match op {
        '+' => Some(question(a, op, b)),
        '-' if a >= b => Some(question(a, op, b)),
        '*' if (2..=9).contains(&b) => Some(question(a, op, b)),
        '*' if (2..=9).contains(&a) => Some(question(b, op, a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_problems_in_words_become_questions() {
        for (text, expected) in [
            ("What is 482 + 397?", "Q: 482+397\nA:"),
            ("what's 482 plus 397", "Q: 482+397\nA:"),
            ("Compute 56 times 7.", "Q: 56*7\nA:"),
            ("7 × 56 =", "Q: 56*7\nA:"),
            ("How much is 900 − 12?", "Q: 900-12\nA:"),
            ("Calculate 35 multiplied by 4, please", "Q: 35*4\nA:"),
            ("5-5", "Q: 5-5\nA:"),
            ("3 * 1", "Q: 1*3\nA:"),
        ] {
            assert_eq!(arithmetic_question(text).as_deref(), Some(expected), "{text}");
        }
    }

    #[test]
    fn everything_else_is_left_alone() {
        for text in [
            "What is 17 * 23?",  // two-digit multiplier: not trained
            "What is 12 - 400?", // negative result
            "What is 1234 + 5?", // four digits
            "What is 1 * 1?",    // no factor from 2 to 9: not trained
            "I have 3 apples plus 2 pears, write a story",
            "Write a Python function that adds 2 + 3", // code, not a question
            "What is 2 + 3 + 4?",                      // more than one operation
            "Define entropy.",
            "",
        ] {
            assert_eq!(arithmetic_question(text), None, "{text}");
        }
    }
}
