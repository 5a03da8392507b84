//! Edge offload over real QUIC + TLS on loopback, against the real base model:
//! streaming, pinning, tokens, malformed input, cancellation, admission.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use moe_edge::model::{CancelToken, GenerateOptions, LocalModel, SamplingOptions};
use moe_edge::offload::protocol::{self, GenerateRequest, Message};
use moe_edge::offload::{EdgeClient, EdgeServerConfig, ErrorCode, FrameDecoder, OffloadError, read_message};
use moe_edge::server::{EdgeServer, Identity, ServerSettings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOKEN: &str = "test-token-0123456789";

fn settings() -> ServerSettings {
    ServerSettings { listen: "127.0.0.1:0".into(), tokens: vec![TOKEN.into()], ..ServerSettings::default() }
}

fn start(model: &Arc<LocalModel>, settings: ServerSettings) -> EdgeServer {
    EdgeServer::start(settings, vec![("base".into(), model.clone())], Identity::ephemeral().unwrap()).unwrap()
}

fn client_config(server: &EdgeServer) -> EdgeServerConfig {
    EdgeServerConfig {
        address: server.local_addr().unwrap().to_string(),
        cert_sha256: server.fingerprint().to_owned(),
        token: TOKEN.into(),
    }
}

fn request(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        expert: "base".into(),
        prompt: prompt.into(),
        sampling: SamplingOptions::greedy(),
        max_tokens,
        stop: Vec::new(),
        chat: true,
        deadline_ms: 0,
    }
}

fn load() -> Option<Arc<LocalModel>> {
    Some(Arc::new(LocalModel::load(&common::base_model()?).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_stream_matches_local_generation_and_probe_reports_counters() {
    let Some(model) = load() else { return };
    let server = start(&model, settings());
    let client = EdgeClient::new(client_config(&server)).unwrap();
    let prompt = "Name three colours.";
    let mut remote = String::new();
    let mut pieces = 0;
    let report = client
        .generate(
            &request(prompt, 12),
            &mut |t| {
                remote.push_str(t);
                pieces += 1;
            },
            &CancelToken::new(),
            None,
        )
        .await
        .unwrap();
    let options = GenerateOptions { sampling: SamplingOptions::greedy(), max_tokens: 12, stop: vec![], chat: true };
    let mut local = String::new();
    let local_report = model.generate(prompt, &options, &mut |t| local.push_str(t), &CancelToken::new()).unwrap();
    assert_eq!(remote, local, "greedy text over QUIC equals local greedy text");
    assert!(pieces > 1, "text arrives as a stream of pieces, got {pieces}");
    assert_eq!(report.stats.generated_tokens as usize, local_report.generated_tokens);
    assert!(report.bytes_received > remote.len() as u64);
    let probe = client.probe().await.unwrap();
    assert_eq!(probe.hosted, vec!["base".to_string()]);
    assert_eq!((probe.counters.requests, probe.counters.completed), (1, 1));
    assert_eq!(probe.counters.tokens, report.stats.generated_tokens as u64);
    let state = client.state();
    assert!(state.connected && state.rtt_ms > 0.0 && state.goodput_mbps > 0.0, "{state:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_and_wrong_or_missing_token_are_refused() {
    let Some(model) = load() else { return };
    let server = start(&model, settings());
    let other = Identity::ephemeral().unwrap().fingerprint();
    let pinned_wrong = EdgeClient::new(EdgeServerConfig { cert_sha256: other, ..client_config(&server) }).unwrap();
    let err = pinned_wrong.probe().await.unwrap_err();
    assert!(matches!(err, OffloadError::Connection { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    for token in ["wrong-token", ""] {
        let client = EdgeClient::new(EdgeServerConfig { token: token.into(), ..client_config(&server) }).unwrap();
        let err = client.generate(&request("Hi", 4), &mut |_| {}, &CancelToken::new(), None).await.unwrap_err();
        assert!(matches!(err, OffloadError::Unauthorized), "token {token:?}: {err}");
    }
    assert_eq!(server.counters().auth_failures, 2);
    assert_eq!(server.counters().requests, 0, "no request reached the models");
    let good = EdgeClient::new(client_config(&server)).unwrap();
    good.probe().await.unwrap();
}

/// A frame guaranteed to be malformed: bad version, unknown variant, truncated
/// body, oversized length, empty frame, or a valid frame of a message a server
/// never accepts.
fn malformed_frame(rng: &mut StdRng) -> Vec<u8> {
    let body: Vec<u8> = (0..rng.random_range(1..200)).map(|_| rng.random()).collect();
    let framed = |version: u8, body: &[u8]| {
        let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        f.push(version);
        f.extend_from_slice(body);
        f
    };
    match rng.random_range(0..6) {
        0 => framed(rng.random_range(2..=255), &body),
        1 => {
            let mut b = body;
            b[0] = rng.random_range(9..=255); // no such message variant
            framed(protocol::PROTOCOL_VERSION, &b)
        }
        2 => {
            let f = protocol::encode(&Message::Generate(request("a prompt long enough to cut", 5))).unwrap();
            f[..rng.random_range(1..f.len())].to_vec()
        }
        3 => rng.random_range(protocol::MAX_FRAME_LEN as u32 + 1..=u32::MAX).to_be_bytes().to_vec(),
        4 => vec![0, 0, 0, 0],
        _ => protocol::encode(&Message::Token { text: "not a request".into() }).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_random_malformed_frames_get_typed_errors_while_others_are_served() {
    let Some(model) = load() else { return };
    let server = start(&model, settings());
    let attacker = EdgeClient::new(client_config(&server)).unwrap();
    let connection = attacker.connection().await.unwrap();
    let victim = EdgeClient::new(client_config(&server)).unwrap();
    let served = tokio::spawn(async move {
        let mut text = String::new();
        victim.generate(&request("Say hello.", 16), &mut |t| text.push_str(t), &CancelToken::new(), None).await?;
        Ok::<_, OffloadError>(text)
    });
    let mut rng = StdRng::seed_from_u64(5);
    let mut oversized_seen = false;
    for i in 0..1000 {
        let frame = if i == 0 { u32::MAX.to_be_bytes().to_vec() } else { malformed_frame(&mut rng) };
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&frame).await.unwrap();
        send.finish().unwrap();
        let reply = read_message(&mut recv, &mut FrameDecoder::default(), &mut 0).await.unwrap();
        match reply {
            Some(Message::Error { code: ErrorCode::Protocol, message }) => {
                oversized_seen |= message.contains("exceeds the limit");
            }
            other => panic!("frame {i} ({frame:02x?}) got {other:?}"),
        }
    }
    assert!(oversized_seen);
    let text = served.await.unwrap().expect("the other client is served");
    assert!(!text.is_empty());
    let counters = server.counters();
    assert_eq!(counters.protocol_errors, 1000);
    assert_eq!(counters.completed, 1);
    attacker.probe().await.expect("the attacker's connection itself still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_server_generation_at_once() {
    let Some(model) = load() else { return };
    let server = start(&model, settings());
    let client = EdgeClient::new(client_config(&server)).unwrap();
    let cancel = CancelToken::new();
    let received = AtomicUsize::new(0);
    let flag = cancel.clone();
    let err = client
        .generate(
            &request("Write a long story about a dragon.", 400),
            &mut |_| {
                if received.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
                    flag.cancel();
                }
            },
            &cancel,
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OffloadError::Cancelled), "{err}");
    let start = Instant::now();
    let counters = loop {
        let c = server.counters();
        if c.cancels == 1 && c.active == 0 {
            break c;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the server never stopped: {c:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let received = received.load(Ordering::SeqCst) as u64;
    eprintln!(
        "cancel: client received {received} pieces; server generated {} tokens; reset→stop {:.1} ms (server-measured)",
        counters.tokens,
        counters.last_cancel_latency_us as f64 / 1e3
    );
    assert!(counters.tokens <= received + 4, "server kept generating after the reset: {counters:?}");
    assert_eq!(counters.completed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_answers_busy_with_a_retry_hint() {
    let Some(model) = load() else { return };
    let server = start(&model, ServerSettings { max_concurrent: 1, max_queue: 0, retry_after_ms: 123, ..settings() });
    let client = EdgeClient::new(client_config(&server)).unwrap();
    let long = {
        let client = client.clone();
        tokio::spawn(async move {
            client.generate(&request("Count to fifty.", 40), &mut |_| {}, &CancelToken::new(), None).await
        })
    };
    while server.counters().active == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = client.generate(&request("Hi", 4), &mut |_| {}, &CancelToken::new(), None).await.unwrap_err();
    assert!(matches!(err, OffloadError::Busy { retry_after_ms: 123 }), "{err}");
    long.await.unwrap().unwrap();
    assert_eq!(server.counters().busy, 1);
    let unknown = GenerateRequest { expert: "nope".into(), ..request("Hi", 4) };
    let err = client.generate(&unknown, &mut |_| {}, &CancelToken::new(), None).await.unwrap_err();
    assert!(matches!(err, OffloadError::Remote { code: ErrorCode::UnknownExpert, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_resets_the_stream_and_the_server_stops() {
    let Some(model) = load() else { return };
    let server = start(&model, settings());
    let client = EdgeClient::new(client_config(&server)).unwrap();
    let err = client
        .generate(
            &request("Write a long poem.", 400),
            &mut |_| {},
            &CancelToken::new(),
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OffloadError::Timeout), "{err}");
    let server_side = GenerateRequest { deadline_ms: 300, ..request("Write a long poem.", 400) };
    let err = client.generate(&server_side, &mut |_| {}, &CancelToken::new(), None).await.unwrap_err();
    assert!(matches!(err, OffloadError::Remote { code: ErrorCode::DeadlineExceeded, .. }), "{err}");
}
