//! QUIC vs. TCP + TLS for the offload protocol over a lossy, delayed link.
//!
//! Two network namespaces are joined by the userspace link emulator of
//! `tests/common/lossy_link.rs` (TUN devices; 20 ms each way, 2 % of packets
//! dropped in both directions; it impairs TCP and UDP alike). A replay server in
//! one namespace answers `Generate` with the pieces of a recorded answer
//! (`benches/fixtures/answer-200.json`: the first 200 text pieces the base model,
//! SmolLM2-135M-Instruct Q4_1, streamed greedily for the chat prompt "Explain in
//! detail why the sky is blue, and why sunsets are red.") and `Done`, so model
//! speed does not matter. It speaks the same frames and the same
//! `Hello`/`Welcome` authentication over QUIC (quinn + rustls TLS 1.3, one stream
//! per request, as the edge server) and over TCP + TLS 1.3 (tokio-rustls, one
//! connection, requests in turn, `TCP_NODELAY`). The client in the other
//! namespace is the product's [`EdgeClient`] for QUIC and the same exchange over
//! TCP for the comparison, both pinning the certificate.
//!
//! Each run opens a fresh connection per transport and sends two requests: the
//! first ("cold") counts from before the connection is opened, so it includes
//! the handshakes; the second ("warm") counts from sending the request. The
//! answer comes back to back ("burst") or one piece every 25 ms ("paced", an edge
//! server decoding at 40 tokens/s). Reported per case: time to first frame, total
//! time and the largest gap between two pieces (median, mean, 90th percentile,
//! max over the runs), and the QUIC/TCP ratio of the medians and means.
//!
//! `cargo bench -p moe-edge --features cli --bench quic_vs_tcp` measures (20 burst
//! and 6 paced runs; `MOE_EDGE_BENCH_RUNS=B,P` overrides); `cargo test --benches`
//! does one short run of each as a smoke test. Needs root (namespaces, TUN);
//! otherwise it prints why it skips.

// Shared with tests/netns.rs, which uses all of it.
#[allow(dead_code)]
#[path = "../tests/common/lossy_link.rs"]
mod lossy_link;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lossy_link::LossyLink;
use moe_edge::model::{CancelToken, SamplingOptions, StopReason};
use moe_edge::offload::protocol::{self, DoneStats, GenerateRequest, Message};
use moe_edge::offload::{EdgeClient, EdgeServerConfig, FrameDecoder, tls};
use moe_edge::server::Identity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const TOKEN: &str = "bench-token";
const DELAY: Duration = Duration::from_millis(20);
const LOSS: f64 = 0.02;
const QUIC_PORT: u16 = 4433;
const TCP_PORT: u16 = 4434;
const PACE: Duration = Duration::from_millis(25);

/// Reads one frame's message; `None` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, decoder: &mut FrameDecoder) -> Result<Option<Message>, String> {
    let mut buf = [0u8; 4096];
    loop {
        let want = decoder.wanted().min(buf.len());
        let n = r.read(&mut buf[..want]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            decoder.finish().map_err(|e| e.to_string())?;
            return Ok(None);
        }
        if let Some(m) = decoder.push(&buf[..n]).map_err(|e| e.to_string())?.into_iter().next() {
            return Ok(Some(m));
        }
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, message: &Message) -> Result<(), String> {
    let frame = protocol::encode(message).map_err(|e| e.to_string())?;
    w.write_all(&frame).await.map_err(|e| e.to_string())?;
    w.flush().await.map_err(|e| e.to_string())
}

/// What the replay server sends: the recorded pieces, and the pause between them
/// (microseconds, changed by the bench between phases).
struct Replay {
    pieces: Vec<String>,
    pace_us: AtomicU64,
}

impl Replay {
    async fn answer<W: AsyncWrite + Unpin>(&self, w: &mut W, request: &GenerateRequest) -> Result<(), String> {
        let pace = Duration::from_micros(self.pace_us.load(Ordering::Relaxed));
        let count = (request.max_tokens as usize).min(self.pieces.len());
        for piece in &self.pieces[..count] {
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            write_frame(w, &Message::Token { text: piece.clone() }).await?;
        }
        let stats = DoneStats {
            prompt_tokens: 0,
            generated_tokens: count as u32,
            queue_us: 0,
            first_token_us: 0,
            decode_tokens_per_s: 0.0,
            stop_reason: StopReason::MaxTokens,
        };
        write_frame(w, &Message::Done(stats)).await
    }

    /// Reads `Hello` and answers `Welcome` (or fails on a wrong token).
    async fn authenticate<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        r: &mut R,
        w: &mut W,
    ) -> Result<(), String> {
        match read_frame(r, &mut FrameDecoder::default()).await? {
            Some(Message::Hello { token, .. }) if token == TOKEN => {
                let welcome = Message::Welcome { server: "replay".into(), hosted: vec!["base".into()] };
                write_frame(w, &welcome).await
            }
            other => Err(format!("expected Hello with the token, got {other:?}")),
        }
    }
}

fn server_crypto(identity: Identity) -> rustls::ServerConfig {
    let mut crypto = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert], identity.key)
        .unwrap();
    crypto.alpn_protocols = vec![protocol::ALPN.to_vec()];
    crypto
}

async fn serve_quic(replay: Arc<Replay>, crypto: rustls::ServerConfig, addr: SocketAddr) {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap();
    let endpoint = quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), addr).unwrap();
    while let Some(incoming) = endpoint.accept().await {
        let replay = replay.clone();
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else { return };
            let Ok((mut send, mut recv)) = connection.accept_bi().await else { return };
            if replay.authenticate(&mut recv, &mut send).await.is_err() || send.finish().is_err() {
                return;
            }
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                let replay = replay.clone();
                tokio::spawn(async move {
                    if let Ok(Some(Message::Generate(request))) =
                        read_frame(&mut recv, &mut FrameDecoder::default()).await
                        && replay.answer(&mut send, &request).await.is_ok()
                    {
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

async fn serve_tcp(replay: Arc<Replay>, crypto: rustls::ServerConfig, addr: SocketAddr) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(crypto));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    while let Ok((tcp, _)) = listener.accept().await {
        let (replay, acceptor) = (replay.clone(), acceptor.clone());
        tokio::spawn(async move {
            tcp.set_nodelay(true).unwrap();
            let Ok(stream) = acceptor.accept(tcp).await else { return };
            let (mut r, mut w) = tokio::io::split(stream);
            if replay.authenticate(&mut r, &mut w).await.is_err() {
                return;
            }
            let mut decoder = FrameDecoder::default();
            while let Ok(Some(Message::Generate(request))) = read_frame(&mut r, &mut decoder).await {
                if replay.answer(&mut w, &request).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One request as the client saw it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    first: Duration,
    total: Duration,
    max_gap: Duration,
}

impl Sample {
    fn new(start: Instant, pieces: &[Instant], end: Instant, expected: usize) -> Self {
        assert_eq!(pieces.len(), expected, "every recorded piece arrives");
        let max_gap = pieces.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        Self { first: pieces[0] - start, total: end - start, max_gap }
    }
}

/// Cold and warm samples of one transport in one run.
type Pair = (Sample, Sample);

async fn quic_run(config: &EdgeServerConfig, request: &GenerateRequest) -> Pair {
    let mut samples = Vec::new();
    let start = Instant::now();
    let client = EdgeClient::new(config.clone()).unwrap();
    for _ in 0..2 {
        let begin = if samples.is_empty() { start } else { Instant::now() };
        let mut pieces = Vec::new();
        client.generate(request, &mut |_| pieces.push(Instant::now()), &CancelToken::new(), None).await.unwrap();
        samples.push(Sample::new(begin, &pieces, Instant::now(), request.max_tokens as usize));
    }
    if let Ok(connection) = client.connection().await {
        connection.close(0u32.into(), b"done");
    }
    (samples[0], samples[1])
}

async fn tcp_run(addr: SocketAddr, pin: [u8; 32], request: &GenerateRequest) -> Pair {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_crypto(pin).unwrap()));
    let start = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("moe-edge").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let (mut r, mut w) = tokio::io::split(stream);
    let hello = Message::Hello { token: TOKEN.into(), client: "bench".into() };
    write_frame(&mut w, &hello).await.unwrap();
    let mut decoder = FrameDecoder::default();
    let welcome = read_frame(&mut r, &mut decoder).await.unwrap();
    assert!(matches!(welcome, Some(Message::Welcome { .. })), "{welcome:?}");
    let mut samples = Vec::new();
    for _ in 0..2 {
        let begin = if samples.is_empty() { start } else { Instant::now() };
        write_frame(&mut w, &Message::Generate(request.clone())).await.unwrap();
        let mut pieces = Vec::new();
        loop {
            match read_frame(&mut r, &mut decoder).await.unwrap() {
                Some(Message::Token { .. }) => pieces.push(Instant::now()),
                Some(Message::Done(_)) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        samples.push(Sample::new(begin, &pieces, Instant::now(), request.max_tokens as usize));
    }
    let _ = w.shutdown().await;
    (samples[0], samples[1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median, mean, 90th percentile and max of `values` (milliseconds).
fn summary(mut values: Vec<f64>) -> [f64; 4] {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    [values[n / 2], values.iter().sum::<f64>() / n as f64, values[(n * 9 / 10).min(n - 1)], values[n - 1]]
}

fn report(mode: &str, quic: &[Pair], tcp: &[Pair]) {
    println!("\n{mode}, {} runs (ms: median / mean / p90 / max):", quic.len());
    for (label, pick) in [("cold", 0usize), ("warm", 1)] {
        let sample = |pairs: &[Pair], i: usize| -> Vec<Sample> {
            pairs.iter().map(|p| if i == 0 { p.0 } else { p.1 }).collect()
        };
        let (q, t) = (sample(quic, pick), sample(tcp, pick));
        for (metric, f) in [
            ("first frame", (|s: &Sample| s.first) as fn(&Sample) -> Duration),
            ("total", |s: &Sample| s.total),
            ("largest gap", |s: &Sample| s.max_gap),
        ] {
            let qs = summary(q.iter().map(|s| ms(f(s))).collect());
            let ts = summary(t.iter().map(|s| ms(f(s))).collect());
            println!(
                "  {label} {metric:<11}  QUIC {:>7.1} / {:>7.1} / {:>7.1} / {:>7.1}   TCP+TLS {:>7.1} / {:>7.1} / {:>7.1} / {:>7.1}   QUIC/TCP median {:.2}, mean {:.2}",
                qs[0],
                qs[1],
                qs[2],
                qs[3],
                ts[0],
                ts[1],
                ts[2],
                ts[3],
                qs[0] / ts[0],
                qs[1] / ts[1]
            );
        }
    }
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED quic_vs_tcp: needs root to create network namespaces and TUN devices");
        return;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("SKIPPED quic_vs_tcp: /dev/net/tun is missing (no TUN support in this kernel or container)");
        return;
    }
    let (burst_runs, paced_runs, tokens) = if measuring {
        let runs = std::env::var("MOE_EDGE_BENCH_RUNS").unwrap_or_else(|_| "20,6".into());
        let (b, p) = runs.split_once(',').expect("MOE_EDGE_BENCH_RUNS=BURST,PACED");
        (b.parse().unwrap(), p.parse().unwrap(), 200)
    } else {
        (1, 1, 20)
    };
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/fixtures/answer-200.json");
    let pieces: Vec<String> = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    assert_eq!(pieces.len(), 200);
    let tag = format!("m5q{}", std::process::id() % 10_000);
    let link = LossyLink::new(&tag, 58, DELAY, LOSS, rand::random()).expect("the emulated link is set up (root)");
    let server_ip = link.address(1);
    let replay = Arc::new(Replay { pieces, pace_us: AtomicU64::new(0) });
    let identity = Identity::ephemeral().unwrap();
    let pin = tls::parse_fingerprint(&identity.fingerprint()).unwrap();
    let fingerprint = identity.fingerprint();
    let crypto = server_crypto(identity);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_replay = replay.clone();
    // The server thread lives until the process exits.
    let _server = link.spawn_in(1, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let quic = tokio::spawn(serve_quic(server_replay.clone(), crypto.clone(), (server_ip, QUIC_PORT).into()));
            let tcp = tokio::spawn(serve_tcp(server_replay, crypto, (server_ip, TCP_PORT).into()));
            tokio::time::sleep(Duration::from_millis(100)).await;
            ready_tx.send(()).unwrap();
            let _ = tokio::join!(quic, tcp);
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("the replay server starts");
    let config = EdgeServerConfig {
        address: SocketAddr::from((server_ip, QUIC_PORT)).to_string(),
        cert_sha256: fingerprint,
        token: TOKEN.into(),
    };
    let request = GenerateRequest {
        expert: "base".into(),
        prompt: "Explain in two sentences why the sky is blue.".into(),
        sampling: SamplingOptions::greedy(),
        max_tokens: tokens,
        stop: Vec::new(),
        chat: true,
        deadline_ms: 0,
    };
    let phases = [("burst", Duration::ZERO, burst_runs), ("paced (one piece every 25 ms)", PACE, paced_runs)];
    let results = link
        .spawn_in(0, move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut results = Vec::new();
            for (mode, pace, runs) in phases {
                replay.pace_us.store(pace.as_micros() as u64, Ordering::Relaxed);
                let (mut quic, mut tcp) = (Vec::new(), Vec::new());
                for run in 0..runs {
                    // Alternate which transport goes first.
                    runtime.block_on(async {
                        if run % 2 == 0 {
                            quic.push(quic_run(&config, &request).await);
                            tcp.push(tcp_run((server_ip, TCP_PORT).into(), pin, &request).await);
                        } else {
                            tcp.push(tcp_run((server_ip, TCP_PORT).into(), pin, &request).await);
                            quic.push(quic_run(&config, &request).await);
                        }
                    });
                    let (q, t) = (quic.last().unwrap(), tcp.last().unwrap());
                    eprintln!(
                        "{mode} run {}/{runs}: cold first frame QUIC {:.0} ms, TCP+TLS {:.0} ms; cold total QUIC {:.0} ms, TCP+TLS {:.0} ms",
                        run + 1,
                        ms(q.0.first),
                        ms(t.0.first),
                        ms(q.0.total),
                        ms(t.0.total)
                    );
                }
                results.push((mode, quic, tcp));
            }
            results
        })
        .join()
        .expect("the client thread")
        .expect("the client enters its namespace");
    println!(
        "QUIC vs TCP+TLS, offload frames ({tokens} recorded pieces per request) over a userspace link: {} ms each way, {:.0} % loss each way",
        DELAY.as_millis(),
        LOSS * 100.0
    );
    for (mode, quic, tcp) in &results {
        report(mode, quic, tcp);
    }
    let [(ab, ab_drop), (ba, ba_drop)] = link.stats();
    println!(
        "\nlink: client→server {ab} packets forwarded, {ab_drop} dropped; server→client {ba} forwarded, {ba_drop} dropped"
    );
}
