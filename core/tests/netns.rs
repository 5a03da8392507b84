//! Offload over an emulated wireless link: the client and the edge server run in
//! two network namespaces joined by the userspace link emulator of
//! `common/lossy_link.rs` (TUN devices; 20 ms each way, 2 % of packets dropped
//! in both directions). It needs no `netem` qdisc, which this CI machine kind's
//! kernel lacks. Needs root, iproute2 and `/dev/net/tun`; with
//! `MOE_EDGE_REQUIRE_NETNS=1` (CI) a missing capability fails the test.

mod common;
#[path = "common/lossy_link.rs"]
mod lossy_link;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lossy_link::LossyLink;
use moe_edge::model::{CancelToken, SamplingOptions};
use moe_edge::offload::protocol::GenerateRequest;
use moe_edge::offload::{EdgeClient, EdgeServerConfig};

const TOKEN: &str = "netns-test-token";
const DELAY: Duration = Duration::from_millis(20);
const LOSS: f64 = 0.02;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `moe-edge serve` inside `namespace`; returns it, its address and fingerprint.
fn serve_in(namespace: &str, listen: &str, model: &Path, dir: &Path) -> (Server, String, String) {
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\nlisten = \"{listen}\"\ntokens = [\"{TOKEN}\"]\n[[experts]]\nid = \"base\"\npath = {:?}\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", namespace, env!("CARGO_BIN_EXE_moe-edge"), "--threads", "2", "serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut field = |prefix: &str| lines.next().unwrap().unwrap().strip_prefix(prefix).unwrap().to_owned();
    let address = field("listening on ");
    let fingerprint = field("certificate sha256 ");
    field("hosting ");
    (Server(child), address, fingerprint)
}

#[test]
fn generation_completes_over_a_lossy_delayed_link_between_namespaces() {
    let Some(model) = common::base_model() else { return };
    let required = std::env::var("MOE_EDGE_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    let tag = format!("m5t{}", std::process::id() % 10_000);
    let link = match LossyLink::new(&tag, 57, DELAY, LOSS, 7) {
        Ok(link) => link,
        Err(e) => {
            assert!(!required, "cannot set up the emulated link (root, iproute2 and /dev/net/tun needed): {e}");
            eprintln!("SKIPPED: cannot set up the emulated link: {e}");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("moe-edge-netns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let listen = format!("{}:0", link.address(1));
    let (_server, address, fingerprint) = serve_in(link.namespace(1), &listen, &model, &dir);
    let (report, rtt, text) = link
        .spawn_in(0, move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let client =
                    EdgeClient::new(EdgeServerConfig { address, cert_sha256: fingerprint, token: TOKEN.into() })
                        .unwrap();
                let probe = client.probe().await.unwrap();
                assert_eq!(probe.hosted, vec!["base".to_string()]);
                let rtt = client.state().rtt_ms;
                let request = GenerateRequest {
                    expert: "base".into(),
                    prompt: "Name three rivers.".into(),
                    sampling: SamplingOptions::greedy(),
                    max_tokens: 12,
                    stop: Vec::new(),
                    chat: true,
                    deadline_ms: 0,
                };
                let mut text = String::new();
                let report =
                    client.generate(&request, &mut |t| text.push_str(t), &CancelToken::new(), None).await.unwrap();
                (report, rtt, text)
            })
        })
        .join()
        .expect("the client thread")
        .expect("the client enters its namespace");
    let [(up, up_dropped), (down, down_dropped)] = link.stats();
    eprintln!(
        "netns link (userspace TUN emulator, 20 ms each way, 2 % loss): probe rtt {rtt:.1} ms; time to first token {:.0} ms \
         (server-side first token {:.0} ms); {} tokens in {:.0} ms; packets client→server {up} (+{up_dropped} dropped), \
         server→client {down} (+{down_dropped} dropped)",
        report.time_to_first_token.as_secs_f64() * 1e3,
        report.stats.first_token_us as f64 / 1e3,
        report.stats.generated_tokens,
        report.elapsed.as_secs_f64() * 1e3
    );
    assert!(!text.is_empty() && report.stats.generated_tokens > 0);
    assert!(rtt >= 40.0, "the emulated link adds 2 × 20 ms: {rtt}");
    assert!(up > 0 && down > 0, "the traffic went through the emulated link");
    let _ = std::fs::remove_dir_all(&dir);
}
