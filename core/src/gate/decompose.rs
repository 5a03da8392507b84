//! Splitting a prompt into ordered subtasks (step 1 of the paper's pipeline).
//!
//! Rules, applied in this order:
//! 1. A blank prompt has no subtasks.
//! 2. If at least one line starts with a list marker (`1.`, `2)`, `(3)`, `-`,
//!    `*`, `+`, `•`, `‣`, `–`, `—`, `·`), every marked line starts a subtask and
//!    unmarked lines after it continue that subtask. Lines before the first
//!    marker are a shared preamble, prefixed to every subtask so that each one
//!    stands on its own.
//! 3. Otherwise, if there are several non-empty lines and none is indented (an
//!    indented line suggests code or a quotation, which must stay whole), each
//!    line is a subtask ("one task per line").
//! 4. Within each part, "; then", "; and then" and "; after that" (any case)
//!    join sequential steps and are split there.
//!
//! A plain prompt is therefore exactly one subtask, its text trimmed.

/// One part of a prompt, in prompt order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subtask {
    /// Position among the prompt's subtasks, from 0.
    pub index: usize,
    /// The subtask's text, trimmed, without its list marker.
    pub text: String,
}

/// Bullet characters that start a list item when followed by whitespace.
const BULLETS: [char; 9] = ['-', '*', '+', '•', '‣', '–', '—', '·', '◦'];

/// Words that, after a semicolon, join two sequential steps.
const JOINS: [&str; 3] = ["and then", "then", "after that"];

/// Splits `prompt` into ordered subtasks (see the module documentation).
pub fn decompose(prompt: &str) -> Vec<Subtask> {
    let lines: Vec<&str> = prompt.lines().filter(|l| !l.trim().is_empty()).collect();
    let parts: Vec<String> = if lines.iter().any(|l| strip_marker(l).is_some()) {
        list_items(&lines)
    } else if lines.len() > 1 && !lines.iter().any(|l| l.starts_with(char::is_whitespace)) {
        lines.iter().map(|l| l.trim().to_owned()).collect()
    } else if lines.is_empty() {
        Vec::new()
    } else {
        vec![prompt.trim().to_owned()]
    };
    parts
        .iter()
        .flat_map(|p| split_joins(p))
        .filter(|t| !t.is_empty())
        .enumerate()
        .map(|(index, text)| Subtask { index, text })
        .collect()
}

/// Groups lines into list items; lines before the first item form a preamble
/// that is prefixed to every item.
fn list_items(lines: &[&str]) -> Vec<String> {
    let mut preamble: Vec<&str> = Vec::new();
    let mut items: Vec<Vec<&str>> = Vec::new();
    for line in lines {
        match strip_marker(line) {
            Some(rest) => items.push(vec![rest.trim()]),
            None => match items.last_mut() {
                Some(item) => item.push(line.trim()),
                None => preamble.push(line.trim()),
            },
        }
    }
    let preamble = preamble.join("\n");
    items
        .into_iter()
        .map(|item| {
            let body = item.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join("\n");
            if preamble.is_empty() { body } else { format!("{preamble}\n{body}") }
        })
        .collect()
}

/// The rest of `line` after a list marker and whitespace, if it starts with one.
fn strip_marker(line: &str) -> Option<&str> {
    let s = line.trim_start();
    let after = if let Some(rest) = s.strip_prefix(BULLETS) {
        rest
    } else if let Some(rest) = s.strip_prefix('(') {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        rest[digits..].strip_prefix(')').filter(|_| (1..=4).contains(&digits))?
    } else {
        let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if !(1..=4).contains(&digits) {
            return None;
        }
        s[digits..].strip_prefix(['.', ')'])?
    };
    // A marker must be followed by whitespace and some text ("3.14" and "-x" are not markers).
    (after.starts_with(char::is_whitespace) && !after.trim().is_empty()).then_some(after)
}

/// Splits `text` at "; then"-style joins, trimming each piece.
fn split_joins(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut search = 0;
    while let Some(offset) = text[search..].find(';') {
        let pos = search + offset;
        let after = text[pos + 1..].trim_start();
        let join = JOINS.iter().find(|join| {
            after.get(..join.len()).is_some_and(|head| head.eq_ignore_ascii_case(join))
                && after[join.len()..].starts_with(char::is_whitespace)
        });
        match join {
            Some(join) => {
                pieces.push(text[start..pos].trim().to_owned());
                start = text.len() - after.len() + join.len();
                search = start;
            }
            None => search = pos + 1,
        }
    }
    pieces.push(text[start..].trim().to_owned());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(prompt: &str) -> Vec<String> {
        let subtasks = decompose(prompt);
        for (i, s) in subtasks.iter().enumerate() {
            assert_eq!(s.index, i, "indices are dense and ordered");
        }
        subtasks.into_iter().map(|s| s.text).collect()
    }

    #[test]
    fn empty_and_whitespace_give_no_subtasks() {
        assert!(decompose("").is_empty());
        assert!(decompose("   \n\t \r\n  ").is_empty());
        assert!(decompose("\u{3000}\u{a0}\n").is_empty(), "Unicode whitespace is blank too");
    }

    #[test]
    fn a_plain_prompt_is_one_trimmed_subtask() {
        assert_eq!(texts("  What is the capital of France?  \n"), ["What is the capital of France?"]);
        assert_eq!(texts("1. alone"), ["alone"], "a single list item");
    }

    #[test]
    fn numbered_and_bulleted_lists() {
        let prompt = "1. Define serendipity.\n2) Compute 17*23.\n(3) Write a Python function that reverses a list.";
        assert_eq!(
            texts(prompt),
            ["Define serendipity.", "Compute 17*23.", "Write a Python function that reverses a list."]
        );
        assert_eq!(texts("- one\n* two\n+ three\n• four"), ["one", "two", "three", "four"]);
    }

    #[test]
    fn preamble_is_shared_and_continuations_stay_with_their_item() {
        let prompt = "Answer briefly:\n\n1. What is a noun?\n   Give an example.\n2. What is 2+2?";
        assert_eq!(
            texts(prompt),
            ["Answer briefly:\nWhat is a noun?\nGive an example.", "Answer briefly:\nWhat is 2+2?"]
        );
    }

    #[test]
    fn one_task_per_line_unless_indented() {
        assert_eq!(texts("Define ossify\nAdd 12 and 30\n"), ["Define ossify", "Add 12 and 30"]);
        let code = "Explain this:\ndef f(x):\n    return x + 1";
        assert_eq!(texts(code), [code], "indented lines keep the prompt whole");
    }

    #[test]
    fn then_joins_are_split_but_plain_semicolons_are_not() {
        assert_eq!(
            texts("Define entropy; then compute 12+30; AND THEN write a haiku"),
            ["Define entropy", "compute 12+30", "write a haiku"]
        );
        assert_eq!(texts("Tea; coffee; then water"), ["Tea; coffee", "water"]);
        assert_eq!(texts("a; b"), ["a; b"]);
        assert_eq!(texts("x; thenceforth y"), ["x; thenceforth y"], "whole words only");
        assert_eq!(texts("; then b"), ["b"], "empty pieces are dropped");
    }

    #[test]
    fn markers_need_whitespace_and_text() {
        assert_eq!(texts("3.14 is pi"), ["3.14 is pi"]);
        assert_eq!(texts("-x is negative"), ["-x is negative"]);
        assert_eq!(texts("12345. not a marker\n12345. either"), ["12345. not a marker", "12345. either"]);
    }

    #[test]
    fn one_hundred_parts() {
        let prompt: String = (1..=100).map(|i| format!("{i}. task number {i}\n")).collect();
        let got = texts(&prompt);
        assert_eq!(got.len(), 100);
        assert_eq!(got[0], "task number 1");
        assert_eq!(got[99], "task number 100");
    }

    #[test]
    fn unicode_text_and_bullets() {
        assert_eq!(texts("• 日本語を翻訳する\n• Ünïcödé ✓; then ße"), ["日本語を翻訳する", "Ünïcödé ✓", "ße"]);
        assert_eq!(texts("—　em dash and ideographic space"), ["em dash and ideographic space"]);
    }

    #[test]
    fn very_long_lines_stay_whole() {
        let long = "word ".repeat(200_000);
        let got = texts(&format!("1. {long}\n2. short"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), long.trim().len());
        assert_eq!(texts(&long), [long.trim()]);
    }
}
