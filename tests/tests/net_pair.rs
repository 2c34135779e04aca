//! netfront ↔ xensim ↔ netback without a network stack: the handshake, packets both ways with
//! every slot layout and offload, several queues, reconnect, and the netif XSA regressions
//! driven through the real cores.

#[cfg(test)]
mod tests {
    use xen_netback::{BackendFeatures, Offloads};
    use xen_netfront::negotiate::FrontendConfig;
    use xen_netif::{csum, Csum, Gso, GsoKind, PacketMeta};
    use xen_tests::net::pair::{Collect, Env, Options, Pair, World};
    use xen_tests::xensim::xenstored::XenstoreSim;

    const MAC: &str = "00:16:3e:12:34:56";

    /// An Ethernet/IPv4/TCP frame of `len` bytes with a valid checksum.
    fn tcp4(len: usize, seed: u8) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[..6].copy_from_slice(&[0, 0x16, 0x3e, 1, 1, 1]);
        f[6..12].copy_from_slice(&[0, 0x16, 0x3e, 0x12, 0x34, 0x56]);
        f[12] = 8;
        f[14] = 0x45;
        let ip_len = u16::try_from(len - 14).unwrap();
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&4000u16.to_be_bytes());
        f[36..38].copy_from_slice(&5000u16.to_be_bytes());
        f[46] = 0x50;
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = u8::try_from(i % 251)
                .unwrap()
                .wrapping_mul(31)
                .wrapping_add(seed);
        }
        csum::fill_full(&mut f).unwrap();
        f
    }

    fn settle(p: &Pair<'_, '_>, io: &mut Collect, got: &mut Vec<(u16, Vec<u8>, PacketMeta)>) {
        for _ in 0..100 {
            let more = p.pump(io, 0, |q, d, m| got.push((q, d.to_vec(), *m)));
            if !more {
                break;
            }
        }
    }

    #[test]
    fn handshake_publishes_and_reads_every_key() {
        let w = World::new(2);
        let xs = XenstoreSim::new();
        w.toolstack(&xs, MAC, true);
        let env = Env::new(&w);
        let opts = Options {
            front: FrontendConfig {
                queues: 2,
                ..FrontendConfig::default()
            },
            ..Options::default()
        };
        let p = Pair::connect(&env, &xs, &opts).unwrap();
        assert_eq!(p.mac, [0, 0x16, 0x3e, 0x12, 0x34, 0x56]);
        assert_eq!(p.front.len(), 2);
        assert_eq!(p.back.len(), 2);
        let f = p.info.features;
        assert!(f.sg && f.gso_v4 && f.gso_v6 && f.csum_v4 && f.csum_v6 && f.rx_notify);
        let d = xs.daemon();
        let be = w.be_dir();
        for k in [
            "feature-sg",
            "feature-gso-tcpv4",
            "feature-gso-tcpv6",
            "feature-ipv6-csum-offload",
            "feature-rx-copy",
            "feature-multicast-control",
            "feature-split-event-channels",
            "feature-ctrl-ring",
        ] {
            assert_eq!(d.value(&format!("{be}/{k}")), Some(&b"1"[..]), "{k}");
        }
        assert_eq!(d.value(&format!("{be}/feature-rx-flip")), Some(&b"0"[..]));
        let fe = w.fe_dir();
        assert_eq!(
            d.value(&format!("{fe}/multi-queue-num-queues")),
            Some(&b"2"[..])
        );
        assert!(d.value(&format!("{fe}/queue-1/event-channel-rx")).is_some());
        assert!(d.value(&format!("{fe}/tx-ring-ref")).is_none());
        assert_eq!(d.value(&format!("{fe}/request-rx-copy")), Some(&b"1"[..]));
    }

    #[test]
    fn packets_both_ways_every_size_and_offload() {
        let w = World::new(1);
        let xs = XenstoreSim::new();
        w.toolstack(&xs, MAC, true);
        let env = Env::new(&w);
        let p = Pair::connect(
            &env,
            &xs,
            &Options {
                front: FrontendConfig {
                    queues: 1,
                    ..FrontendConfig::default()
                },
                ..Options::default()
            },
        )
        .unwrap();
        let mut io = Collect::default();
        let mut got = Vec::new();
        let sizes = [60, 1514, 4096, 4097, 9000, 40_000, 65_535 - 14];
        for (i, &n) in sizes.iter().enumerate() {
            let pkt = tcp4(n, u8::try_from(i).unwrap());
            let meta = if n > 1514 {
                PacketMeta {
                    csum: Csum::Partial,
                    gso: Some(Gso {
                        kind: GsoKind::TcpV4,
                        size: 1448,
                    }),
                    hash: None,
                }
            } else {
                PacketMeta::default()
            };
            let mut sent = pkt.clone();
            if meta.csum == Csum::Partial {
                csum::set_pseudo(&mut sent).unwrap();
            }
            p.front[0].lock().unwrap().send(&sent, &meta).unwrap();
            settle(&p, &mut io, &mut got);
            let (_, data, m) = io.packets.pop().expect("delivered");
            assert_eq!(data.len(), n);
            assert_eq!(m, meta);
            // Backend → frontend, the same packet back.
            p.back[0].lock().unwrap().enqueue_rx(&data, &m).unwrap();
            settle(&p, &mut io, &mut got);
            let (_, back, bm) = got.pop().expect("received");
            assert_eq!(back, data);
            assert_eq!(bm.gso, meta.gso);
            let mut fixed = back.clone();
            if bm.csum == Csum::Partial {
                csum::complete_partial(&mut fixed).unwrap();
            }
            assert_eq!(fixed, pkt, "checksum completes to the original");
        }
        let fs = p.front[0].lock().unwrap().stats();
        assert_eq!(fs.tx_packets, sizes.len() as u64);
        assert_eq!(fs.rx_packets, sizes.len() as u64);
    }

    #[test]
    fn offloads_off_complete_checksums_in_software() {
        let w = World::new(1);
        let xs = XenstoreSim::new();
        w.toolstack(&xs, MAC, true);
        let env = Env::new(&w);
        let p = Pair::connect(
            &env,
            &xs,
            &Options {
                front: FrontendConfig {
                    queues: 1,
                    gso: false,
                    csum: false,
                    ipv6_csum: false,
                    sg: false,
                    ..FrontendConfig::default()
                },
                back: BackendFeatures {
                    gso: false,
                    ipv6_csum: false,
                    ..BackendFeatures::default()
                },
                ..Options::default()
            },
        )
        .unwrap();
        assert!(!p.info.features.sg && !p.info.features.gso_v4 && !p.info.features.csum_v4);
        let mut io = Collect {
            offloads: Some(Offloads {
                csum: false,
                gso: false,
            }),
            ..Collect::default()
        };
        let mut got = Vec::new();
        let pkt = tcp4(1514, 7);
        let mut partial = pkt.clone();
        csum::set_pseudo(&mut partial).unwrap();
        let meta = PacketMeta {
            csum: Csum::Partial,
            ..PacketMeta::default()
        };
        // Host → guest that refused csum offload: completed before it reaches the ring.
        p.back[0]
            .lock()
            .unwrap()
            .enqueue_rx(&partial, &meta)
            .unwrap();
        settle(&p, &mut io, &mut got);
        assert_eq!(got.pop().unwrap().1, pkt);
        // Guest → host whose interface takes no offload: completed by netback.
        p.front[0].lock().unwrap().send(&partial, &meta).unwrap();
        settle(&p, &mut io, &mut got);
        assert_eq!(io.packets.pop().unwrap().1, pkt);
        // Multi-page without scatter-gather is refused at the source.
        let big = tcp4(9000, 1);
        assert!(p.front[0]
            .lock()
            .unwrap()
            .send(&big, &PacketMeta::default())
            .is_err());
        assert!(p.back[0]
            .lock()
            .unwrap()
            .enqueue_rx(&big, &PacketMeta::default())
            .is_err());
    }

    #[test]
    fn reconnect_keeps_working_and_revokes_everything() {
        let w = World::new(4);
        let xs = XenstoreSim::new();
        w.toolstack(&xs, MAC, true);
        let env = Env::new(&w);
        for round in 0..3u8 {
            let p = Pair::connect(&env, &xs, &Options::default()).unwrap();
            let mut io = Collect::default();
            let mut got = Vec::new();
            for q in 0..p.front.len() {
                let pkt = tcp4(2000, round);
                p.front[q]
                    .lock()
                    .unwrap()
                    .send(&pkt, &PacketMeta::default())
                    .unwrap();
            }
            settle(&p, &mut io, &mut got);
            assert_eq!(io.packets.len(), p.front.len(), "round {round}");
            assert_eq!(p.disconnect(&xs), 0, "nothing left mapped");
            assert_eq!(w.dom0.mappings(), 0);
        }
    }

    /// XSA-396: the frontend tears down while the backend still maps its rings (4 queues ×
    /// TX and RX, plus the control ring). Every mapped page's revoke is deferred, none is
    /// freed for reuse, and all complete once the backend has unmapped; the data pages,
    /// only ever grant-copied, are revoked at once.
    #[test]
    fn xsa396_pages_the_backend_still_maps_are_not_freed() {
        let w = World::new(4);
        let xs = XenstoreSim::new();
        w.toolstack(&xs, MAC, true);
        let env = Env::new(&w);
        let p = Pair::connect(&env, &xs, &Options::default()).unwrap();
        let mapped = w.dom0.mappings();
        assert_eq!(mapped, 4 * 2 + 1);
        let (while_mapped, after) = p.release_frontend_first();
        assert_eq!(while_mapped, mapped, "one deferred revoke per mapped page");
        assert_eq!(after, 0, "all completed after the backend unmapped");
        assert_eq!(w.dom0.mappings(), 0);
    }

    #[test]
    fn multicast_control_reaches_the_backend() {
        let w = World::new(4);
        let xs = XenstoreSim::new();
        w.toolstack(&xs, MAC, true);
        let env = Env::new(&w);
        let p = Pair::connect(&env, &xs, &Options::default()).unwrap();
        let mut io = Collect::default();
        let mut got = Vec::new();
        let m = [1, 0, 0x5e, 0, 0, 0xfb];
        p.front[0].lock().unwrap().send_mcast(true, m).unwrap();
        p.front[0].lock().unwrap().send_mcast(false, m).unwrap();
        settle(&p, &mut io, &mut got);
        assert_eq!(io.mcast, [(true, m), (false, m)]);
        assert!(io.packets.is_empty());
        assert_eq!(p.front[0].lock().unwrap().stats().tx_errors, 0);
    }

    /// The Microsoft RSS verification key.
    const RSS_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    /// A TCP/IPv4 frame of one flow (`sport`), host → guest.
    fn flow(sport: u16) -> Vec<u8> {
        let mut f = tcp4(200, 3);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        csum::fill_full(&mut f).unwrap();
        f
    }

    #[test]
    fn ctrl_ring_toeplitz_steers_flows_to_the_mapped_queues() {
        use xen_netfront::{Outcome, Toeplitz};
        use xen_netif::hash::{toeplitz, types};

        let w = World::new(4);
        let xs = XenstoreSim::new();
        w.toolstack(&xs, MAC, true);
        let env = Env::new(&w);
        let p = Pair::connect(&env, &xs, &Options::default()).unwrap();
        assert_eq!(p.front.len(), 4);
        // The frontend set up the ring because the backend offered it, and published its keys.
        assert!(p.info.ctrl.is_some() && p.ctrl.is_some() && p.front_ctrl.is_some());
        let d = xs.daemon();
        for k in ["ctrl-ring-ref", "event-channel-ctrl"] {
            assert!(d.value(&format!("{}/{k}", w.fe_dir())).is_some(), "{k}");
        }
        drop(d);
        // Locally invalid configurations never reach the backend.
        let bad = Toeplitz {
            flags: types::IPV4_TCP,
            key: RSS_KEY.to_vec(),
            mapping: vec![0, 4],
        };
        assert!(p
            .front_ctrl
            .as_ref()
            .unwrap()
            .lock()
            .unwrap()
            .configure_toeplitz(bad)
            .is_err());
        // Larger than the backend's table: it says so, and nothing is half-installed.
        let big = Toeplitz {
            flags: types::IPV4_TCP,
            key: RSS_KEY.to_vec(),
            mapping: vec![1; 200],
        };
        assert_eq!(
            p.configure_toeplitz(big).unwrap(),
            Outcome::MappingTooLarge { max: 128 }
        );
        let mut io = Collect::default();
        for mapping in [vec![2u32; 8], vec![3, 1, 0, 2, 2, 0, 1, 3, 0, 0, 1]] {
            let t = Toeplitz {
                flags: types::IPV4 | types::IPV4_TCP,
                key: RSS_KEY.to_vec(),
                mapping: mapping.clone(),
            };
            assert_eq!(p.configure_toeplitz(t).unwrap(), Outcome::Configured);
            let mut got = Vec::new();
            let mut want = Vec::new();
            for sport in 1000..1064u16 {
                let pkt = flow(sport);
                // The hash input of TCP/IPv4: addresses, then ports.
                let mut input = pkt[26..34].to_vec();
                input.extend_from_slice(&pkt[34..38]);
                let h = toeplitz(&RSS_KEY, &input);
                let q = u16::try_from(mapping[h as usize % mapping.len()]).unwrap();
                want.push((q, h));
                assert_eq!(p.host_to_guest(&pkt, &PacketMeta::default()), Some(q));
                settle(&p, &mut io, &mut got);
            }
            assert_eq!(got.len(), want.len());
            for ((q, data, meta), (wq, h)) in got.iter().zip(&want) {
                assert_eq!(q, wq, "flow steered to the mapped queue");
                assert_eq!(meta.hash, Some((1, *h)), "the hash reaches the guest");
                assert_eq!(data.len(), 200);
            }
            if mapping.len() > 8 {
                let used: std::collections::BTreeSet<u16> = got.iter().map(|g| g.0).collect();
                assert_eq!(used.len(), 4, "every queue the mapping names is used");
            }
        }
    }

    /// A UDP/IPv4 datagram to the multicast group `224.0.0.<g>` (MAC `01:00:5e:00:00:<g>`).
    fn mcast_udp(g: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 32];
        f[..6].copy_from_slice(&[1, 0, 0x5e, 0, 0, g]);
        f[6..12].copy_from_slice(&[0, 0x16, 0x3e, 1, 1, 1]);
        f[12] = 8;
        f[14] = 0x45;
        let ip_len = u16::try_from(f.len() - 14).unwrap();
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[22] = 1;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 2]);
        f[30..34].copy_from_slice(&[224, 0, 0, g]);
        f[34..36].copy_from_slice(&5353u16.to_be_bytes());
        f[36..38].copy_from_slice(&5353u16.to_be_bytes());
        f[38..40].copy_from_slice(&40u16.to_be_bytes());
        csum::fill_full(&mut f).unwrap();
        f
    }

    #[test]
    fn multicast_filter_delivers_only_subscribed_groups() {
        let w = World::new(2);
        let xs = XenstoreSim::new();
        w.toolstack(&xs, MAC, true);
        let env = Env::new(&w);
        let opts = Options {
            front: FrontendConfig {
                queues: 2,
                request_mcast: true,
                ..FrontendConfig::default()
            },
            ..Options::default()
        };
        let p = Pair::connect(&env, &xs, &opts).unwrap();
        assert!(p.info.features.mcast_filter);
        let mut io = Collect::default();
        let mut got = Vec::new();
        let deliver = |g: u8, io: &mut Collect, got: &mut Vec<_>| {
            let before = got.len();
            let queued = p.host_to_guest(&mcast_udp(g), &PacketMeta::default());
            settle(&p, io, got);
            assert_eq!(queued.is_some(), got.len() > before);
            got.len() > before
        };
        // Nothing subscribed: multicast is filtered; unicast and broadcast pass.
        assert!(!deliver(0xfb, &mut io, &mut got));
        let mut bcast = mcast_udp(0xfb);
        bcast[..6].copy_from_slice(&[0xff; 6]);
        assert!(p.host_to_guest(&bcast, &PacketMeta::default()).is_some());
        assert!(p
            .host_to_guest(&tcp4(100, 1), &PacketMeta::default())
            .is_some());
        settle(&p, &mut io, &mut got);
        assert_eq!(got.len(), 2);
        // Subscribe to .251 (through the frontend's MCAST_ADD on the TX ring).
        let g251 = [1, 0, 0x5e, 0, 0, 0xfb];
        p.front[1].lock().unwrap().send_mcast(true, g251).unwrap();
        settle(&p, &mut io, &mut got);
        assert!(
            deliver(0xfb, &mut io, &mut got),
            "subscribed group delivered"
        );
        assert!(!deliver(0xfc, &mut io, &mut got), "other group filtered");
        // Unsubscribe (MCAST_DEL): filtered again.
        p.front[0].lock().unwrap().send_mcast(false, g251).unwrap();
        settle(&p, &mut io, &mut got);
        assert!(!deliver(0xfb, &mut io, &mut got));
        assert_eq!(io.mcast, [(true, g251), (false, g251)]);
        for f in &p.front {
            assert_eq!(f.lock().unwrap().stats().tx_errors, 0);
        }
        drop(p);
        // Without `request-multicast-control` every group passes.
        let mut opts = opts;
        opts.front.request_mcast = false;
        let p = Pair::connect(&env, &xs, &opts).unwrap();
        assert!(!p.info.features.mcast_filter);
        assert!(p
            .host_to_guest(&mcast_udp(0xfc), &PacketMeta::default())
            .is_some());
    }

    #[test]
    fn xenbus_drives_handshake_and_reconnect() {
        use xen_tests::net::bus::{machine, BusPair};
        use xen_xenbus::XenbusState::{Closed, Connected};

        let (env, xs) = machine(2, MAC);
        let opts = Options {
            front: FrontendConfig {
                queues: 2,
                ..FrontendConfig::default()
            },
            ..Options::default()
        };
        let mut bus = BusPair::new(env, xs, &opts);
        for round in 0..3u8 {
            let p = bus.take().expect("both ends Connected");
            assert_eq!(bus.connects(), u32::from(round) + 1);
            assert_eq!(p.front.len(), 2);
            let d = xs.daemon();
            for dir in [env.world.fe_dir(), env.world.be_dir()] {
                assert_eq!(d.value(&format!("{dir}/state")), Some(&b"4"[..]), "{dir}");
            }
            drop(d);
            let mut io = Collect::default();
            let mut got = Vec::new();
            for q in 0..2 {
                let pkt = tcp4(3000, round);
                p.front[q]
                    .lock()
                    .unwrap()
                    .send(&pkt, &PacketMeta::default())
                    .unwrap();
                assert!(p.host_to_guest(&pkt, &PacketMeta::default()).is_some());
            }
            settle(&p, &mut io, &mut got);
            assert_eq!((io.packets.len(), got.len()), (2, 2), "round {round}");
            assert_eq!(p.release(), 0, "nothing left mapped");
            assert_eq!(env.world.dom0.mappings(), 0);
            // The backend closes; both drivers run the reconnect on their own.
            bus.backend_close().unwrap();
            bus.settle();
            assert_ne!(
                bus.states(),
                (Closed, Closed),
                "restarted, not stuck in Closed"
            );
            assert_eq!(bus.states().0, Connected);
        }
    }
}
