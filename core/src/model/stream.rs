//! Turning token bytes into a stream of text pieces that are always valid UTF-8,
//! and holding back text that might be the start of a stop string.

/// Accumulates token bytes and releases only complete UTF-8 characters.
///
/// A character split across tokens is held until its last byte arrives; bytes
/// that can never form a character become U+FFFD so the stream never stalls.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Adds `bytes` and returns the text that is now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, tail) = rest.split_at(e.valid_up_to());
                    // SAFETY-free: `valid` was just checked by from_utf8.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &tail[n..];
                        }
                        None => {
                            rest = tail;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }

    /// Ends the stream: an incomplete character left over becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = if self.pending.is_empty() { String::new() } else { char::REPLACEMENT_CHARACTER.to_string() };
        self.pending.clear();
        out
    }
}

/// Watches the generated text for stop strings.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub struct StopCheck {
    /// Text safe to show now.
    pub emit: String,
    /// Whether a stop string was found (the text from it on is dropped).
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Adds `text`; returns what can be shown and whether generation must stop.
    pub fn push(&mut self, text: &str) -> StopCheck {
        self.held.push_str(text);
        let first_stop = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first_stop {
            let emit = self.held[..at].to_owned();
            self.held.clear();
            return StopCheck { emit, stopped: true };
        }
        // Hold back the longest tail that could still grow into a stop string.
        let hold_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let emit = self.held[..hold_from].to_owned();
        self.held.drain(..hold_from);
        StopCheck { emit, stopped: false }
    }

    /// Ends the stream: held text was not a stop string after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_characters_split_across_tokens_are_held_back() {
        let mut d = Utf8Decoder::default();
        let emoji = "🦀".as_bytes();
        assert_eq!(d.push(&emoji[..1]), "");
        assert_eq!(d.push(&emoji[1..3]), "");
        assert_eq!(d.push(&emoji[3..]), "🦀");
        let cjk = "漢字".as_bytes();
        assert_eq!(d.push(&cjk[..4]), "漢");
        assert_eq!(d.push(&cjk[4..]), "字");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut d = Utf8Decoder::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(d.push(&"é".as_bytes()[..1]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn stop_string_across_pieces_is_cut_and_never_shown() {
        let mut m = StopMatcher::new(&["<END>".to_owned()]);
        assert_eq!(m.push("hello <E"), StopCheck { emit: "hello ".into(), stopped: false });
        assert_eq!(m.push("N"), StopCheck { emit: "".into(), stopped: false });
        assert_eq!(m.push("D> more"), StopCheck { emit: "".into(), stopped: true });
    }

    #[test]
    fn a_false_start_is_released() {
        let mut m = StopMatcher::new(&["<END>".to_owned(), String::new()]);
        assert_eq!(m.push("a <E"), StopCheck { emit: "a ".into(), stopped: false });
        assert_eq!(m.push("X"), StopCheck { emit: "<EX".into(), stopped: false });
        assert_eq!(m.push("<"), StopCheck { emit: "".into(), stopped: false });
        assert_eq!(m.finish(), "<");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(&["cd".to_owned(), "b".to_owned()]);
        assert_eq!(m.push("abcd"), StopCheck { emit: "a".into(), stopped: true });
    }
}
