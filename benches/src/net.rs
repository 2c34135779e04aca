//! Network end to end: Linux's TCP/UDP stacks in two network namespaces talking through
//!
//! ```text
//! netns A ─ TAP ⇄ netfront ⇄ xensim (grants, events, xenstore) ⇄ netback ⇄ TAP ─ netns B
//! ```
//!
//! against a plain veth pair between two other namespaces, measured in the same run with
//! alternating repetitions (ours, veth, ours, veth, ...), so load from other processes falls
//! on both. The data path is the one of `tests/tests/net_e2e.rs` (event dispatchers, one worker
//! per queue and side, one reader per TAP), default features (4 queues, split event channels,
//! scatter-gather, checksum offload, GSO) and TAPs with checksum and TSO offload.
//!
//! * **TCP**: one stream A → B of a fixed size, our own sender and receiver (no iperf3 needed),
//!   counted bytes only (the e2e tests verify content).
//! * **64-byte packets**: UDP datagrams of 18 payload bytes (a 64-byte Ethernet frame with
//!   FCS, the size the published pps figures use) sent as fast as one thread can for a fixed
//!   time; received packets per second in B, and what was offered.
//!
//! Needs root (namespaces, TAP devices, veth); without it the suite is skipped with that
//! reason. All names carry the process id and a counter, so concurrent runs do not collide.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xen_netback::ctrl::Steering;
use xen_netback::{NetIo, Offloads};
use xen_netfront::SendError;
use xen_netif::PacketMeta;
use xen_tests::net::bus::machine;
use xen_tests::net::pair::{Options, Pair, VifIo};
use xen_tests::net::sys;
use xen_tests::net::tap::{Tap, TapOffloads};
use xen_tests::net::unique_name;

use crate::harness::Sample;
use crate::Scale;

const MAC: &str = "00:16:3e:79:00:01";
/// UDP payload of a 64-byte frame: 64 - 4 (FCS) - 14 (Ethernet) - 20 (IPv4) - 8 (UDP).
pub const UDP_PAYLOAD_64B: usize = 18;

/// The network results; `Sample`s are ns per MiB (TCP) and ns per received packet (UDP).
#[derive(Debug, Clone)]
pub struct NetResult {
    /// Queues negotiated.
    pub queues: u32,
    /// TCP through netfront/netback.
    pub tcp_ours: Sample,
    /// TCP through veth.
    pub tcp_veth: Sample,
    /// 64-byte UDP through netfront/netback (received).
    pub udp_ours: Sample,
    /// 64-byte UDP through veth (received).
    pub udp_veth: Sample,
    /// Packets offered per second by the sender (median over repetitions): ours, veth.
    pub udp_offered: (f64, f64),
    /// Frontend "ring busy" retries during the run (back-pressure).
    pub busy: u64,
    /// Negotiated features, as the backend read them.
    pub features: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip(8): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(prefix: &str) -> Result<Ns, String> {
        let name = unique_name(prefix);
        ip(&["netns", "add", &name])?;
        let ns = Ns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn place(dev: &str, ns: &Ns, v4: &str, mac: Option<&str>) -> Result<(), String> {
    ip(&["link", "set", dev, "netns", &ns.0])?;
    if let Some(m) = mac {
        ip(&["-n", &ns.0, "link", "set", dev, "address", m])?;
    }
    ip(&["-n", &ns.0, "addr", "add", v4, "dev", dev])?;
    ip(&["-n", &ns.0, "link", "set", dev, "up"])
}

/// One TCP stream of `bytes` from `from` to `addr` in `to`; nanoseconds from connect to the
/// receiver's count of the last byte.
fn tcp_once(from: &str, to: &str, addr: &str, bytes: usize) -> Result<f64, String> {
    use std::io::{Read, Write};
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = s.spawn(move || -> Result<usize, String> {
            sys::enter_netns(to).map_err(|e| format!("setns: {e}"))?;
            let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            let _ = tx.send(());
            let (mut c, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
            c.set_read_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0;
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(format!("receive: {e}")),
                }
            }
            let _ = c.write_all(&[1]);
            Ok(n)
        });
        let _ = rx.recv_timeout(Duration::from_secs(10));
        // The sender runs on a thread of its own too: setns moves the calling thread for good,
        // and the bench's main thread must stay in the host's namespace (the real-Xen suite
        // after this one downloads packages: from inside a test namespace, DNS failed).
        let client = s.spawn(move || -> Result<f64, String> {
            sys::enter_netns(from).map_err(|e| format!("setns: {e}"))?;
            let sock = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
            let start = Instant::now();
            let mut c = TcpStream::connect_timeout(&sock, Duration::from_secs(10))
                .map_err(|e| format!("connect: {e}"))?;
            c.set_write_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?;
            let chunk = vec![0x5au8; 1 << 16];
            let mut sent = 0;
            while sent < bytes {
                let k = chunk.len().min(bytes - sent);
                c.write_all(&chunk[..k]).map_err(|e| format!("send: {e}"))?;
                sent += k;
            }
            c.shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            let mut ack = [0u8; 1];
            c.read_exact(&mut ack)
                .map_err(|e| format!("receiver's end mark: {e}"))?;
            Ok(start.elapsed().as_secs_f64() * 1e9)
        });
        let client = client.join().map_err(|_| "sender panicked".to_string())?;
        let got = server
            .join()
            .map_err(|_| "receiver panicked".to_string())??;
        let ns = client?;
        if got == bytes {
            Ok(ns)
        } else {
            Err(format!("receiver counted {got} of {bytes} bytes"))
        }
    })
}

/// `secs` of 64-byte UDP frames from `from` to `addr` in `to`: (sent, received, elapsed ns).
fn udp_once(from: &str, to: &str, addr: &str, secs: f64) -> Result<(u64, u64, f64), String> {
    let done = AtomicBool::new(false);
    let done = &done;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = s.spawn(move || -> Result<u64, String> {
            sys::enter_netns(to).map_err(|e| format!("setns: {e}"))?;
            let u = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            u.set_read_timeout(Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?;
            let _ = tx.send(());
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            let mut idle_since: Option<Instant> = None;
            loop {
                match u.recv(&mut buf) {
                    Ok(k) if k == UDP_PAYLOAD_64B => {
                        n += 1;
                        idle_since = None;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        // Stop once the sender is done and nothing came for 300 ms.
                        if done.load(Ordering::Relaxed) {
                            let t = *idle_since.get_or_insert_with(Instant::now);
                            if t.elapsed() > Duration::from_millis(300) {
                                break;
                            }
                        }
                    }
                }
            }
            Ok(n)
        });
        let _ = rx.recv_timeout(Duration::from_secs(10));
        // On a thread of its own, as in tcp_once.
        let client = s.spawn(move || -> Result<(u64, f64), String> {
            sys::enter_netns(from).map_err(|e| format!("setns: {e}"))?;
            let u = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
            u.connect(addr).map_err(|e| format!("connect: {e}"))?;
            let payload = [0x42u8; UDP_PAYLOAD_64B];
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                for _ in 0..64 {
                    // ENOBUFS and the like are drops the count shows.
                    if u.send(&payload).is_ok() {
                        sent += 1;
                    }
                }
            }
            Ok((sent, start.elapsed().as_secs_f64() * 1e9))
        });
        let client = client.join();
        done.store(true, Ordering::Relaxed);
        let client = client.map_err(|_| "sender panicked".to_string())?;
        let got = server
            .join()
            .map_err(|_| "receiver panicked".to_string())??;
        let (sent, ns) = client?;
        Ok((sent, got, ns))
    })
}

struct TapIo<'t> {
    tap: &'t Tap,
    offloads: Offloads,
}

impl NetIo for TapIo<'_> {
    fn offloads(&self) -> Offloads {
        self.offloads
    }
    fn deliver(&mut self, _queue: u16, data: &[u8], meta: &PacketMeta) {
        let _ = self.tap.send(data, meta);
    }
}

fn now(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The data path of `net_e2e.rs`: event dispatchers, one worker per queue and side, one reader
/// per TAP, until `stop`. A queue failure ends the run and is returned.
fn run(
    pair: &Pair<'_, '_>,
    tap_a: &Tap,
    tap_b: &Tap,
    off: Offloads,
    stop: &AtomicBool,
    busy: &AtomicU64,
) {
    let env = pair.env();
    let nq = u32::try_from(pair.front.len()).unwrap_or(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut seen = 0;
            while !stop.load(Ordering::Relaxed) {
                env.fe_hub.dispatch(&mut seen, Duration::from_millis(10));
            }
        });
        s.spawn(|| {
            let mut seen = 0;
            while !stop.load(Ordering::Relaxed) {
                env.be_hub.dispatch(&mut seen, Duration::from_millis(10));
            }
        });
        for q in &pair.back {
            let Ok(port) = q.lock().map(|q| q.ports().tx) else {
                continue;
            };
            let kick = env.be_hub.kick(port);
            s.spawn(move || {
                let mut tap = TapIo {
                    tap: tap_b,
                    offloads: off,
                };
                let mut io = VifIo {
                    io: &mut tap,
                    mcast: &pair.mcast,
                };
                let mut seen = 0;
                while !stop.load(Ordering::Relaxed) {
                    kick.wait(&mut seen, Duration::from_millis(10));
                    loop {
                        let Ok(mut q) = q.lock() else { return };
                        let (Ok(t), Ok(r)) = (q.process_tx(&mut io), q.process_rx(now(start)))
                        else {
                            stop.store(true, Ordering::Relaxed);
                            return;
                        };
                        q.tick(now(start));
                        if !t.more && !r.more {
                            break;
                        }
                    }
                }
            });
        }
        for q in &pair.front {
            let Ok(port) = q.lock().map(|q| q.ports().tx) else {
                continue;
            };
            let kick = env.fe_hub.kick(port);
            s.spawn(move || {
                let mut seen = 0;
                while !stop.load(Ordering::Relaxed) {
                    kick.wait(&mut seen, Duration::from_millis(10));
                    loop {
                        let Ok(mut q) = q.lock() else { return };
                        let tx = q.poll_tx();
                        let rx = q.poll_rx(|d, m| {
                            let _ = tap_a.send(d, m);
                        });
                        let (Ok(_), Ok(w)) = (tx, rx) else {
                            stop.store(true, Ordering::Relaxed);
                            return;
                        };
                        if !w.more {
                            break;
                        }
                    }
                }
            });
        }
        // Guest stack → netfront.
        s.spawn(|| {
            let steer = Steering::new(nq);
            let mut buf = vec![0u8; 10 + 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some((n, meta))) = tap_a.recv(&mut buf, 10) else {
                    continue;
                };
                let pkt = &buf[10..10 + n];
                let q = &pair.front[usize::from(steer.select(pkt).0)];
                let Ok(port) = q.lock().map(|q| q.ports().tx) else {
                    return;
                };
                let kick = env.fe_hub.kick(port);
                let mut seen = 0;
                for _ in 0..2000 {
                    let r = {
                        let Ok(mut q) = q.lock() else { return };
                        let _ = q.poll_tx();
                        q.send(pkt, &meta)
                    };
                    match r {
                        Err(SendError::Busy) => {
                            busy.fetch_add(1, Ordering::Relaxed);
                            kick.wait(&mut seen, Duration::from_millis(1));
                        }
                        _ => break,
                    }
                }
            }
        });
        // Host stack → netback.
        s.spawn(|| {
            let mut buf = vec![0u8; 10 + 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some((n, meta))) = tap_b.recv(&mut buf, 10) else {
                    continue;
                };
                let pkt = &buf[10..10 + n];
                if let Some(qi) = pair.host_to_guest(pkt, &meta) {
                    if let Ok(mut q) = pair.back[usize::from(qi)].lock() {
                        let _ = q.process_rx(now(start));
                    }
                }
            }
        });
    });
}

fn sample(per: &mut [f64], items: u64) -> Sample {
    per.sort_by(f64::total_cmp);
    let n = per.len();
    let median = if n == 0 {
        0.0
    } else if n % 2 == 1 {
        per[n / 2]
    } else {
        f64::midpoint(per[n / 2 - 1], per[n / 2])
    };
    Sample {
        median,
        min: per.first().copied().unwrap_or(0.0),
        max: per.last().copied().unwrap_or(0.0),
        reps: n,
        items,
    }
}

/// Runs the network suite: `reps` alternating repetitions of TCP (`tcp_mib` MiB) and of
/// `udp_secs` seconds of 64-byte UDP, through our pair and through veth.
///
/// # Errors
/// Why it could not run (not root, no `ip`, a device that could not be created) or a
/// repetition that failed (lost TCP bytes, a failed queue).
pub fn run_suite(scale: &Scale) -> Result<NetResult, String> {
    let result = run_in_namespaces(scale);
    // Every setns happens on a thread of its own; should one ever run on this thread, the
    // suites after this one (the real-Xen suite downloads packages) would run inside a test
    // namespace without DNS, as they once did.
    if !in_host_namespace() {
        return Err("the bench's own thread was left in a test network namespace".into());
    }
    result
}

/// This thread's network namespace is init's.
fn in_host_namespace() -> bool {
    match (
        std::fs::read_link("/proc/thread-self/ns/net"),
        std::fs::read_link("/proc/1/ns/net"),
    ) {
        (Ok(mine), Ok(init)) => mine == init,
        // Not readable (no /proc, or not allowed to look at init): nothing to compare.
        _ => true,
    }
}

fn run_in_namespaces(scale: &Scale) -> Result<NetResult, String> {
    if !sys::is_root() {
        return Err("needs root (network namespaces, TAP and veth devices)".into());
    }
    let ns_a = Ns::new("xbA-")?;
    let ns_b = Ns::new("xbB-")?;
    let (ta, tb) = (unique_name("xba"), unique_name("xbb"));
    let tap_off = TapOffloads {
        csum: true,
        tso: true,
    };
    let tap_a = Tap::open(&ta, tap_off).map_err(|e| format!("TAP {ta}: {e}"))?;
    let tap_b = Tap::open(&tb, tap_off).map_err(|e| format!("TAP {tb}: {e}"))?;
    place(&ta, &ns_a, "10.79.0.1/24", Some(MAC))?;
    place(&tb, &ns_b, "10.79.0.2/24", None)?;
    let ns_v1 = Ns::new("xbV1-")?;
    let ns_v2 = Ns::new("xbV2-")?;
    let (v1, v2) = (unique_name("xbv"), unique_name("xbv"));
    ip(&["link", "add", &v1, "type", "veth", "peer", "name", &v2])?;
    place(&v1, &ns_v1, "10.80.0.1/24", None)?;
    place(&v2, &ns_v2, "10.80.0.2/24", None)?;

    let opts = Options::default();
    let queues = opts.front.queues.min(opts.back.max_queues).max(1);
    let (env, xs) = machine(queues, MAC);
    let pair = Pair::connect(env, xs, &opts).map_err(|e| format!("connect: {e:?}"))?;
    let features = format!("{:?}", pair.info.features);
    let stop = AtomicBool::new(false);
    let busy = AtomicU64::new(0);
    let off = Offloads {
        csum: tap_off.csum,
        gso: tap_off.tso,
    };
    let tcp_bytes = usize::try_from(scale.net_tcp_mib).unwrap_or(64) << 20;
    let result = std::thread::scope(|s| {
        s.spawn(|| run(&pair, &tap_a, &tap_b, off, &stop, &busy));
        let r = (|| -> Result<_, String> {
            let (mut to, mut tv, mut uo, mut uv) = (vec![], vec![], vec![], vec![]);
            let (mut offered_o, mut offered_v) = (vec![], vec![]);
            let mib = scale.net_tcp_mib as f64;
            // Warm-up (ARP, TCP slow start caches), untimed.
            tcp_once(&ns_a.0, &ns_b.0, "10.79.0.2:5100", 1 << 20)?;
            tcp_once(&ns_v1.0, &ns_v2.0, "10.80.0.2:5100", 1 << 20)?;
            for i in 0..scale.net_reps {
                let port = 5101 + i;
                let a = format!("10.79.0.2:{port}");
                to.push(tcp_once(&ns_a.0, &ns_b.0, &a, tcp_bytes)? / mib);
                if stop.load(Ordering::Relaxed) {
                    return Err("a queue failed during the run".into());
                }
                let v = format!("10.80.0.2:{port}");
                tv.push(tcp_once(&ns_v1.0, &ns_v2.0, &v, tcp_bytes)? / mib);
            }
            for i in 0..scale.net_reps {
                let port = 6101 + i;
                let a = format!("10.79.0.2:{port}");
                let (sent, got, ns) = udp_once(&ns_a.0, &ns_b.0, &a, scale.net_udp_secs)?;
                if got == 0 || stop.load(Ordering::Relaxed) {
                    return Err(format!("UDP through our pair: {got} of {sent} arrived"));
                }
                uo.push(ns / got as f64);
                offered_o.push(sent as f64 / ns * 1e9);
                let v = format!("10.80.0.2:{port}");
                let (sent, got, ns) = udp_once(&ns_v1.0, &ns_v2.0, &v, scale.net_udp_secs)?;
                if got == 0 {
                    return Err(format!("UDP through veth: {got} of {sent} arrived"));
                }
                uv.push(ns / got as f64);
                offered_v.push(sent as f64 / ns * 1e9);
            }
            let med = |v: &mut Vec<f64>| sample(v, 1).median;
            Ok(NetResult {
                queues,
                tcp_ours: sample(&mut to, scale.net_tcp_mib),
                tcp_veth: sample(&mut tv, scale.net_tcp_mib),
                udp_ours: sample(&mut uo, 0),
                udp_veth: sample(&mut uv, 0),
                udp_offered: (med(&mut offered_o), med(&mut offered_v)),
                busy: 0,
                features: features.clone(),
            })
        })();
        stop.store(true, Ordering::Relaxed);
        r
    });
    for (i, q) in pair.back.iter().enumerate() {
        if let Some(f) = q.lock().ok().and_then(|q| q.failure()) {
            return Err(format!("backend queue {i} failed: {f:?}"));
        }
    }
    for (i, q) in pair.front.iter().enumerate() {
        if let Some(f) = q.lock().ok().and_then(|q| q.failure()) {
            return Err(format!("frontend queue {i} failed: {f:?}"));
        }
    }
    let _ = pair.disconnect(xs);
    let mut r = result?;
    r.busy = busy.load(Ordering::Relaxed);
    Ok(r)
}
