//! The edge server: hosts experts and runs subtasks for phones over QUIC.
//!
//! One connection per phone, authenticated on its first stream (`Hello` with a
//! bearer token, compared in constant time); then one bidirectional stream per
//! request. A stream reset cancels that generation before its next token.
//! Admission control bounds the running generations and the waiting queue
//! (beyond it: `Busy{retry_after_ms}`); idle timeouts and per-connection stream
//! limits bound what one client can hold. [`EdgeServer::drain`] (SIGTERM in
//! `moe-edge serve`) refuses new work, lets running generations finish, then
//! closes.

mod config;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use quinn::{Endpoint, VarInt};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

pub use config::{EdgeConfig, ExpertEntry, Identity, ServerSettings};

use crate::engine::BASE_EXPERT;
use crate::model::lora::is_adapter_dir;
use crate::model::{CancelToken, GenerateOptions, LocalModel, ModelError, StopReason};
use crate::offload::protocol::{Counters, DoneStats, ErrorCode, GenerateRequest, Message, ProbeReply};
use crate::offload::{CODE_SHUTDOWN, CODE_UNAUTHORIZED, FrameDecoder, OffloadError, ProtocolError};
use crate::offload::{protocol, read_message, tls, write_message};

/// A new connection must authenticate within this time.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// A new stream must carry its request within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything that can stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `edge.toml` or the TLS identity is unusable.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// An expert failed to load.
    #[error("loading expert {id}: {source}")]
    Model {
        /// The expert id.
        id: String,
        /// Why it failed.
        source: ModelError,
    },
    /// The UDP socket could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Default)]
struct AtomicCounters {
    requests: AtomicU64,
    tokens: AtomicU64,
    cancels: AtomicU64,
    busy: AtomicU64,
    errors: AtomicU64,
    completed: AtomicU64,
    auth_failures: AtomicU64,
    protocol_errors: AtomicU64,
    active: AtomicU32,
    queued: AtomicU32,
    last_cancel_latency_us: AtomicU64,
}

struct Shared {
    settings: ServerSettings,
    experts: HashMap<String, Arc<LocalModel>>,
    hosted: Vec<String>,
    token_digests: Vec<[u8; 32]>,
    slots: Arc<Semaphore>,
    counters: AtomicCounters,
    draining: AtomicBool,
    recent_tokens_per_s: Mutex<f32>,
}

impl Shared {
    fn counters(&self) -> Counters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            requests: get(&c.requests),
            tokens: get(&c.tokens),
            cancels: get(&c.cancels),
            busy: get(&c.busy),
            errors: get(&c.errors),
            completed: get(&c.completed),
            auth_failures: get(&c.auth_failures),
            protocol_errors: get(&c.protocol_errors),
            active: c.active.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed),
            last_cancel_latency_us: get(&c.last_cancel_latency_us),
        }
    }

    /// Constant-time: compares SHA-256 digests against every configured token.
    fn token_ok(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut ok = subtle::Choice::from(0);
        for known in &self.token_digests {
            ok |= digest.ct_eq(known);
        }
        bool::from(ok) && !token.is_empty()
    }

    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running edge server.
pub struct EdgeServer {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    fingerprint: String,
}

impl EdgeServer {
    /// Starts serving `experts` (id → loaded model) with `identity`. Must be
    /// called inside a tokio runtime; returns once the socket listens.
    pub fn start(
        settings: ServerSettings,
        experts: Vec<(String, Arc<LocalModel>)>,
        identity: Identity,
    ) -> Result<Self, ServerError> {
        let fingerprint = identity.fingerprint();
        let mut crypto = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ServerError::Config(format!("tls: {e}")))?
            .with_no_client_auth()
            .with_single_cert(vec![identity.cert], identity.key)
            .map_err(|e| ServerError::Config(format!("certificate: {e}")))?;
        crypto.alpn_protocols = vec![protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| ServerError::Config(format!("quic tls: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        let idle = Duration::from_millis(settings.idle_timeout_ms)
            .try_into()
            .map_err(|e| ServerError::Config(format!("idle_timeout_ms: {e}")))?;
        transport
            .max_idle_timeout(Some(idle))
            .max_concurrent_bidi_streams(VarInt::from_u32(settings.max_streams_per_connection))
            .max_concurrent_uni_streams(VarInt::from_u32(0));
        server_config.transport_config(Arc::new(transport));
        let addr: SocketAddr = settings
            .listen
            .parse()
            .map_err(|e| ServerError::Config(format!("listen address {:?}: {e}", settings.listen)))?;
        let endpoint = Endpoint::server(server_config, addr)?;
        let mut hosted: Vec<String> = experts.iter().map(|(id, _)| id.clone()).collect();
        hosted.sort();
        let shared = Arc::new(Shared {
            token_digests: settings.tokens.iter().map(|t| Sha256::digest(t.as_bytes()).into()).collect(),
            slots: Arc::new(Semaphore::new(settings.max_concurrent)),
            settings,
            experts: experts.into_iter().collect(),
            hosted,
            counters: AtomicCounters::default(),
            draining: AtomicBool::new(false),
            recent_tokens_per_s: Mutex::new(0.0),
        });
        let accept = endpoint.clone();
        let accept_shared = shared.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                tokio::spawn(handle_connection(accept_shared.clone(), incoming));
            }
        });
        tracing::info!(%addr, fingerprint, "edge server listening");
        Ok(Self { endpoint, shared, fingerprint })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// SHA-256 fingerprint (hex) of the server certificate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A snapshot of the counters (the same a probe returns).
    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }

    /// Graceful shutdown: refuse new connections and requests, wait (up to the
    /// drain timeout) for running and queued generations, then close.
    pub async fn drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.endpoint.set_server_config(None);
        let limit = Instant::now() + Duration::from_millis(self.shared.settings.drain_timeout_ms);
        while Instant::now() < limit {
            let c = self.shared.counters();
            if c.active == 0 && c.queued == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.endpoint.close(VarInt::from(CODE_SHUTDOWN), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

async fn handle_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("handshake failed: {e}");
            return;
        }
    };
    let peer = connection.remote_address();
    let auth = tokio::time::timeout(AUTH_TIMEOUT, async {
        let (send, mut recv) = connection.accept_bi().await.ok()?;
        let hello = read_message(&mut recv, &mut FrameDecoder::new(protocol::MAX_FRAME_LEN), &mut 0).await;
        Some((hello, send))
    })
    .await;
    let Ok(Some((hello, mut send))) = auth else {
        shared.bump(&shared.counters.auth_failures);
        connection.close(VarInt::from(CODE_UNAUTHORIZED), b"no hello");
        return;
    };
    let authorized = match hello {
        Ok(Some(Message::Hello { token, client })) => {
            tracing::debug!(%peer, client, "hello");
            shared.token_ok(&token)
        }
        Err(OffloadError::Protocol(e)) => {
            shared.bump(&shared.counters.protocol_errors);
            tracing::debug!(%peer, "malformed hello: {e}");
            false
        }
        _ => false,
    };
    if !authorized || shared.draining.load(Ordering::SeqCst) {
        let code = if authorized { ErrorCode::ShuttingDown } else { ErrorCode::Unauthorized };
        if !authorized {
            shared.bump(&shared.counters.auth_failures);
        }
        let _ = write_message(&mut send, &Message::Error { code, message: "refused".into() }).await;
        let _ = send.finish();
        // Give the refusal a moment to leave before closing the connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let close = if authorized { CODE_SHUTDOWN } else { CODE_UNAUTHORIZED };
        connection.close(VarInt::from(close), b"refused");
        return;
    }
    let welcome = Message::Welcome { server: shared.settings.name.clone(), hosted: shared.hosted.clone() };
    if write_message(&mut send, &welcome).await.is_err() || send.finish().is_err() {
        return;
    }
    while let Ok((send, recv)) = connection.accept_bi().await {
        tokio::spawn(handle_stream(shared.clone(), send, recv));
    }
}

async fn reply(send: &mut quinn::SendStream, message: &Message) {
    if write_message(send, message).await.is_ok() {
        let _ = send.finish();
    }
}

async fn reply_error(shared: &Shared, send: &mut quinn::SendStream, code: ErrorCode, message: String) {
    shared.bump(&shared.counters.errors);
    reply(send, &Message::Error { code, message }).await;
}

async fn handle_stream(shared: Arc<Shared>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut decoder = FrameDecoder::new(protocol::MAX_FRAME_LEN);
    let request = tokio::time::timeout(REQUEST_TIMEOUT, read_message(&mut recv, &mut decoder, &mut 0)).await;
    match request {
        Ok(Ok(Some(Message::Probe { nonce }))) => {
            let counters = shared.counters();
            let server_time_ms =
                SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            let probe = ProbeReply {
                nonce,
                load: counters.active as f32 / shared.settings.max_concurrent as f32,
                queue: counters.queued,
                hosted: shared.hosted.clone(),
                tokens_per_s: *shared.recent_tokens_per_s.lock().expect("tps lock"),
                server_time_ms,
                counters,
            };
            reply(&mut send, &Message::ProbeReply(probe)).await;
        }
        Ok(Ok(Some(Message::Generate(request)))) => generate(shared, request, send, recv).await,
        Ok(Ok(Some(other))) => {
            shared.bump(&shared.counters.protocol_errors);
            let e = ProtocolError::Unexpected(other.kind());
            reply_error(&shared, &mut send, ErrorCode::Protocol, e.to_string()).await;
        }
        Ok(Err(OffloadError::Protocol(e))) => {
            shared.bump(&shared.counters.protocol_errors);
            reply_error(&shared, &mut send, ErrorCode::Protocol, e.to_string()).await;
        }
        Ok(Ok(None)) | Ok(Err(_)) => {}
        Err(_) => reply_error(&shared, &mut send, ErrorCode::Protocol, "no request in time".into()).await,
    }
}

fn model_error_code(e: &ModelError) -> ErrorCode {
    match e {
        ModelError::EmptyPrompt | ModelError::PromptTooLong { .. } | ModelError::InvalidOption(_) => {
            ErrorCode::BadRequest
        }
        _ => ErrorCode::Internal,
    }
}

/// Takes a queue place unless the queue is full.
fn enqueue(shared: &Shared) -> bool {
    let max = shared.settings.max_queue as u32;
    shared.counters.queued.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| (q < max).then_some(q + 1)).is_ok()
}

async fn generate(
    shared: Arc<Shared>,
    request: GenerateRequest,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let received = Instant::now();
    shared.bump(&shared.counters.requests);
    if shared.draining.load(Ordering::SeqCst) {
        return reply_error(&shared, &mut send, ErrorCode::ShuttingDown, "the server is draining".into()).await;
    }
    let Some(model) = shared.experts.get(&request.expert).cloned() else {
        let message = format!("expert {:?} is not hosted here (hosted: {:?})", request.expert, shared.hosted);
        return reply_error(&shared, &mut send, ErrorCode::UnknownExpert, message).await;
    };
    if let Err(e) = request.sampling.validate() {
        return reply_error(&shared, &mut send, ErrorCode::BadRequest, e.to_string()).await;
    }

    // The client resets its side of the stream to cancel: watch for that.
    let (reset_tx, mut reset_rx) = tokio::sync::oneshot::channel::<Instant>();
    let watcher = tokio::spawn(async move {
        let mut buf = [0u8; 256];
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(_)) => continue,
                Ok(None) => std::future::pending::<()>().await,
                Err(_) => {
                    let _ = reset_tx.send(Instant::now());
                    return;
                }
            }
        }
    });

    // Admission: a free slot, else a bounded queue, else Busy.
    let permit = match shared.slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) if !enqueue(&shared) => {
            watcher.abort();
            shared.bump(&shared.counters.busy);
            return reply(&mut send, &Message::Busy { retry_after_ms: shared.settings.retry_after_ms }).await;
        }
        Err(_) => {
            let acquired = tokio::select! {
                p = shared.slots.clone().acquire_owned() => p.ok(),
                _ = &mut reset_rx => None,
            };
            shared.counters.queued.fetch_sub(1, Ordering::SeqCst);
            match acquired {
                Some(p) => p,
                None => {
                    watcher.abort();
                    shared.bump(&shared.counters.cancels);
                    return;
                }
            }
        }
    };
    let queue_us = received.elapsed().as_micros() as u64;
    shared.counters.active.fetch_add(1, Ordering::SeqCst);

    let cancel = CancelToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
    let options = GenerateOptions {
        sampling: request.sampling.clone(),
        max_tokens: request.max_tokens.min(shared.settings.max_tokens) as usize,
        stop: request.stop.clone(),
        chat: request.chat,
    };
    let worker_cancel = cancel.clone();
    let prompt = request.prompt.clone();
    let job = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut on_text = |piece: &str| {
            if tx.blocking_send(piece.to_owned()).is_err() {
                worker_cancel.cancel();
            }
        };
        let report = model.generate(&prompt, &options, &mut on_text, &worker_cancel);
        drop(permit);
        (report, started.elapsed())
    });

    let deadline = tokio::time::sleep(match request.deadline_ms {
        0 => Duration::MAX / 4,
        ms => Duration::from_millis(ms as u64).saturating_sub(received.elapsed()),
    });
    tokio::pin!(deadline);
    let mut reset_at: Option<Instant> = None;
    let mut deadline_hit = false;
    loop {
        tokio::select! {
            piece = rx.recv() => match piece {
                Some(text) => {
                    if reset_at.is_none() && write_message(&mut send, &Message::Token { text }).await.is_err() {
                        cancel.cancel();
                        reset_at = Some(Instant::now());
                    }
                }
                None => break,
            },
            at = &mut reset_rx, if reset_at.is_none() => {
                cancel.cancel();
                reset_at = Some(at.unwrap_or_else(|_| Instant::now()));
            }
            _ = &mut deadline, if !deadline_hit => {
                cancel.cancel();
                deadline_hit = true;
            }
        }
    }
    let outcome = job.await;
    watcher.abort();
    shared.counters.active.fetch_sub(1, Ordering::SeqCst);
    let c = &shared.counters;
    match outcome {
        Ok((Ok(report), _)) => {
            c.tokens.fetch_add(report.generated_tokens as u64, Ordering::Relaxed);
            if let Some(at) = reset_at {
                c.last_cancel_latency_us.store(at.elapsed().as_micros() as u64, Ordering::Relaxed);
                shared.bump(&c.cancels);
                tracing::debug!(tokens = report.generated_tokens, "cancelled by the client");
            } else if deadline_hit && report.stop_reason == StopReason::Cancelled {
                let message = format!("deadline of {} ms passed", request.deadline_ms);
                reply_error(&shared, &mut send, ErrorCode::DeadlineExceeded, message).await;
            } else {
                shared.bump(&c.completed);
                {
                    let mut tps = shared.recent_tokens_per_s.lock().expect("tps lock");
                    let measured = report.decode_tokens_per_s as f32;
                    *tps = if *tps == 0.0 { measured } else { 0.8 * *tps + 0.2 * measured };
                }
                let stats = DoneStats {
                    prompt_tokens: report.prompt_tokens as u32,
                    generated_tokens: report.generated_tokens as u32,
                    queue_us,
                    first_token_us: report.time_to_first_token.as_micros() as u64,
                    decode_tokens_per_s: report.decode_tokens_per_s as f32,
                    stop_reason: report.stop_reason,
                };
                reply(&mut send, &Message::Done(stats)).await;
            }
        }
        Ok((Err(e), _)) => {
            if reset_at.is_none() {
                reply_error(&shared, &mut send, model_error_code(&e), e.to_string()).await;
            }
        }
        Err(e) => {
            tracing::error!("generation task failed: {e}");
            reply_error(&shared, &mut send, ErrorCode::Internal, "generation failed".into()).await;
        }
    }
}

/// Loads every expert of `config`, reporting `(index, id)` before each load.
/// A LoRA adapter directory is applied over the expert hosted as `base`, which
/// then must be a standalone model.
pub fn load_experts(
    config: &EdgeConfig,
    on_load: &mut dyn FnMut(usize, &str),
) -> Result<Vec<(String, Arc<LocalModel>)>, ServerError> {
    let model_error = |id: &str| {
        let id = id.to_owned();
        move |source| ServerError::Model { id, source }
    };
    let mut loaded: Vec<Option<Arc<LocalModel>>> = vec![None; config.experts.len()];
    // Standalone models first, so that adapters find the base whatever the order.
    let of_kind =
        |adapter: bool| config.experts.iter().enumerate().filter(move |(_, e)| is_adapter_dir(&e.path) == adapter);
    for (i, e) in of_kind(false) {
        on_load(i, &e.id);
        loaded[i] = Some(Arc::new(LocalModel::load(&e.path).map_err(model_error(&e.id))?));
    }
    for (i, e) in of_kind(true) {
        on_load(i, &e.id);
        let base = config.experts.iter().position(|b| b.id == BASE_EXPERT).and_then(|b| loaded[b].clone()).ok_or_else(
            || {
                ServerError::Config(format!(
                    "expert {:?} is a LoRA adapter: host the base model as expert {BASE_EXPERT:?} too",
                    e.id
                ))
            },
        )?;
        loaded[i] = Some(Arc::new(base.with_adapter(&e.path).map_err(model_error(&e.id))?));
    }
    Ok(config.experts.iter().zip(loaded).map(|(e, m)| (e.id.clone(), m.expect("every expert loaded"))).collect())
}
