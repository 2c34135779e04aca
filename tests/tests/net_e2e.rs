//! Real Linux traffic through our netfront and netback:
//!
//! ```text
//! netns A: TCP/UDP/ping ─ tapA ⇄ netfront ⇄ xensim (grants, events, xenstore) ⇄ netback ⇄ tapB ─ netns B
//! ```
//!
//! Both TAPs use `IFF_VNET_HDR`, so the kernel's partial checksums and TSO frames reach the
//! cores as netif `csum_blank` and GSO extras (and back). Each test repeats TCP both ways
//! (content hash verified), UDP, ping with fragmented packets over IPv4 and IPv6, under one
//! offload configuration; one test reconnects mid-way; one prints throughput next to a veth
//! pair measured in the same run (a benchmark, not an assertion).
//!
//! Needs root (namespaces, TAP devices): without it every test *fails* with that reason.

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use xen_netback::ctrl::Steering;
    use xen_netback::{BackendFeatures, NetIo, Offloads};
    use xen_netfront::negotiate::FrontendConfig;
    use xen_netfront::SendError;
    use xen_netif::PacketMeta;
    use xen_tests::net::bus::{machine, BusPair};
    use xen_tests::net::pair::{Options, Pair, VifIo};
    use xen_tests::net::sys;
    use xen_tests::net::tap::{Tap, TapOffloads};
    use xen_tests::net::unique_name;

    /// The namespace tests share the machine's CPUs; run them one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());
    const MAC: &str = "00:16:3e:77:00:01";

    fn require_root() {
        assert!(
            sys::is_root(),
            "net_e2e needs root (network namespaces and TAP devices); run the suite as root"
        );
    }

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("ip(8)");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A network namespace, deleted on drop.
    struct Ns(String);

    impl Ns {
        fn new(name: &str) -> Ns {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
            Ns(name.to_string())
        }
    }

    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }

    /// Moves `dev` into `ns` with the given addresses.
    fn place(dev: &str, ns: &Ns, v4: &str, v6: &str, mac: Option<&str>) {
        ip(&["link", "set", dev, "netns", &ns.0]);
        if let Some(m) = mac {
            ip(&["-n", &ns.0, "link", "set", dev, "address", m]);
        }
        ip(&["-n", &ns.0, "addr", "add", v4, "dev", dev]);
        ip(&["-n", &ns.0, "-6", "addr", "add", v6, "dev", dev, "nodad"]);
        ip(&["-n", &ns.0, "link", "set", dev, "up"]);
    }

    fn fnv(h: &mut u64, data: &[u8]) {
        for &b in data {
            *h ^= u64::from(b);
            *h = h.wrapping_mul(0x100_0000_01b3);
        }
    }

    fn pattern(buf: &mut [u8], seed: u64) {
        let mut x = seed | 1;
        for b in buf {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x.to_le_bytes()[3];
        }
    }

    /// Sends `bytes` from a thread in `from` to a listener in `to` at `addr`; both sides hash
    /// the stream. Returns the rate in MB/s.
    fn tcp_transfer(from: &str, to: &str, addr: &str, bytes: usize) -> f64 {
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel();
            let server = s.spawn(move || {
                sys::enter_netns(to).unwrap();
                let l = TcpListener::bind(addr).unwrap();
                tx.send(()).unwrap();
                let (mut c, _) = l.accept().unwrap();
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut h = 0xcbf2_9ce4_8422_2325u64;
                let mut n = 0usize;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let k = c.read(&mut buf).expect("server read");
                    if k == 0 {
                        break;
                    }
                    fnv(&mut h, &buf[..k]);
                    n += k;
                }
                c.write_all(&h.to_le_bytes()).unwrap();
                (n, h)
            });
            rx.recv().unwrap();
            sys::enter_netns(from).unwrap();
            let start = Instant::now();
            let mut c = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(10))
                .expect("connect");
            c.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            let mut chunk = vec![0u8; 1 << 16];
            let mut sent = 0;
            let mut seed = 1;
            while sent < bytes {
                let k = chunk.len().min(bytes - sent);
                pattern(&mut chunk[..k], seed);
                seed += 1;
                fnv(&mut h, &chunk[..k]);
                c.write_all(&chunk[..k]).expect("client write");
                sent += k;
            }
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut reply = [0u8; 8];
            c.read_exact(&mut reply).expect("server hash");
            let secs = start.elapsed().as_secs_f64();
            let (n, sh) = server.join().unwrap();
            assert_eq!(n, bytes, "server received everything");
            assert_eq!(sh, h, "content hash");
            assert_eq!(u64::from_le_bytes(reply), h);
            bytes as f64 / secs / 1e6
        })
    }

    /// UDP datagrams of `size` from `from` to `addr` in `to`; returns how many arrived intact.
    fn udp(from: &str, to: &str, bind: &str, addr: &str, size: usize, count: usize) -> usize {
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel();
            let server = s.spawn(move || {
                sys::enter_netns(to).unwrap();
                let u = UdpSocket::bind(addr).unwrap();
                u.set_read_timeout(Some(Duration::from_millis(1500)))
                    .unwrap();
                tx.send(()).unwrap();
                let mut ok = 0;
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = u.recv(&mut buf) {
                    let mut want = vec![0u8; size];
                    pattern(&mut want, u64::from(buf[0]) + 1);
                    want[0] = buf[0];
                    if n == size && buf[..n] == want[..] {
                        ok += 1;
                    }
                }
                ok
            });
            rx.recv().unwrap();
            sys::enter_netns(from).unwrap();
            let u = UdpSocket::bind(bind).unwrap();
            for i in 0..count {
                let mut d = vec![0u8; size];
                let tag = u8::try_from(i % 200).unwrap_or(0);
                pattern(&mut d, u64::from(tag) + 1);
                d[0] = tag;
                let _ = u.send_to(&d, addr);
                std::thread::sleep(Duration::from_micros(200));
            }
            server.join().unwrap()
        })
    }

    /// `ping` from iputils if installed, else busybox's (both take `-c -W -s -6`).
    fn ping(ns: &str, args: &[&str]) {
        let have_ping = Command::new("sh")
            .args(["-c", "command -v ping"])
            .output()
            .is_ok_and(|o| o.status.success());
        let prog: &[&str] = if have_ping {
            &["ping"]
        } else {
            &["busybox", "ping"]
        };
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(prog)
            .args(["-c", "3", "-W", "3"])
            .args(args)
            .output()
            .expect("ping");
        assert!(
            out.status.success(),
            "ping {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
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

    /// Runs the data path (event dispatchers, one worker per queue and side, one reader per
    /// TAP) until `stop`.
    fn run(
        pair: &Pair<'_, '_>,
        tap_a: &Tap,
        tap_b: &Tap,
        tap_b_off: Offloads,
        stop: &AtomicBool,
        busy: &AtomicU64,
    ) {
        let env = pair.env();
        let nq = u32::try_from(pair.front.len()).unwrap();
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
                let kick = env.be_hub.kick(q.lock().unwrap().ports().tx);
                s.spawn(move || {
                    let mut tap = TapIo {
                        tap: tap_b,
                        offloads: tap_b_off,
                    };
                    let mut io = VifIo {
                        io: &mut tap,
                        mcast: &pair.mcast,
                    };
                    let mut seen = 0;
                    while !stop.load(Ordering::Relaxed) {
                        kick.wait(&mut seen, Duration::from_millis(10));
                        loop {
                            let mut q = q.lock().unwrap();
                            let t = q.process_tx(&mut io).expect("backend tx");
                            let r = q.process_rx(now(start)).expect("backend rx");
                            q.tick(now(start));
                            if !t.more && !r.more {
                                break;
                            }
                        }
                    }
                });
            }
            for q in &pair.front {
                let kick = env.fe_hub.kick(q.lock().unwrap().ports().tx);
                s.spawn(move || {
                    let mut seen = 0;
                    while !stop.load(Ordering::Relaxed) {
                        kick.wait(&mut seen, Duration::from_millis(10));
                        loop {
                            let mut q = q.lock().unwrap();
                            q.poll_tx().expect("frontend tx");
                            let w = q
                                .poll_rx(|d, m| {
                                    let _ = tap_a.send(d, m);
                                })
                                .expect("frontend rx");
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
                    let qi = usize::from(steer.select(pkt).0);
                    let q = &pair.front[qi];
                    let kick = env.fe_hub.kick(q.lock().unwrap().ports().tx);
                    let mut seen = 0;
                    for _ in 0..2000 {
                        let r = {
                            let mut q = q.lock().unwrap();
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
            // Host stack → netback: the vif's multicast filter and steering (as configured
            // over the control ring) pick the queue.
            s.spawn(|| {
                let mut buf = vec![0u8; 10 + 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some((n, meta))) = tap_b.recv(&mut buf, 10) else {
                        continue;
                    };
                    let pkt = &buf[10..10 + n];
                    if let Some(qi) = pair.host_to_guest(pkt, &meta) {
                        let _ = pair.back[usize::from(qi)]
                            .lock()
                            .unwrap()
                            .process_rx(now(start));
                    }
                }
            });
        });
    }

    struct Case {
        tag: &'static str,
        front: FrontendConfig,
        back: BackendFeatures,
        /// Offloads of the TAPs (what the kernels may hand us).
        tap: TapOffloads,
        tcp_bytes: usize,
        /// A Toeplitz mapping table to install over the control ring (all hash types).
        steer: Option<Vec<u32>>,
    }

    fn full() -> Case {
        Case {
            tag: "all",
            front: FrontendConfig::default(),
            back: BackendFeatures::default(),
            tap: TapOffloads {
                csum: true,
                tso: true,
            },
            tcp_bytes: 64 << 20,
            steer: None,
        }
    }

    /// Sets up namespaces and TAPs, connects, runs `body` with traffic flowing, tears down.
    fn with_pair(case: &Case, reconnect: bool, body: impl Fn(&str, &str, u32)) {
        require_root();
        let _serial = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Unique per process and case: two runs at once must not take each other's devices.
        let (na, nb) = (
            unique_name(&format!("xnA-{}-", case.tag)),
            unique_name(&format!("xnB-{}-", case.tag)),
        );
        let (ta, tb) = (unique_name("xta"), unique_name("xtb"));
        let ns_a = Ns::new(&na);
        let ns_b = Ns::new(&nb);
        let tap_a = Tap::open(&ta, case.tap).expect("tap A");
        let tap_b = Tap::open(&tb, case.tap).expect("tap B");
        place(&ta, &ns_a, "10.77.0.1/24", "fd77::1/64", Some(MAC));
        place(&tb, &ns_b, "10.77.0.2/24", "fd77::2/64", None);
        let queues = case.front.queues.min(case.back.max_queues).max(1);
        let (env, xs) = machine(queues, MAC);
        let opts = Options {
            front: case.front,
            back: case.back,
            ..Options::default()
        };
        let rounds = if reconnect { 2 } else { 1 };
        // The reconnect case runs both handshakes through `xen_xenbus::Bus` and the drivers'
        // state machines (the backend closes; both ends come back on their own).
        let mut bus = reconnect.then(|| BusPair::new(env, xs, &opts));
        for round in 0..rounds {
            let pair = match &mut bus {
                Some(b) => b.take().expect("connected through xenbus"),
                None => Pair::connect(env, xs, &opts).expect("connect"),
            };
            if let Some(mapping) = &case.steer {
                let t = xen_netfront::Toeplitz {
                    flags: xen_netif::hash::types::ALL,
                    key: (0u8..40).map(|i| i.wrapping_mul(37) ^ 0x5a).collect(),
                    mapping: mapping.clone(),
                };
                assert_eq!(
                    pair.configure_toeplitz(t).expect("control ring"),
                    xen_netfront::Outcome::Configured
                );
            }
            let f = pair.info.features;
            let tap_b_off = Offloads {
                csum: case.tap.csum,
                gso: case.tap.tso,
            };
            let stop = AtomicBool::new(false);
            let busy = AtomicU64::new(0);
            std::thread::scope(|s| {
                s.spawn(|| run(&pair, &tap_a, &tap_b, tap_b_off, &stop, &busy));
                if round > 0 {
                    // After a reconnect: announce our MAC/IP so B relearns where we are.
                    let arp = xen_netfront::arp::gratuitous(pair.mac, [10, 77, 0, 1]);
                    pair.front[0]
                        .lock()
                        .unwrap()
                        .send(&arp, &PacketMeta::default())
                        .expect("gratuitous arp");
                }
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    body(&na, &nb, queues);
                }));
                stop.store(true, Ordering::Relaxed);
                if let Err(e) = r {
                    std::panic::resume_unwind(e);
                }
            });
            let mut steered_rx = 0;
            for (i, q) in pair.back.iter().enumerate() {
                let q = q.lock().unwrap();
                assert!(q.failure().is_none(), "backend queue {i} failed");
                eprintln!("[{}] backend q{i}: {:?}", case.tag, q.stats());
                if let Some(mapping) = &case.steer {
                    // Hashable traffic goes only where the table says; what no enabled hash
                    // type covers (ARP) falls back to queue 0. Which of the named queues a flow
                    // lands on depends on its (random) ephemeral ports, so only their sum is
                    // bound to be non-zero.
                    let named = mapping.contains(&u32::try_from(i).unwrap());
                    let rx = q.stats().rx_packets;
                    if named {
                        steered_rx += rx;
                    } else {
                        assert!(
                            i == 0 || rx == 0,
                            "queue {i}: {rx} packets, not in mapping {mapping:?}"
                        );
                    }
                }
            }
            if let Some(mapping) = &case.steer {
                assert!(
                    steered_rx > 0,
                    "no packet on the queues of mapping {mapping:?}"
                );
            }
            for (i, q) in pair.front.iter().enumerate() {
                let q = q.lock().unwrap();
                assert!(q.failure().is_none(), "frontend queue {i} failed");
                eprintln!("[{}] frontend q{i}: {:?}", case.tag, q.stats());
            }
            eprintln!(
                "[{}] round {round}: features {f:?}, busy retries {}",
                case.tag,
                busy.load(Ordering::Relaxed)
            );
            match &mut bus {
                Some(b) => {
                    assert_eq!(pair.release(), 0);
                    b.backend_close().expect("backend close");
                    b.settle();
                }
                None => assert_eq!(pair.disconnect(xs), 0),
            }
        }
    }

    fn traffic(case: &Case) -> impl Fn(&str, &str, u32) + '_ {
        move |na: &str, nb: &str, _q: u32| {
            let a2b = tcp_transfer(na, nb, "10.77.0.2:5001", case.tcp_bytes);
            let b2a = tcp_transfer(nb, na, "10.77.0.1:5002", case.tcp_bytes);
            let v6 = tcp_transfer(na, nb, "[fd77::2]:5003", case.tcp_bytes / 4);
            eprintln!(
                "[{}] TCP A->B {a2b:.1} MB/s, B->A {b2a:.1} MB/s, IPv6 A->B {v6:.1} MB/s",
                case.tag
            );
            let small = udp(na, nb, "10.77.0.1:0", "10.77.0.2:6001", 1200, 300);
            let frag = udp(nb, na, "10.77.0.2:0", "10.77.0.1:6002", 8000, 100);
            eprintln!(
                "[{}] UDP 1200 B: {small}/300, 8000 B (fragmented): {frag}/100",
                case.tag
            );
            assert!(small >= 150 && frag >= 50, "UDP loss too high");
            ping(na, &["-s", "8000", "10.77.0.2"]);
            ping(nb, &["-s", "3000", "10.77.0.1"]);
            ping(na, &["-6", "-s", "6000", "fd77::2"]);
        }
    }

    #[test]
    fn e2e_all_offloads_four_queues_split_events() {
        let case = full();
        with_pair(&case, false, traffic(&case));
    }

    #[test]
    fn e2e_gso_off() {
        let case = Case {
            tag: "nogso",
            front: FrontendConfig {
                gso: false,
                ..FrontendConfig::default()
            },
            back: BackendFeatures {
                gso: false,
                ..BackendFeatures::default()
            },
            tap: TapOffloads {
                csum: true,
                tso: false,
            },
            tcp_bytes: 16 << 20,
            steer: None,
        };
        with_pair(&case, false, traffic(&case));
    }

    #[test]
    fn e2e_checksum_offload_off() {
        let case = Case {
            tag: "nocsum",
            front: FrontendConfig {
                gso: false,
                csum: false,
                ipv6_csum: false,
                ..FrontendConfig::default()
            },
            back: BackendFeatures {
                gso: false,
                ipv6_csum: false,
                ..BackendFeatures::default()
            },
            tap: TapOffloads {
                csum: false,
                tso: false,
            },
            tcp_bytes: 16 << 20,
            steer: None,
        };
        with_pair(&case, false, traffic(&case));
    }

    #[test]
    fn e2e_ipv6_csum_off_single_queue_shared_event_channel_no_sg() {
        let case = Case {
            tag: "minimal",
            front: FrontendConfig {
                queues: 1,
                split_evtchn: false,
                sg: false,
                gso: false,
                ipv6_csum: false,
                ..FrontendConfig::default()
            },
            back: BackendFeatures {
                split_evtchn: false,
                ..BackendFeatures::default()
            },
            tap: TapOffloads {
                csum: true,
                tso: false,
            },
            tcp_bytes: 16 << 20,
            steer: None,
        };
        with_pair(&case, false, traffic(&case));
    }

    #[test]
    fn e2e_toeplitz_steering_over_the_control_ring() {
        let case = Case {
            tag: "rss",
            tcp_bytes: 8 << 20,
            steer: Some(vec![1, 3, 3, 1, 1, 3]),
            ..full()
        };
        with_pair(&case, false, traffic(&case));
    }

    #[test]
    fn e2e_across_a_reconnect() {
        let case = Case {
            tag: "recon",
            tcp_bytes: 8 << 20,
            ..full()
        };
        with_pair(&case, true, traffic(&case));
    }

    #[test]
    fn e2e_throughput_against_veth() {
        let case = Case {
            tag: "bench",
            tcp_bytes: 256 << 20,
            ..full()
        };
        let ours = std::sync::Mutex::new(0.0);
        with_pair(&case, false, |na, nb, _| {
            *ours.lock().unwrap() = tcp_transfer(na, nb, "10.77.0.2:5011", case.tcp_bytes);
        });
        let _serial = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let a = Ns::new(&unique_name("xnV1-"));
        let b = Ns::new(&unique_name("xnV2-"));
        let (v1, v2) = (unique_name("xnv"), unique_name("xnv"));
        ip(&["link", "add", &v1, "type", "veth", "peer", "name", &v2]);
        place(&v1, &a, "10.78.0.1/24", "fd78::1/64", None);
        place(&v2, &b, "10.78.0.2/24", "fd78::2/64", None);
        let veth = tcp_transfer(&a.0, &b.0, "10.78.0.2:5012", case.tcp_bytes);
        let ours = *ours.lock().unwrap();
        eprintln!(
            "BENCH TCP A->B: netfront/xensim/netback {ours:.1} MB/s, veth {veth:.1} MB/s, ratio {:.3}",
            ours / veth
        );
    }
}
