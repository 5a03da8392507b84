//! Edge offload: the sans-IO wire protocol ([`protocol`]), TLS with certificate
//! pinning ([`tls`]) and the QUIC client that runs subtasks on edge servers
//! ([`client`]).

pub mod client;
pub mod protocol;
pub mod tls;

use serde::{Deserialize, Serialize};

pub use client::{EdgeClient, LinkState, RemoteReport};
pub use protocol::{ErrorCode, FrameDecoder, Message, ProtocolError};

/// QUIC application error code: the client cancelled a stream.
pub const CODE_CANCELLED: u32 = 1;
/// QUIC application error code: authentication failed (connection close).
pub const CODE_UNAUTHORIZED: u32 = 2;
/// QUIC application error code: the server is shutting down (connection close).
pub const CODE_SHUTDOWN: u32 = 3;

/// How the phone reaches one edge server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeServerConfig {
    /// `host:port` of the server's QUIC endpoint.
    pub address: String,
    /// SHA-256 fingerprint (hex) of the server's certificate, printed by `moe-edge serve`.
    pub cert_sha256: String,
    /// Bearer token the server accepts.
    pub token: String,
}

/// Everything that can go wrong talking to an edge server.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// A configuration value is invalid (address, pin, TLS setup).
    #[error("invalid offload configuration: {0}")]
    Config(String),
    /// The QUIC connection could not be set up or was lost.
    #[error("connection to {address} failed: {detail}")]
    Connection {
        /// The server.
        address: String,
        /// What happened.
        detail: String,
    },
    /// The server refused our bearer token.
    #[error("the server refused the token")]
    Unauthorized,
    /// The peer sent bytes that break the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server answered with an error.
    #[error("server error {code:?}: {message}")]
    Remote {
        /// The error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server is at capacity.
    #[error("server busy, retry after {retry_after_ms} ms")]
    Busy {
        /// Suggested wait.
        retry_after_ms: u32,
    },
    /// Reading or writing a stream failed.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The deadline passed.
    #[error("deadline exceeded")]
    Timeout,
    /// The caller cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A socket could not be opened.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the next message from a QUIC stream, at most one frame's bytes at a
/// time; `Ok(None)` when the stream ends cleanly between frames. Cancel-safe:
/// its only await point is quinn's cancel-safe `read`.
pub async fn read_message(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
    bytes_read: &mut u64,
) -> Result<Option<Message>, OffloadError> {
    let mut buf = [0u8; 4096];
    loop {
        let want = decoder.wanted().min(buf.len());
        match recv.read(&mut buf[..want]).await {
            Ok(Some(n)) => {
                *bytes_read += n as u64;
                if let Some(m) = decoder.push(&buf[..n])?.into_iter().next() {
                    return Ok(Some(m));
                }
            }
            Ok(None) => {
                decoder.finish()?;
                return Ok(None);
            }
            Err(e) => return Err(OffloadError::Stream(e.to_string())),
        }
    }
}

/// Encodes and writes one message; returns the bytes written.
pub async fn write_message(send: &mut quinn::SendStream, message: &Message) -> Result<u64, OffloadError> {
    let frame = protocol::encode(message)?;
    send.write_all(&frame).await.map_err(|e| OffloadError::Stream(e.to_string()))?;
    Ok(frame.len() as u64)
}
