//! The edge-offload wire protocol, sans-IO: frames in, messages out, no sockets
//! and no clock.
//!
//! A frame is `[length: u32 big-endian][version: u8][postcard body]`, where
//! `length` counts the version byte and the body. The length is checked against
//! the decoder's limit before any buffer grows, so a hostile peer cannot make us
//! allocate more than [`MAX_FRAME_LEN`] per stream. One QUIC connection carries
//! one authentication stream (`Hello` → `Welcome`), then one bidirectional
//! stream per request: `Generate` → `Token`* → `Done` | `Error` | `Busy`, or
//! `Probe` → `ProbeReply`. Cancelling a generation is a stream reset.

use serde::{Deserialize, Serialize};

use crate::model::{SamplingOptions, StopReason};

/// The protocol version this build speaks (the byte after the length).
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;
/// Largest frame (version byte + body) accepted by default: 64 KiB.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// ALPN protocol id negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"moe-edge/1";

/// Everything a malformed or hostile byte stream can produce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The announced frame length exceeds the limit (checked before allocating).
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A frame with length zero (no version byte).
    #[error("empty frame")]
    EmptyFrame,
    /// The version byte is not one this build speaks.
    #[error("unsupported protocol version {found} (this build speaks {supported})")]
    UnsupportedVersion {
        /// Version byte found.
        found: u8,
        /// Version this build speaks.
        supported: u8,
    },
    /// The body does not decode to a message, or has trailing bytes.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes pending)")]
    Truncated(usize),
    /// A well-formed message that is not allowed at this point of the exchange.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
}

/// Error codes carried by [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Missing or wrong bearer token.
    Unauthorized,
    /// The requested expert is not hosted here.
    UnknownExpert,
    /// The request is invalid (bad sampling options, empty prompt, ...).
    BadRequest,
    /// The deadline passed before the generation finished.
    DeadlineExceeded,
    /// The server is draining and takes no new work.
    ShuttingDown,
    /// The peer broke the protocol.
    Protocol,
    /// Something failed inside the server.
    Internal,
}

/// A generation request for one subtask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Expert id (e.g. `"code"`, or `"base"`).
    pub expert: String,
    /// The subtask's prompt.
    pub prompt: String,
    /// How tokens are drawn.
    pub sampling: SamplingOptions,
    /// At most this many new tokens.
    pub max_tokens: u32,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Wrap the prompt in the expert's chat template (experts without one get the plain prompt).
    pub chat: bool,
    /// Time budget in milliseconds from the moment the server receives the request
    /// (relative, so clocks need not agree); 0 = none.
    pub deadline_ms: u32,
}

/// Figures about one finished remote generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneStats {
    /// Tokens in the (templated) prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Microseconds spent waiting for a generation slot.
    pub queue_us: u64,
    /// Microseconds from the start of generation to the first token.
    pub first_token_us: u64,
    /// Decode speed on the server.
    pub decode_tokens_per_s: f32,
    /// Why it ended.
    pub stop_reason: StopReason,
}

/// Monotonic counters of a server, readable through a probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Generate requests received (admitted or not).
    pub requests: u64,
    /// Tokens generated.
    pub tokens: u64,
    /// Generations stopped because the client reset the stream.
    pub cancels: u64,
    /// Requests refused with `Busy`.
    pub busy: u64,
    /// Requests answered with `Error`.
    pub errors: u64,
    /// Generations finished normally.
    pub completed: u64,
    /// Connections refused for a bad token.
    pub auth_failures: u64,
    /// Frames that failed to decode.
    pub protocol_errors: u64,
    /// Generations running now.
    pub active: u32,
    /// Requests waiting for a slot now.
    pub queued: u32,
    /// Microseconds between the last observed stream reset and the end of that
    /// generation (how fast cancellation took effect).
    pub last_cancel_latency_us: u64,
}

/// A probe answer: load, hosted experts, counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReply {
    /// The probe's nonce, echoed.
    pub nonce: u64,
    /// Busy fraction of the generation slots, 0..=1.
    pub load: f32,
    /// Requests waiting for a slot.
    pub queue: u32,
    /// Expert ids hosted.
    pub hosted: Vec<String>,
    /// Recent decode speed per generation (tokens/s), 0 before the first one.
    pub tokens_per_s: f32,
    /// Server wall clock, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// The server's counters.
    pub counters: Counters,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Client → server, first stream of a connection: authenticate.
    Hello {
        /// Bearer token.
        token: String,
        /// Free-form client name (for logs).
        client: String,
    },
    /// Server → client: authenticated.
    Welcome {
        /// Server name.
        server: String,
        /// Expert ids hosted.
        hosted: Vec<String>,
    },
    /// Client → server: run one subtask.
    Generate(GenerateRequest),
    /// Server → client: a piece of generated text (whole UTF-8 characters).
    Token {
        /// The text.
        text: String,
    },
    /// Server → client: the generation finished.
    Done(DoneStats),
    /// Server → client: the request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// Server → client: no slot free and the queue is full; retry later.
    Busy {
        /// Suggested wait before retrying.
        retry_after_ms: u32,
    },
    /// Client → server: ask for load and counters.
    Probe {
        /// Echoed in the reply.
        nonce: u64,
    },
    /// Server → client: the answer to a probe.
    ProbeReply(ProbeReply),
}

impl Message {
    /// A short name of the variant (for errors and logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Generate(_) => "Generate",
            Message::Token { .. } => "Token",
            Message::Done(_) => "Done",
            Message::Error { .. } => "Error",
            Message::Busy { .. } => "Busy",
            Message::Probe { .. } => "Probe",
            Message::ProbeReply(_) => "ProbeReply",
        }
    }
}

/// Encodes `message` as one frame, refusing frames over `max` bytes.
pub fn encode_with_limit(message: &Message, max: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = vec![0u8; LENGTH_PREFIX];
    frame.push(PROTOCOL_VERSION);
    let mut frame =
        postcard::to_extend(message, frame).map_err(|e| ProtocolError::Malformed(format!("cannot encode: {e}")))?;
    let len = frame.len() - LENGTH_PREFIX;
    if len > max {
        return Err(ProtocolError::FrameTooLarge { len, max });
    }
    frame[..LENGTH_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Encodes `message` as one frame within [`MAX_FRAME_LEN`].
pub fn encode(message: &Message) -> Result<Vec<u8>, ProtocolError> {
    encode_with_limit(message, MAX_FRAME_LEN)
}

/// Decodes one frame body (version byte + postcard), as found after the length.
pub fn decode_body(body: &[u8]) -> Result<Message, ProtocolError> {
    let (&version, payload) = body.split_first().ok_or(ProtocolError::EmptyFrame)?;
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion { found: version, supported: PROTOCOL_VERSION });
    }
    let (message, rest) =
        postcard::take_from_bytes::<Message>(payload).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(message)
}

/// Incremental frame decoder: feed it bytes as they arrive, take messages out.
///
/// Holds at most one frame's bytes; after an error the stream is unusable and
/// every later call returns the same error.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
    failed: Option<ProtocolError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { buf: Vec::new(), max, failed: None }
    }

    /// How many bytes the decoder wants next: the rest of the length prefix, or
    /// the rest of the frame. Callers reading from a stream read at most this many,
    /// so the buffer never holds more than one frame.
    pub fn wanted(&self) -> usize {
        if self.buf.len() < LENGTH_PREFIX {
            return LENGTH_PREFIX - self.buf.len();
        }
        (self.announced() + LENGTH_PREFIX).saturating_sub(self.buf.len()).max(1)
    }

    fn announced(&self) -> usize {
        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
    }

    /// Feeds bytes; returns every message completed by them, in order. Bytes past
    /// a frame boundary are kept for the next frame.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Message>, ProtocolError> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            let take = self.wanted().min(bytes.len());
            if self.buf.len() < LENGTH_PREFIX {
                self.buf.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.buf.len() == LENGTH_PREFIX {
                    let len = self.announced();
                    let error = if len == 0 {
                        Some(ProtocolError::EmptyFrame)
                    } else if len > self.max {
                        Some(ProtocolError::FrameTooLarge { len, max: self.max })
                    } else {
                        self.buf.reserve_exact(len);
                        None
                    };
                    if let Some(e) = error {
                        self.failed = Some(e.clone());
                        return Err(e);
                    }
                }
                continue;
            }
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == self.announced() + LENGTH_PREFIX {
                let result = decode_body(&self.buf[LENGTH_PREFIX..]);
                self.buf.clear();
                match result {
                    Ok(m) => out.push(m),
                    Err(e) => {
                        self.failed = Some(e.clone());
                        return Err(e);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Call at the end of the stream: fails if a frame was left half-read.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.buf.len() {
            0 => Ok(()),
            n => Err(ProtocolError::Truncated(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello { token: "secret".into(), client: "phone".into() },
            Message::Welcome { server: "edge-1".into(), hosted: vec!["base".into(), "code".into()] },
            Message::Generate(GenerateRequest {
                expert: "code".into(),
                prompt: "Write a loop — in Rust 🦀".into(),
                sampling: SamplingOptions::greedy(),
                max_tokens: 64,
                stop: vec!["\n\n".into()],
                chat: true,
                deadline_ms: 5000,
            }),
            Message::Token { text: "é".into() },
            Message::Done(DoneStats {
                prompt_tokens: 12,
                generated_tokens: 7,
                queue_us: 3,
                first_token_us: 40_000,
                decode_tokens_per_s: 24.5,
                stop_reason: StopReason::MaxTokens,
            }),
            Message::Error { code: ErrorCode::UnknownExpert, message: "no expert 'x'".into() },
            Message::Busy { retry_after_ms: 250 },
            Message::Probe { nonce: u64::MAX },
            Message::ProbeReply(ProbeReply {
                nonce: 9,
                load: 0.5,
                queue: 2,
                hosted: vec!["base".into()],
                tokens_per_s: 20.0,
                server_time_ms: 1_700_000_000_000,
                counters: Counters { requests: 5, tokens: 100, ..Counters::default() },
            }),
        ]
    }

    #[test]
    fn round_trip_every_message_byte_by_byte_and_at_once() {
        let messages = samples();
        let stream: Vec<u8> = messages.iter().flat_map(|m| encode(m).unwrap()).collect();
        let mut whole = FrameDecoder::default();
        assert_eq!(whole.push(&stream).unwrap(), messages);
        whole.finish().unwrap();
        let mut bytewise = FrameDecoder::default();
        let mut got = Vec::new();
        for b in &stream {
            got.extend(bytewise.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, messages);
    }

    #[test]
    fn frame_layout_is_length_version_body() {
        let frame = encode(&Message::Busy { retry_after_ms: 1 }).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(frame[4], PROTOCOL_VERSION);
    }

    #[test]
    fn oversized_frame_refused_before_allocation() {
        let mut d = FrameDecoder::new(1024);
        let err = d.push(&u32::MAX.to_be_bytes()).unwrap_err();
        assert_eq!(err, ProtocolError::FrameTooLarge { len: u32::MAX as usize, max: 1024 });
        assert!(d.buf.capacity() < 64, "no buffer grew for the announced length");
        assert_eq!(d.push(b"more").unwrap_err(), err, "the decoder stays failed");
        let big = Message::Token { text: "x".repeat(2000) };
        assert!(matches!(encode_with_limit(&big, 1024), Err(ProtocolError::FrameTooLarge { .. })));
    }

    #[test]
    fn unknown_version_and_garbage_are_typed_errors() {
        let mut frame = encode(&Message::Probe { nonce: 1 }).unwrap();
        frame[4] = 7;
        assert_eq!(
            FrameDecoder::default().push(&frame).unwrap_err(),
            ProtocolError::UnsupportedVersion { found: 7, supported: PROTOCOL_VERSION }
        );
        let bad_variant = [0, 0, 0, 2, PROTOCOL_VERSION, 200];
        assert!(matches!(FrameDecoder::default().push(&bad_variant), Err(ProtocolError::Malformed(_))));
        assert_eq!(FrameDecoder::default().push(&[0, 0, 0, 0]).unwrap_err(), ProtocolError::EmptyFrame);
        let mut trailing = encode(&Message::Probe { nonce: 1 }).unwrap();
        trailing.push(0);
        trailing[3] += 1;
        assert!(matches!(FrameDecoder::default().push(&trailing), Err(ProtocolError::Malformed(_))));
        let mut half = FrameDecoder::default();
        let frame = encode(&Message::Probe { nonce: 1 }).unwrap();
        half.push(&frame[..frame.len() - 1]).unwrap();
        assert!(matches!(half.finish(), Err(ProtocolError::Truncated(_))));
    }

    /// 5,000 seeded random malformed inputs (random bytes, and valid frames with
    /// random bytes flipped, cut or appended): each yields messages or a typed
    /// error, never a panic, and no buffer beyond the limit.
    #[test]
    fn seeded_random_malformed_frames_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let valid: Vec<Vec<u8>> = samples().iter().map(|m| encode(m).unwrap()).collect();
        let mut errors = 0;
        for i in 0..5000 {
            let mut bytes = if i % 2 == 0 {
                (0..rng.random_range(0..300)).map(|_| rng.random()).collect::<Vec<u8>>()
            } else {
                let mut f = valid[rng.random_range(0..valid.len())].clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..f.len());
                    f[at] = rng.random();
                }
                f
            };
            if rng.random_bool(0.2) {
                bytes.truncate(rng.random_range(0..=bytes.len()));
            }
            let mut d = FrameDecoder::new(4096);
            let result = bytes.chunks(rng.random_range(1..64)).try_for_each(|c| d.push(c).map(|_| ()));
            if result.and_then(|_| d.finish()).is_err() {
                errors += 1;
            }
            assert!(d.buf.capacity() <= 4096 + LENGTH_PREFIX + 64);
        }
        assert!(errors > 2500, "most random inputs must be rejected, got {errors}");
    }
}
