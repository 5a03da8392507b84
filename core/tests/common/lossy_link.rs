//! An emulated wireless link between two network namespaces, in userspace.
//!
//! Each namespace gets a TUN device; one forwarder per direction reads IP
//! packets from one device, drops a fraction of them, holds the rest for a fixed
//! delay and writes them to the other device. Because it works on IP packets it
//! impairs TCP and UDP alike, and it needs no `netem` qdisc (which some kernels,
//! like this CI machine kind's, lack). Needs root, iproute2 and `/dev/net/tun`.
//!
//! Shared by `tests/netns.rs` and `benches/quic_vs_tcp.rs` (included with `#[path]`).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long a forwarder waits for a packet before it looks at the stop flag.
const POLL_MS: i32 = 50;

/// Packets seen by one direction of the link.
#[derive(Debug, Default)]
pub struct DirectionStats {
    /// Packets written to the far side.
    pub forwarded: AtomicU64,
    /// Packets dropped on purpose.
    pub dropped: AtomicU64,
}

/// What the forwarders share with the link: the stop flag and their counters.
#[derive(Debug, Default)]
struct Control {
    stop: AtomicBool,
    stats: [DirectionStats; 2],
}

/// Two namespaces joined by the emulated link; everything is removed on drop.
pub struct LossyLink {
    namespaces: [String; 2],
    addresses: [Ipv4Addr; 2],
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Moves the calling thread into the named network namespace.
fn enter_namespace(name: &str) -> Result<(), String> {
    let file = File::open(format!("/run/netns/{name}")).map_err(|e| format!("opening namespace {name}: {e}"))?;
    // SAFETY: a valid namespace fd; setns only changes this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {name}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates the TUN device `name` in the calling thread's namespace; packets
/// carry no extra header (`IFF_NO_PI`).
fn open_tun(name: &str) -> Result<OwnedFd, String> {
    // SAFETY: plain open(2) of a NUL-terminated path; the fd is owned below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("/dev/net/tun: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(format!("interface name {name:?} is too long"));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut request as *mut libc::ifreq) } != 0 {
        return Err(format!("TUNSETIFF {name}: {}", std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Reads packets from `from` until `stop`, dropping a `loss` fraction and
/// handing the rest, stamped with their due time, to `to`'s writer.
fn forward(
    from: Arc<OwnedFd>,
    to: Arc<OwnedFd>,
    delay: Duration,
    loss: f64,
    seed: u64,
    control: Arc<Control>,
    direction: usize,
) -> [JoinHandle<()>; 2] {
    let (queue, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_control = control.clone();
    let reader = std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut buf = vec![0u8; 65536];
        while !reader_control.stop.load(Ordering::Relaxed) {
            let mut poll = libc::pollfd { fd: from.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the duration of the call.
            if unsafe { libc::poll(&mut poll, 1, POLL_MS) } <= 0 {
                continue;
            }
            // SAFETY: reads at most buf.len() bytes into buf.
            let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                continue;
            }
            if rng.random_bool(loss) {
                reader_control.stats[direction].dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if queue.send((Instant::now() + delay, buf[..n as usize].to_vec())).is_err() {
                return;
            }
        }
    });
    // The delay is the same for every packet, so the queue is already in due order.
    let writer = std::thread::spawn(move || {
        for (at, packet) in due {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            // SAFETY: writes packet.len() bytes from packet; a failed write is a lost packet.
            let n = unsafe { libc::write(to.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
            if n > 0 {
                control.stats[direction].forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    [reader, writer]
}

impl LossyLink {
    /// Creates namespaces `<tag>a` and `<tag>b` (addresses `10.<subnet>.0.1` and
    /// `.2`) joined by a link that delays every packet by `delay` each way and
    /// drops a `loss` fraction of them (seeded, per direction). `tag` must be
    /// short (interface names have at most 15 bytes).
    pub fn new(tag: &str, subnet: u8, delay: Duration, loss: f64, seed: u64) -> Result<Self, String> {
        let addresses = [Ipv4Addr::new(10, subnet, 0, 1), Ipv4Addr::new(10, subnet, 0, 2)];
        let namespaces = [format!("{tag}a"), format!("{tag}b")];
        let mut link = Self { namespaces: namespaces.clone(), addresses, control: Arc::default(), threads: Vec::new() };
        let mut devices = Vec::new();
        for (side, ns) in namespaces.iter().enumerate() {
            // A leftover from an aborted run would make `netns add` fail.
            let _ = ip(&["netns", "del", ns]);
            ip(&["netns", "add", ns])?;
            let (ns_owned, device) = (ns.clone(), ns.clone());
            let fd = std::thread::spawn(move || {
                enter_namespace(&ns_owned)?;
                open_tun(&device)
            })
            .join()
            .map_err(|_| "the TUN set-up thread panicked".to_string())??;
            devices.push(Arc::new(fd));
            let address = format!("{}/24", addresses[side]);
            ip(&["-n", ns, "addr", "add", &address, "dev", ns])?;
            ip(&["-n", ns, "link", "set", ns, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for direction in 0..2 {
            let (from, to) = (devices[direction].clone(), devices[1 - direction].clone());
            let seed = seed.wrapping_mul(2).wrapping_add(direction as u64);
            link.threads.extend(forward(from, to, delay, loss, seed, link.control.clone(), direction));
        }
        Ok(link)
    }

    /// The address of side 0 (`a`) or 1 (`b`).
    pub fn address(&self, side: usize) -> Ipv4Addr {
        self.addresses[side]
    }

    /// The name of side `side`'s namespace (for `ip netns exec`).
    pub fn namespace(&self, side: usize) -> &str {
        &self.namespaces[side]
    }

    /// Runs `f` on a new thread inside side `side`'s namespace: every socket it
    /// (or a thread it starts, such as a tokio runtime's) opens lives there.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        side: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<Result<T, String>> {
        let ns = self.namespaces[side].clone();
        std::thread::spawn(move || {
            enter_namespace(&ns)?;
            Ok(f())
        })
    }

    /// Packets forwarded and dropped so far, per direction (a→b, b→a).
    pub fn stats(&self) -> [(u64, u64); 2] {
        let get = |d: &DirectionStats| (d.forwarded.load(Ordering::Relaxed), d.dropped.load(Ordering::Relaxed));
        [get(&self.control.stats[0]), get(&self.control.stats[1])]
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // The TUN devices vanished with their fds; the namespaces go now.
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
