//! Offload over an emulated wireless link: the edge server runs in its own
//! network namespace behind a veth pair; the link adds 20 ms each way and drops
//! 2 % of packets. With the kernel's netem qdisc that is `tc ... netem`; kernels
//! without netem (like this CI machine kind) get the same impairment from a
//! userspace UDP relay in front of the namespace. Needs root and iproute2; with
//! `MOE_EDGE_REQUIRE_NETNS=1` a missing capability fails the test.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use moe_edge::model::{CancelToken, SamplingOptions};
use moe_edge::offload::protocol::GenerateRequest;
use moe_edge::offload::{EdgeClient, EdgeServerConfig};
use rand::Rng;
use tokio::net::UdpSocket;

const TOKEN: &str = "netns-test-token";
const DELAY: Duration = Duration::from_millis(20);
const LOSS: f64 = 0.02;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A namespace + veth pair, deleted on drop (also when the test fails).
struct Namespace {
    name: String,
    host_veth: String,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_veth]);
    }
}

/// Creates the namespace; returns it and whether kernel netem is in force.
fn namespace(subnet: u8) -> Result<(Namespace, bool), String> {
    let id = std::process::id() % 10_000;
    let ns = Namespace { name: format!("moe5-{id}"), host_veth: format!("m5h{id}") };
    let peer = format!("m5n{id}");
    let (host_ip, ns_ip) = (format!("10.{subnet}.0.1/24"), format!("10.{subnet}.0.2/24"));
    ip(&["netns", "add", &ns.name])?;
    ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])?;
    ip(&["link", "add", &ns.host_veth, "type", "veth", "peer", "name", &peer])?;
    ip(&["link", "set", &peer, "netns", &ns.name])?;
    ip(&["addr", "add", &host_ip, "dev", &ns.host_veth])?;
    ip(&["link", "set", &ns.host_veth, "up"])?;
    ip(&["netns", "exec", &ns.name, "ip", "addr", "add", &ns_ip, "dev", &peer])?;
    ip(&["netns", "exec", &ns.name, "ip", "link", "set", &peer, "up"])?;
    let netem = |prefix: &[&str], dev: &str| {
        let mut args: Vec<&str> = prefix.to_vec();
        args.extend(["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "20ms", "loss", "2%"]);
        Command::new(args[0]).args(&args[1..]).output().map(|o| o.status.success()).unwrap_or(false)
    };
    let kernel = netem(&["env"], &ns.host_veth) && netem(&["ip", "netns", "exec", &ns.name], &peer);
    Ok((ns, kernel))
}

/// Forwards datagrams between one client and `server`, each way after [`DELAY`],
/// dropping [`LOSS`] of them.
async fn relay(server: SocketAddr) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("0.0.0.0:0").await.unwrap());
    back.connect(server).await.unwrap();
    let address = front.local_addr().unwrap();
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    let forward = |from: Arc<UdpSocket>,
                   to: Arc<UdpSocket>,
                   upstream: bool,
                   client: Arc<std::sync::Mutex<Option<SocketAddr>>>| async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, peer) = from.recv_from(&mut buf).await.unwrap();
            if upstream {
                *client.lock().unwrap() = Some(peer);
            }
            if rand::rng().random_bool(LOSS) {
                continue;
            }
            let packet = buf[..n].to_vec();
            let (to, client) = (to.clone(), client.clone());
            tokio::spawn(async move {
                tokio::time::sleep(DELAY).await;
                if upstream {
                    let _ = to.send(&packet).await;
                } else {
                    let peer = *client.lock().unwrap();
                    if let Some(c) = peer {
                        let _ = to.send_to(&packet, c).await;
                    }
                }
            });
        }
    };
    tokio::spawn(forward(front.clone(), back.clone(), true, client.clone()));
    tokio::spawn(forward(back, front, false, client));
    address
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_in(ns: &Namespace, listen: &str, model: &Path, dir: &Path) -> (Server, String, String) {
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
        .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_moe-edge"), "--threads", "2", "serve", "--config"])
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
    let (ns, kernel_netem) = match namespace(57) {
        Ok(x) => x,
        Err(e) => {
            assert!(!required, "cannot create network namespaces (root + iproute2 needed): {e}");
            eprintln!("SKIPPED: cannot create network namespaces: {e}");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("moe-edge-netns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_server, address, fingerprint) = serve_in(&ns, "10.57.0.2:0", &model, &dir);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(async {
        let target: SocketAddr = address.parse().unwrap();
        let address = if kernel_netem { target } else { relay(target).await };
        let client = EdgeClient::new(EdgeServerConfig {
            address: address.to_string(),
            cert_sha256: fingerprint,
            token: TOKEN.into(),
        })
        .unwrap();
        let probe = client.probe().await.unwrap();
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
        let report = client.generate(&request, &mut |t| text.push_str(t), &CancelToken::new(), None).await.unwrap();
        assert!(!text.is_empty() && probe.hosted == vec!["base".to_string()]);
        (report, rtt)
    });
    let (report, rtt) = report;
    eprintln!(
        "netns link ({}): probe rtt {rtt:.1} ms; time to first token {:.0} ms (server-side first token {:.0} ms); {} tokens in {:.0} ms",
        if kernel_netem { "kernel netem" } else { "userspace relay: 20 ms each way, 2 % loss" },
        report.time_to_first_token.as_secs_f64() * 1e3,
        report.stats.first_token_us as f64 / 1e3,
        report.stats.generated_tokens,
        report.elapsed.as_secs_f64() * 1e3
    );
    assert!(rtt >= 40.0, "the emulated link adds 2 × 20 ms: {rtt}");
    let _ = std::fs::remove_dir_all(&dir);
}
