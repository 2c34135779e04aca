//! `/dev/xen/xenstore` end to end: `xen_xenbus::xsdev` files over the kernel's client, against
//! the simulated xenstored — forwarding with the user's ids, transactions and watches owned
//! by the file and cleaned up on close, refused and malformed messages, bounded output.

#[cfg(test)]
mod tests {
    use xen_tests::xensim::xenstored::{SimTransport, XenstoreSim};
    use xen_xenbus::wire::{decode_error, Header, MsgType};
    use xen_xenbus::xsdev::{Config, Errno, XsDevFile, MSG_MAX};
    use xen_xenbus::{Client, Store, Xs, XsError};

    const DOM0: u16 = 0;

    fn msg(ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [
            ty,
            req_id,
            tx_id,
            u32::try_from(payload.len()).expect("test payload fits u32"),
        ] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn t(ty: MsgType) -> u32 {
        ty.value()
    }

    struct Rig {
        sim: XenstoreSim,
        xs: Xs<SimTransport>,
    }

    impl Rig {
        fn new() -> Rig {
            let sim = XenstoreSim::new();
            let xs = sim.client(DOM0);
            Rig { sim, xs }
        }

        fn client(&mut self) -> &mut Client {
            self.xs.client_mut()
        }

        /// Runs the kernel connection and the daemon until quiet, polling `files`.
        fn settle(&mut self, files: &mut [&mut XsDevFile]) {
            for _ in 0..50 {
                let _ = self.xs.pump();
                let moved = self.sim.settle();
                let _ = self.xs.pump();
                let mut any = false;
                for f in files.iter_mut() {
                    any |= f.poll(self.xs.client_mut());
                }
                if moved == 0 && !any && self.xs.client().output_len() == 0 {
                    break;
                }
            }
        }
    }

    /// Reads every whole message queued in `f`.
    fn read_all(f: &mut XsDevFile) -> Vec<(Header, Vec<u8>)> {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 7]; // odd size: partial reads must work
        while let Ok(n) = f.read(&mut buf) {
            bytes.extend_from_slice(&buf[..n]);
        }
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while rest.len() >= 16 {
            let h = Header::decode(rest[..16].try_into().unwrap()).unwrap();
            let end = 16 + h.payload_len();
            out.push((h, rest[16..end].to_vec()));
            rest = &rest[end..];
        }
        assert!(rest.is_empty(), "only whole messages");
        out
    }

    fn one(f: &mut XsDevFile) -> (Header, Vec<u8>) {
        let mut all = read_all(f);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    fn err_of(h: &Header, p: &[u8]) -> XsError {
        assert_eq!(h.ty, MsgType::Error, "expected XS_ERROR, got {h:?}");
        decode_error(p).unwrap()
    }

    #[test]
    fn write_read_with_user_ids_any_split() {
        let mut rig = Rig::new();
        let mut f = XsDevFile::new(Config::default());
        let w = msg(t(MsgType::Write), 77, 0, b"/tool/x\0hello");
        // Byte by byte.
        for b in &w {
            assert_eq!(f.write(rig.client(), std::slice::from_ref(b)), Ok(1));
        }
        rig.settle(&mut [&mut f]);
        let (h, p) = one(&mut f);
        assert_eq!((h.ty, h.req_id, h.tx_id), (MsgType::Write, 77, 0));
        assert_eq!(p, b"OK\0");
        assert_eq!(rig.sim.daemon().value("/tool/x"), Some(&b"hello"[..]));
        // Two messages in one write; replies in order with their own ids.
        let mut two = msg(t(MsgType::Read), 5, 0, b"/tool/x\0");
        two.extend(msg(t(MsgType::Directory), 0xdead_beef, 0, b"/tool\0"));
        assert_eq!(f.write(rig.client(), &two), Ok(two.len()));
        rig.settle(&mut [&mut f]);
        let all = read_all(&mut f);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].0.ty, all[0].0.req_id), (MsgType::Read, 5));
        assert_eq!(all[0].1, b"hello");
        assert_eq!(
            (all[1].0.ty, all[1].0.req_id),
            (MsgType::Directory, 0xdead_beef)
        );
        assert_eq!(all[1].1, b"x\0");
        // Daemon errors come back as XS_ERROR under the user's ids.
        f.write(rig.client(), &msg(t(MsgType::Read), 9, 0, b"/tool/none\0"))
            .unwrap();
        rig.settle(&mut [&mut f]);
        let (h, p) = one(&mut f);
        assert_eq!(h.req_id, 9);
        assert_eq!(err_of(&h, &p), XsError::NoEnt);
        assert_eq!(f.read(&mut [0u8; 16]), Err(Errno::EAGAIN));
    }

    #[test]
    fn malformed_and_refused_messages() {
        let mut rig = Rig::new();
        let mut f = XsDevFile::new(Config::default());
        // A header announcing more than 4096 bytes: errno, and the file goes on.
        let mut big = msg(t(MsgType::Write), 1, 0, b"");
        big[12..16].copy_from_slice(&4097u32.to_le_bytes());
        assert_eq!(f.write(rig.client(), &big), Err(Errno::EINVAL));
        let cases: Vec<(Vec<u8>, XsError)> = vec![
            // Unknown type.
            (msg(999, 2, 0, b""), XsError::Inval),
            // Reply-only types.
            (
                msg(t(MsgType::WatchEvent), 3, 0, b"/a\0t\0"),
                XsError::Inval,
            ),
            (msg(t(MsgType::Error), 4, 0, b"EINVAL\0"), XsError::Inval),
            // Missing NUL, bad path, trailing data.
            (msg(t(MsgType::Read), 5, 0, b"/tool/x"), XsError::Inval),
            (msg(t(MsgType::Read), 6, 0, b"/tool//x\0"), XsError::Inval),
            (msg(t(MsgType::Mkdir), 7, 0, b"/a\0junk"), XsError::Inval),
            (
                msg(t(MsgType::TransactionEnd), 8, 0, b"T\0"),
                XsError::Inval,
            ),
            // A transaction this file did not start.
            (msg(t(MsgType::Read), 9, 1234, b"/tool\0"), XsError::Inval),
            // Unprivileged device: domain management refused; never the shared reset.
            (
                msg(t(MsgType::Introduce), 10, 0, b"5\x00100\x001\0"),
                XsError::Acces,
            ),
            (msg(t(MsgType::Release), 11, 0, b"5\0"), XsError::Acces),
            (
                msg(t(MsgType::IsDomainIntroduced), 12, 0, b"5\0"),
                XsError::Acces,
            ),
            (msg(t(MsgType::ResetWatches), 13, 0, b""), XsError::Acces),
            (
                msg(t(MsgType::SetTarget), 14, 0, b"5\x000\0"),
                XsError::NoSys,
            ),
            // Unwatch of a watch the file does not have.
            (
                msg(t(MsgType::Unwatch), 15, 0, b"/tool\0tok\0"),
                XsError::NoEnt,
            ),
        ];
        for (m, want) in &cases {
            assert_eq!(f.write(rig.client(), m), Ok(m.len()));
            rig.settle(&mut [&mut f]);
            let (h, p) = one(&mut f);
            assert_eq!(err_of(&h, &p), *want, "{h:?}");
        }
        assert_eq!(f.stats().refused, cases.len() as u64);
        assert_eq!(f.stats().forwarded, 0);
        // Privileged device: IS_DOMAIN_INTRODUCED goes through.
        let mut p = XsDevFile::new(Config {
            privileged: true,
            ..Config::default()
        });
        p.write(
            rig.client(),
            &msg(t(MsgType::IsDomainIntroduced), 1, 0, b"0\0"),
        )
        .unwrap();
        rig.settle(&mut [&mut p]);
        let (h, body) = one(&mut p);
        assert_eq!(
            (h.ty, body.as_slice()),
            (MsgType::IsDomainIntroduced, &b"T\0"[..])
        );
        // Random garbage never panics and never grows output beyond the cap.
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut g = XsDevFile::new(Config::default());
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let mut junk: Vec<u8> = (0..len)
                .map(|i| (seed >> (i % 8)).to_le_bytes()[0])
                .collect();
            if junk.len() >= 16 {
                junk[12..16].copy_from_slice(
                    &(u32::try_from((seed >> 20) % 24).expect("below 24")).to_le_bytes(),
                );
                junk[0..4].copy_from_slice(&((seed >> 40) as u32 % 24).to_le_bytes());
            }
            let _ = g.write(rig.client(), &junk);
            rig.settle(&mut [&mut g]);
            let _ = read_all_lossy(&mut g);
            assert!(g.queued() <= g.config().max_output);
        }
    }

    fn read_all_lossy(f: &mut XsDevFile) -> usize {
        let mut n = 0;
        let mut buf = [0u8; 512];
        while let Ok(k) = f.read(&mut buf) {
            n += k;
        }
        n
    }

    #[test]
    fn transactions_are_per_file_and_aborted_on_close() {
        let mut rig = Rig::new();
        let mut a = XsDevFile::new(Config::default());
        let mut b = XsDevFile::new(Config::default());
        a.write(
            rig.client(),
            &msg(t(MsgType::TransactionStart), 1, 0, b"\0"),
        )
        .unwrap();
        rig.settle(&mut [&mut a, &mut b]);
        let (h, p) = one(&mut a);
        assert_eq!((h.ty, h.req_id), (MsgType::TransactionStart, 1));
        let tx: u32 = std::str::from_utf8(&p[..p.len() - 1])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(a.transactions(), 1);
        assert_eq!(rig.sim.daemon().transaction_count(), 1);
        // Inside the transaction: invisible outside until commit.
        a.write(rig.client(), &msg(t(MsgType::Write), 2, tx, b"/tool/t\0v"))
            .unwrap();
        rig.settle(&mut [&mut a, &mut b]);
        let (h, _) = one(&mut a);
        assert_eq!((h.ty, h.tx_id), (MsgType::Write, tx));
        assert_eq!(rig.sim.daemon().value("/tool/t"), None);
        // Another file cannot use (or end) it.
        b.write(
            rig.client(),
            &msg(t(MsgType::TransactionEnd), 3, tx, b"T\0"),
        )
        .unwrap();
        rig.settle(&mut [&mut a, &mut b]);
        let (h, p) = one(&mut b);
        assert_eq!(err_of(&h, &p), XsError::Inval);
        a.write(
            rig.client(),
            &msg(t(MsgType::TransactionEnd), 4, tx, b"T\0"),
        )
        .unwrap();
        rig.settle(&mut [&mut a, &mut b]);
        let (h, p) = one(&mut a);
        assert_eq!(
            (h.ty, p.as_slice()),
            (MsgType::TransactionEnd, &b"OK\0"[..])
        );
        assert_eq!(rig.sim.daemon().value("/tool/t"), Some(&b"v"[..]));
        assert_eq!(a.transactions(), 0);
        // Ended: the id is no longer the file's.
        a.write(rig.client(), &msg(t(MsgType::Read), 5, tx, b"/tool/t\0"))
            .unwrap();
        rig.settle(&mut [&mut a, &mut b]);
        let (h, p) = one(&mut a);
        assert_eq!(err_of(&h, &p), XsError::Inval);
        // Close with two open transactions (one still starting): all aborted at the daemon.
        a.write(
            rig.client(),
            &msg(t(MsgType::TransactionStart), 6, 0, b"\0"),
        )
        .unwrap();
        rig.settle(&mut [&mut a, &mut b]);
        a.write(
            rig.client(),
            &msg(t(MsgType::TransactionStart), 7, 0, b"\0"),
        )
        .unwrap();
        assert_eq!(a.transactions(), 1);
        let cleanup = a.close(rig.client());
        assert!(cleanup.is_done());
        rig.settle(&mut [&mut b]);
        assert_eq!(rig.sim.daemon().transaction_count(), 0);
        // Transaction cap.
        let mut c = XsDevFile::new(Config {
            max_transactions: 2,
            ..Config::default()
        });
        for i in 0..3 {
            c.write(
                rig.client(),
                &msg(t(MsgType::TransactionStart), i, 0, b"\0"),
            )
            .unwrap();
            rig.settle(&mut [&mut c]);
        }
        let all = read_all(&mut c);
        assert_eq!(all[2].0.ty, MsgType::Error);
        assert_eq!(decode_error(&all[2].1).unwrap(), XsError::NoSpc);
        let _ = c.close(rig.client());
        rig.settle(&mut []);
        assert_eq!(rig.sim.daemon().transaction_count(), 0);
    }

    #[test]
    fn watches_use_the_users_token_and_go_on_close() {
        let mut rig = Rig::new();
        let base = rig.sim.daemon().watch_count(DOM0);
        let mut f = XsDevFile::new(Config::default());
        f.write(
            rig.client(),
            &msg(t(MsgType::Watch), 21, 0, b"/tool/w\0my-token\0"),
        )
        .unwrap();
        rig.settle(&mut [&mut f]);
        let all = read_all(&mut f);
        assert_eq!((all[0].0.ty, all[0].0.req_id), (MsgType::Watch, 21));
        assert_eq!(all[0].1, b"OK\0");
        // The initial event, with the user's token.
        assert_eq!(all[1].0.ty, MsgType::WatchEvent);
        assert_eq!(all[1].1, b"/tool/w\0my-token\0");
        assert_eq!(rig.sim.daemon().watch_count(DOM0), base + 1);
        // A duplicate (path, token) is refused.
        f.write(
            rig.client(),
            &msg(t(MsgType::Watch), 22, 0, b"/tool/w\0my-token\0"),
        )
        .unwrap();
        rig.settle(&mut [&mut f]);
        let (h, p) = one(&mut f);
        assert_eq!(err_of(&h, &p), XsError::Exist);
        rig.xs.write("/tool/w/a", b"1").unwrap();
        rig.settle(&mut [&mut f]);
        let (h, p) = one(&mut f);
        assert_eq!(
            (h.ty, p.as_slice()),
            (MsgType::WatchEvent, &b"/tool/w/a\0my-token\0"[..])
        );
        // Unwatch, then no more events.
        f.write(
            rig.client(),
            &msg(t(MsgType::Unwatch), 23, 0, b"/tool/w\0my-token\0"),
        )
        .unwrap();
        rig.settle(&mut [&mut f]);
        let (h, p) = one(&mut f);
        assert_eq!(
            (h.ty, h.req_id, p.as_slice()),
            (MsgType::Unwatch, 23, &b"OK\0"[..])
        );
        rig.xs.write("/tool/w/b", b"1").unwrap();
        rig.settle(&mut [&mut f]);
        assert!(!f.readable());
        assert_eq!(rig.sim.daemon().watch_count(DOM0), base);
        // Watches left at close are removed at the daemon.
        for (i, tok) in ["a", "b", "c"].iter().enumerate() {
            let m = msg(
                t(MsgType::Watch),
                u32::try_from(i).expect("small index"),
                0,
                format!("/tool/w\0{tok}\0").as_bytes(),
            );
            f.write(rig.client(), &m).unwrap();
        }
        rig.settle(&mut [&mut f]);
        assert_eq!(f.watches(), 3);
        assert_eq!(rig.sim.daemon().watch_count(DOM0), base + 3);
        assert!(f.close(rig.client()).is_done());
        rig.settle(&mut []);
        assert_eq!(rig.sim.daemon().watch_count(DOM0), base);
    }

    #[test]
    fn output_is_bounded_and_replies_are_never_dropped() {
        let mut rig = Rig::new();
        let cfg = Config {
            max_in_flight: 2,
            max_output: 3 * MSG_MAX,
            ..Config::default()
        };
        let mut f = XsDevFile::new(cfg);
        f.write(
            rig.client(),
            &msg(t(MsgType::Watch), 1, 0, b"/tool/flood\0tk\0"),
        )
        .unwrap();
        rig.settle(&mut [&mut f]);
        // The user never reads; another writer floods the watched subtree with long paths.
        let value = vec![b'x'; 10];
        for i in 0..400 {
            let p = format!("/tool/flood/{}-{i}", "n".repeat(200));
            rig.xs.write(&p, &value).unwrap();
            rig.settle(&mut [&mut f]);
            assert!(f.queued() <= f.config().max_output);
        }
        let s = f.stats();
        assert!(s.events_dropped > 0, "{s:?}");
        // Requests still get replies: the reservation keeps room for them.
        let r = msg(t(MsgType::Read), 99, 0, b"/tool/flood\0");
        assert_eq!(f.write(rig.client(), &r), Ok(r.len()));
        rig.settle(&mut [&mut f]);
        let all = read_all(&mut f);
        assert!(all
            .iter()
            .any(|(h, _)| h.ty == MsgType::Read && h.req_id == 99));
        // After draining, the next poll queues one rescan event naming the watched path.
        rig.xs.write("/tool/flood/last", b"1").unwrap();
        rig.settle(&mut [&mut f]);
        let all = read_all(&mut f);
        assert!(all
            .iter()
            .any(|(h, p)| h.ty == MsgType::WatchEvent && p == b"/tool/flood\0tk\0"));
        assert!(f.stats().rescans >= 1);
        // In-flight cap: without reading, writes stop at a message boundary, then EAGAIN.
        let m = msg(t(MsgType::Read), 1, 0, b"/tool\0");
        let mut stream = Vec::new();
        for _ in 0..4 {
            stream.extend_from_slice(&m);
        }
        let n = f.write(rig.client(), &stream).unwrap();
        assert_eq!(n, 2 * m.len(), "two reservations");
        assert_eq!(f.write(rig.client(), &stream[n..]), Err(Errno::EAGAIN));
        rig.settle(&mut [&mut f]);
        // Still reserved until read: reading makes room.
        assert_eq!(read_all(&mut f).len(), 2);
        assert_eq!(f.write(rig.client(), &stream[n..]), Ok(2 * m.len()));
    }
}
