//! The QUIC client of one edge server: a pinned-certificate connection kept
//! open and re-established with backoff, periodic probes (RTT, load, hosted
//! experts) and one bidirectional stream per offloaded subtask.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use quinn::{Connection, Endpoint, VarInt};

use super::protocol::{Counters, DoneStats, GenerateRequest, Message, ProbeReply};
use super::{CODE_CANCELLED, CODE_UNAUTHORIZED, EdgeServerConfig, FrameDecoder, OffloadError};
use super::{read_message, tls, write_message};
use crate::model::CancelToken;

/// Server name presented in the TLS handshake (the pin, not the name, is checked).
const SERVER_NAME: &str = "moe-edge";
/// How often a running request looks at its cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(5);
/// First and largest wait between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// What the client last learned about its server (feeds the policy's observation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkState {
    /// Whether a live, authenticated connection exists.
    pub connected: bool,
    /// Round trip of the last probe, milliseconds.
    pub rtt_ms: f32,
    /// Goodput estimate from the QUIC congestion window over the path RTT, Mbit/s.
    pub goodput_mbps: f32,
    /// Busy fraction of the server's generation slots.
    pub load: f32,
    /// Requests waiting on the server.
    pub queue: u32,
    /// Expert ids the server hosts.
    pub hosted: Vec<String>,
    /// The server's recent decode speed per generation.
    pub tokens_per_s: f32,
    /// The server's counters at the last probe.
    pub counters: Counters,
    /// Server clock minus ours at the last probe, milliseconds (informational).
    pub clock_offset_ms: i64,
    /// The last connection or probe error, if the link is down.
    pub last_error: Option<String>,
}

/// The outcome of one remote generation.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteReport {
    /// The server's figures.
    pub stats: DoneStats,
    /// From sending the request to the first text piece.
    pub time_to_first_token: Duration,
    /// From sending the request to `Done`.
    pub elapsed: Duration,
    /// Frame bytes sent on the stream.
    pub bytes_sent: u64,
    /// Frame bytes received on the stream.
    pub bytes_received: u64,
}

/// A client of one edge server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct EdgeClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: EdgeServerConfig,
    addr: SocketAddr,
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    connection: tokio::sync::Mutex<Option<Connection>>,
    state: Mutex<LinkState>,
}

impl EdgeClient {
    /// A client for `config` with the default idle timeout (10 s, keep-alive every 2 s).
    /// Does not connect yet. Must be called inside a tokio runtime.
    pub fn new(config: EdgeServerConfig) -> Result<Self, OffloadError> {
        Self::with_idle_timeout(config, Duration::from_secs(10))
    }

    /// Like [`EdgeClient::new`] with a chosen idle timeout: a silent server is
    /// declared lost after this long (keep-alives go out at a fifth of it).
    pub fn with_idle_timeout(config: EdgeServerConfig, idle: Duration) -> Result<Self, OffloadError> {
        let addr = config
            .address
            .to_socket_addrs()
            .map_err(|e| OffloadError::Config(format!("address {:?}: {e}", config.address)))?
            .next()
            .ok_or_else(|| OffloadError::Config(format!("address {:?} resolves to nothing", config.address)))?;
        let pin = tls::parse_fingerprint(&config.cert_sha256)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls::client_crypto(pin)?)
            .map_err(|e| OffloadError::Config(format!("quic tls: {e}")))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(idle.try_into().map_err(|e| OffloadError::Config(format!("idle timeout: {e}")))?))
            .keep_alive_interval(Some(idle / 5))
            .max_concurrent_uni_streams(VarInt::from_u32(0));
        client_config.transport_config(Arc::new(transport));
        let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid literal");
        let endpoint = Endpoint::client(bind)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                addr,
                endpoint,
                client_config,
                connection: tokio::sync::Mutex::new(None),
                state: Mutex::new(LinkState::default()),
            }),
        })
    }

    /// The server's `host:port`.
    pub fn address(&self) -> &str {
        &self.inner.config.address
    }

    /// A snapshot of what the client knows about the link and the server.
    pub fn state(&self) -> LinkState {
        self.inner.state.lock().expect("state lock").clone()
    }

    fn lost(&self, detail: impl ToString) -> OffloadError {
        OffloadError::Connection { address: self.inner.config.address.clone(), detail: detail.to_string() }
    }

    fn set_down(&self, error: &OffloadError) {
        let mut state = self.inner.state.lock().expect("state lock");
        state.connected = false;
        state.last_error = Some(error.to_string());
    }

    /// The live connection, connecting and authenticating first if there is none.
    pub async fn connection(&self) -> Result<Connection, OffloadError> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        *slot = None;
        let result = self.connect().await;
        match &result {
            Ok(c) => {
                *slot = Some(c.clone());
                let mut state = self.inner.state.lock().expect("state lock");
                state.connected = true;
                state.last_error = None;
            }
            Err(e) => self.set_down(e),
        }
        result
    }

    async fn connect(&self) -> Result<Connection, OffloadError> {
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.client_config.clone(), self.inner.addr, SERVER_NAME)
            .map_err(|e| self.lost(e))?;
        let connection = connecting.await.map_err(|e| self.lost(e))?;
        let auth = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| self.lost(e))?;
            let hello = Message::Hello { token: self.inner.config.token.clone(), client: "moe-edge".into() };
            write_message(&mut send, &hello).await?;
            send.finish().map_err(|e| OffloadError::Stream(e.to_string()))?;
            read_message(&mut recv, &mut FrameDecoder::default(), &mut 0).await
        };
        match auth.await {
            Ok(Some(Message::Welcome { hosted, .. })) => {
                self.inner.state.lock().expect("state lock").hosted = hosted;
                Ok(connection)
            }
            Ok(Some(Message::Error { code: super::ErrorCode::Unauthorized, .. })) => Err(OffloadError::Unauthorized),
            Ok(Some(other)) => Err(OffloadError::Protocol(super::ProtocolError::Unexpected(other.kind()))),
            Ok(None) => Err(self.lost("server closed the handshake stream")),
            Err(e) => match connection.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(c))
                    if c.error_code == VarInt::from(CODE_UNAUTHORIZED) =>
                {
                    Err(OffloadError::Unauthorized)
                }
                _ => Err(e),
            },
        }
    }

    /// Asks the server for its load, hosted experts and counters; updates
    /// [`EdgeClient::state`] with them and the measured round trip.
    pub async fn probe(&self) -> Result<ProbeReply, OffloadError> {
        let result = self.probe_once().await;
        if let Err(e) = &result {
            self.set_down(e);
        }
        result
    }

    async fn probe_once(&self) -> Result<ProbeReply, OffloadError> {
        let connection = self.connection().await?;
        let start = Instant::now();
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| self.lost(e))?;
        let nonce = rand::random();
        write_message(&mut send, &Message::Probe { nonce }).await?;
        send.finish().map_err(|e| OffloadError::Stream(e.to_string()))?;
        let reply = match read_message(&mut recv, &mut FrameDecoder::default(), &mut 0).await? {
            Some(Message::ProbeReply(r)) if r.nonce == nonce => r,
            Some(Message::Error { code, message }) => return Err(OffloadError::Remote { code, message }),
            Some(other) => return Err(OffloadError::Protocol(super::ProtocolError::Unexpected(other.kind()))),
            None => return Err(OffloadError::Stream("probe stream ended without a reply".into())),
        };
        let rtt = start.elapsed();
        let path = connection.stats().path;
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        let mut state = self.inner.state.lock().expect("state lock");
        state.connected = true;
        state.last_error = None;
        state.rtt_ms = rtt.as_secs_f32() * 1e3;
        state.goodput_mbps = (path.cwnd as f64 * 8.0 / path.rtt.as_secs_f64().max(1e-4) / 1e6) as f32;
        state.load = reply.load;
        state.queue = reply.queue;
        state.hosted = reply.hosted.clone();
        state.tokens_per_s = reply.tokens_per_s;
        state.counters = reply.counters.clone();
        state.clock_offset_ms = reply.server_time_ms as i64 - now_ms - (state.rtt_ms / 2.0) as i64;
        Ok(reply)
    }

    /// Keeps the link up in the background: probes every `interval`, and after a
    /// failure retries with exponential backoff (0.2 s doubling up to 10 s).
    pub fn spawn_monitor(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let client = self.clone();
        tokio::spawn(async move {
            let mut backoff = BACKOFF.0;
            loop {
                match client.probe().await {
                    Ok(_) => {
                        backoff = BACKOFF.0;
                        tokio::time::sleep(interval).await;
                    }
                    Err(e) => {
                        tracing::debug!(server = client.address(), "probe failed: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF.1);
                    }
                }
            }
        })
    }

    /// Runs one subtask on the server, calling `on_text` with each piece as it
    /// arrives. Cancelling through `cancel` or passing `deadline` resets the
    /// stream, which makes the server stop that generation.
    pub async fn generate(
        &self,
        request: &GenerateRequest,
        on_text: &mut (dyn FnMut(&str) + Send),
        cancel: &CancelToken,
        deadline: Option<Duration>,
    ) -> Result<RemoteReport, OffloadError> {
        let start = Instant::now();
        let connection = self.connection().await?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| self.lost(e))?;
        let bytes_sent = write_message(&mut send, &Message::Generate(request.clone())).await?;
        let mut bytes_received = 0;
        let mut decoder = FrameDecoder::default();
        let mut first_token = None;
        let mut poll = tokio::time::interval(CANCEL_POLL);
        let expiry = tokio::time::sleep(deadline.unwrap_or(Duration::MAX / 4));
        tokio::pin!(expiry);
        let abort = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream| {
            let _ = send.reset(VarInt::from(CODE_CANCELLED));
            let _ = recv.stop(VarInt::from(CODE_CANCELLED));
        };
        loop {
            tokio::select! {
                message = read_message(&mut recv, &mut decoder, &mut bytes_received) => match message {
                    Ok(Some(Message::Token { text })) => {
                        first_token.get_or_insert_with(|| start.elapsed());
                        on_text(&text);
                    }
                    Ok(Some(Message::Done(stats))) => {
                        let _ = send.finish();
                        let elapsed = start.elapsed();
                        return Ok(RemoteReport {
                            stats,
                            time_to_first_token: first_token.unwrap_or(elapsed),
                            elapsed,
                            bytes_sent,
                            bytes_received,
                        });
                    }
                    Ok(Some(Message::Error { code, message })) => return Err(OffloadError::Remote { code, message }),
                    Ok(Some(Message::Busy { retry_after_ms })) => return Err(OffloadError::Busy { retry_after_ms }),
                    Ok(Some(other)) => {
                        abort(&mut send, &mut recv);
                        return Err(OffloadError::Protocol(super::ProtocolError::Unexpected(other.kind())));
                    }
                    Ok(None) => return Err(OffloadError::Stream("the server ended the stream before Done".into())),
                    Err(e) => {
                        abort(&mut send, &mut recv);
                        return Err(match connection.close_reason() {
                            Some(reason) => self.lost(reason),
                            None => e,
                        });
                    }
                },
                _ = poll.tick() => if cancel.is_cancelled() {
                    abort(&mut send, &mut recv);
                    return Err(OffloadError::Cancelled);
                },
                _ = &mut expiry => {
                    abort(&mut send, &mut recv);
                    return Err(OffloadError::Timeout);
                }
            }
        }
    }
}
