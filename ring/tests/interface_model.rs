//! Property tests of the byte-stream interface rings: partial reads and writes against a byte
//! queue model, index wrap-around, and hostile indices.

#[cfg(test)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "byte patterns and positions mod 2^32"
)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;
    use xen_ring::interface::{StreamLayout, CONSOLE_IN, CONSOLE_OUT, XENSTORE_REQ, XENSTORE_RSP};
    use xen_ring::{Fault, Interface, StreamReader, StreamWriter};
    use xen_shmem::{Page, SharedMem};

    fn cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// The index value `start + abs + jitter - back` (mod 2^32).
    fn near(start: u32, abs: u64, jitter: u32, back: u32) -> u32 {
        start
            .wrapping_add(abs as u32)
            .wrapping_add(jitter)
            .wrapping_sub(back)
    }

    fn layout() -> impl Strategy<Value = StreamLayout> {
        prop_oneof![
            Just(XENSTORE_REQ),
            Just(XENSTORE_RSP),
            Just(CONSOLE_IN),
            Just(CONSOLE_OUT),
            // A tiny ring with unaligned data, to hit partial words and wrap often.
            Just(StreamLayout {
                data: 3,
                size: 16,
                cons: 20,
                prod: 24
            }),
        ]
    }

    fn start_index() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0u32), (u32::MAX - 3000)..=u32::MAX, any::<u32>()]
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Write(u16),
        Read(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u16..1500).prop_map(Op::Write),
            (0u16..1500).prop_map(Op::Read)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(256)))]

        #[test]
        fn stream_matches_queue_model(
            layout in layout(),
            start in start_index(),
            ops in prop::collection::vec(op(), 1..100),
        ) {
            let page = Page::new();
            let mem = SharedMem::from_pages(std::slice::from_ref(&page));
            mem.store_relaxed_u32(layout.prod, start).unwrap();
            mem.store_relaxed_u32(layout.cons, start).unwrap();
            let mut w = StreamWriter::attach(mem, layout).unwrap();
            let mut r = StreamReader::attach(mem, layout).unwrap();
            let size = layout.size as usize;
            let mut model: VecDeque<u8> = VecDeque::new();
            let mut next = 0u8;
            for op in ops {
                match op {
                    Op::Write(n) => {
                        let data: Vec<u8> =
                            (0..n).map(|i| next.wrapping_add(i as u8)).collect();
                        let free = size - model.len();
                        prop_assert_eq!(w.space().unwrap() as usize, free);
                        let k = w.write(&data).unwrap();
                        prop_assert_eq!(k, free.min(data.len()));
                        model.extend(&data[..k]);
                        next = next.wrapping_add(k as u8);
                    }
                    Op::Read(n) => {
                        prop_assert_eq!(r.available().unwrap() as usize, model.len());
                        let mut buf = vec![0u8; usize::from(n)];
                        let k = r.read(&mut buf).unwrap();
                        prop_assert_eq!(k, model.len().min(buf.len()));
                        let want: Vec<u8> = model.drain(..k).collect();
                        prop_assert_eq!(&buf[..k], &want[..]);
                    }
                }
                prop_assert_eq!(w.prod().wrapping_sub(r.cons()) as usize, model.len());
            }
        }

        /// The peer writes arbitrary indices. Each end must accept exactly the values a
        /// correct peer could have written (checked with 64-bit absolute positions), never
        /// transfer more than the buffer, and stick in its first fault.
        #[test]
        fn hostile_stream_indices(
            layout in layout(),
            start in start_index(),
            writer_side in any::<bool>(),
            steps in prop::collection::vec(
                (any::<u8>(), any::<u32>(), prop_oneof![0u16..64, 0u16..3000]),
                1..40,
            ),
        ) {
            let page = Page::new();
            let mem = SharedMem::from_pages(std::slice::from_ref(&page));
            mem.store_relaxed_u32(layout.prod, start).unwrap();
            mem.store_relaxed_u32(layout.cons, start).unwrap();
            let size = u64::from(layout.size);
            let mut fault: Option<Fault> = None;
            if writer_side {
                // We write; the hostile peer owns `cons`.
                let mut w = StreamWriter::attach(mem, layout).unwrap();
                let (mut prod_abs, mut cons_abs) = (0u64, 0u64);
                for (mode, v, len) in steps {
                    // Anything, or near the lower (last cons) or upper (our prod) bound.
                    let v = match mode % 8 {
                        0 => v,
                        1..=4 => near(start, cons_abs, v % 64, 16),
                        _ => near(start, prod_abs, v % 8, 4),
                    };
                    mem.store_release_u32(layout.cons, v).unwrap();
                    let res = w.write(&vec![7u8; usize::from(len)]);
                    if let Some(f) = fault {
                        prop_assert_eq!(res, Err(f));
                        continue;
                    }
                    let p = cons_abs + u64::from(v.wrapping_sub(start.wrapping_add(cons_abs as u32)));
                    let legal = p <= prod_abs;
                    match res {
                        Ok(k) => {
                            prop_assert!(legal, "accepted cons {v:#x}");
                            cons_abs = p;
                            prop_assert_eq!(k as u64, (size - (prod_abs - cons_abs)).min(u64::from(len)));
                            prod_abs += k as u64;
                        }
                        Err(f) => {
                            prop_assert!(!legal, "refused legal cons {v:#x}: {f}");
                            fault = Some(f);
                            prop_assert_eq!(w.space(), Err(f));
                        }
                    }
                    prop_assert!(prod_abs - cons_abs <= size);
                }
            } else {
                // We read; the hostile peer owns `prod`.
                let mut r = StreamReader::attach(mem, layout).unwrap();
                let (mut prod_abs, mut cons_abs) = (0u64, 0u64);
                for (mode, v, len) in steps {
                    // Anything, or near the lower (last prod) or upper (cons + size) bound.
                    let v = match mode % 8 {
                        0 => v,
                        1..=4 => near(start, prod_abs, v % 64, 16),
                        _ => near(start, cons_abs + size, v % 8, 4),
                    };
                    mem.store_release_u32(layout.prod, v).unwrap();
                    let mut buf = vec![0u8; usize::from(len)];
                    let res = r.read(&mut buf);
                    if let Some(f) = fault {
                        prop_assert_eq!(res, Err(f));
                        continue;
                    }
                    let p = prod_abs + u64::from(v.wrapping_sub(start.wrapping_add(prod_abs as u32)));
                    let legal = p <= cons_abs + size;
                    match res {
                        Ok(k) => {
                            prop_assert!(legal, "accepted prod {v:#x}");
                            prod_abs = p;
                            prop_assert_eq!(k as u64, (prod_abs - cons_abs).min(u64::from(len)));
                            cons_abs += k as u64;
                        }
                        Err(f) => {
                            prop_assert!(!legal, "refused legal prod {v:#x}: {f}");
                            fault = Some(f);
                            prop_assert_eq!(r.available(), Err(f));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn console_mirror_roundtrip() {
        let page = Page::new();
        let mem = SharedMem::from_pages(std::slice::from_ref(&page));
        let mut guest = Interface::console_frontend(mem).unwrap();
        let mut backend = Interface::console_backend(mem).unwrap();
        assert_eq!(guest.tx.write(b"login: ").unwrap(), 7);
        let mut buf = [0u8; 64];
        assert_eq!(backend.rx.read(&mut buf).unwrap(), 7);
        assert_eq!(&buf[..7], b"login: ");
        assert_eq!(backend.tx.write(b"root\n").unwrap(), 5);
        assert_eq!(guest.rx.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"root\n");
        // Bytes land where console.h says: out[] at 1024, in[] at 0.
        assert_eq!(mem.read::<[u8; 7]>(1024).unwrap(), *b"login: ");
        assert_eq!(mem.read::<[u8; 5]>(0).unwrap(), *b"root\n");
        assert_eq!(mem.load_relaxed_u32(CONSOLE_OUT.prod).unwrap(), 7);
        assert_eq!(mem.load_relaxed_u32(CONSOLE_IN.cons).unwrap(), 5);
    }
}
