//! Two threads drive the two ends of a ring over one shared region, as two domains would.
//!
//! Each side sleeps only after the protocol's final check said "no work" and is woken only by
//! the peer's `Notify` (an atomic flag plus unpark, standing in for an event channel). A lost
//! wake-up therefore shows up as a side sleeping past a generous deadline, which fails the
//! test rather than being papered over by polling. All shared-memory accesses are atomics, so
//! the test is free of data races by construction.

#[cfg(test)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "test counts are small; host is 64-bit"
)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;
    use std::thread::{self, Thread};
    use std::time::{Duration, Instant};

    use xen_ring::{BackRing, FrontRing, Interface, Notify};
    use xen_shmem::{Page, Pod, SharedMem};

    /// Work per test, scaled down under Miri (which checks these runs for data races and
    /// mixed-size atomic accesses).
    fn scaled(n: u64) -> u64 {
        if cfg!(miri) {
            (n / 500).max(64)
        } else {
            n
        }
    }

    /// Longest a side may sleep with work pending before we call it a lost wake-up.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// An event channel stand-in: a pending flag and the thread to unpark.
    #[derive(Default)]
    struct Event {
        pending: AtomicBool,
        waiter: OnceLock<Thread>,
    }

    impl Event {
        fn register(&self) {
            let _ = self.waiter.set(thread::current());
        }

        fn notify(&self) {
            self.pending.store(true, Ordering::Release);
            if let Some(t) = self.waiter.get() {
                t.unpark();
            }
        }

        fn notify_if(&self, n: Notify) {
            if n.is_required() {
                self.notify();
            }
        }

        /// Discards notifications already delivered. Called before each final check, so a
        /// later `wait` can only be ended by a notification sent after it: a stale pending flag
        /// cannot hide a lost wake-up. (`Acquire` pairs with `notify`'s `Release`, so anything
        /// a discarded notification announced is visible to the check that follows.)
        fn clear(&self) {
            self.pending.swap(false, Ordering::AcqRel);
        }

        /// Sleeps until notified. Only the flag ends the wait (the periodic timeout merely
        /// covers the registration race), so a missing notification fails the test.
        fn wait(&self, what: &str) {
            let start = Instant::now();
            while !self.pending.swap(false, Ordering::Acquire) {
                assert!(start.elapsed() < DEADLINE, "lost wake-up: {what}");
                thread::park_timeout(Duration::from_millis(50));
            }
        }
    }

    /// Deterministic payload for request `id`.
    fn payload<const W: usize>(id: u64) -> [u64; W] {
        std::array::from_fn(|i| id.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(i as u32))
    }

    /// The backend's answer to a request: its id and a digest of its payload.
    fn answer(req: &[u64]) -> [u64; 2] {
        [
            req[0],
            req[1..].iter().fold(0u64, |a, w| a.rotate_left(5) ^ w),
        ]
    }

    /// Runs `n` requests through a ring of `pages` pages starting at index `start`, with at
    /// most `depth` requests in flight (depth 1 is a synchronous ping-pong, where every wait
    /// depends on exactly one notification).
    /// Requests are `[u64; W]` (`[0]` = id); responses `[u64; 2]` (id, digest). The backend
    /// answers each batch in reverse order, so the frontend must match responses by id.
    fn run<const W: usize>(pages: usize, start: u32, n: u64, budget: u32, depth: u32)
    where
        [u64; W]: Pod,
    {
        let store: Vec<Page> = (0..pages).map(|_| Page::new()).collect();
        let mem = SharedMem::from_pages(&store);
        // Only the frontend initialises; it does so before the backend attaches.
        let mut front = FrontRing::<[u64; W], [u64; 2]>::init_at(mem, start).unwrap();
        let size = front.size();
        let front_ev = Event::default();
        let back_ev = Event::default();

        thread::scope(|s| {
            s.spawn(|| {
                back_ev.register();
                let mut back = BackRing::<[u64; W], [u64; 2]>::attach(mem).unwrap();
                let mut batch: Vec<[u64; W]> = Vec::with_capacity(size as usize);
                let mut answered = 0u64;
                while answered < n {
                    loop {
                        back_ev.clear();
                        batch.clear();
                        back.consume_requests(budget, |r| batch.push(r)).unwrap();
                        for req in batch.iter().rev() {
                            back.push_response(&answer(req)).unwrap();
                            answered += 1;
                        }
                        front_ev.notify_if(back.push_responses_and_check_notify().unwrap());
                        if !back.final_check_for_requests().unwrap() {
                            break;
                        }
                    }
                    if answered < n {
                        back_ev.wait("backend waiting for requests");
                    }
                }
                assert_eq!(back.unanswered(), 0);
            });

            front_ev.register();
            let mut done = vec![false; n as usize];
            let (mut sent, mut received) = (0u64, 0u64);
            let mut batch_len = 1u32;
            while received < n {
                // Produce a batch (varying sizes), then publish once.
                let mut k = 0;
                while sent < n && k < batch_len && front.outstanding() < depth && !front.is_full() {
                    let mut req = payload::<W>(sent);
                    req[0] = sent;
                    front.push_request(&req).unwrap();
                    sent += 1;
                    k += 1;
                }
                batch_len = batch_len % 37 + 1;
                back_ev.notify_if(front.push_requests_and_check_notify().unwrap());
                // Consume everything available, then re-arm and re-check.
                loop {
                    front_ev.clear();
                    while let Some(rsp) = front.pop_response().unwrap() {
                        let id = rsp[0];
                        assert!(id < sent, "response for a request never sent: {id}");
                        let slot = &mut done[id as usize];
                        assert!(!*slot, "duplicate response {id}");
                        *slot = true;
                        let mut req = payload::<W>(id);
                        req[0] = id;
                        assert_eq!(rsp, answer(&req), "response {id} corrupted");
                        received += 1;
                    }
                    if !front.final_check_for_responses().unwrap() {
                        break;
                    }
                }
                // Sleep only when we cannot make progress on our own.
                if received < n && (sent == n || front.is_full() || front.outstanding() >= depth) {
                    front_ev.wait("frontend waiting for responses");
                }
            }
            assert!(done.iter().all(|d| *d));
            assert_eq!(front.outstanding(), 0);
        });
    }

    #[test]
    fn single_page_small_entries() {
        // 24-byte entries: 128 slots.
        run::<3>(1, 0, scaled(200_000), 16, u32::MAX);
    }

    #[test]
    fn single_page_wraps_at_u32_max() {
        run::<3>(1, u32::MAX - 1000, scaled(50_000), u32::MAX, u32::MAX);
    }

    #[test]
    fn multi_page_blkif_sized() {
        // 112-byte entries like blkif: 32 slots per page; 4 pages -> 128.
        run::<14>(4, u32::MAX - 77, scaled(50_000), 8, u32::MAX);
    }

    #[test]
    fn two_page_tiny_budget() {
        run::<14>(2, 12345, scaled(20_000), 1, u32::MAX);
    }

    #[test]
    fn ping_pong_depth_one() {
        run::<3>(1, u32::MAX - 5, scaled(20_000), u32::MAX, 1);
    }

    #[test]
    fn shallow_queue_depth_three() {
        run::<14>(1, 0, scaled(20_000), 2, 3);
    }

    /// xenstore-style echo over the interface page: the client streams `n` bytes of requests,
    /// the server echoes every byte back on the reply ring; partial writes and reads happen
    /// constantly because both rings are only 1 KiB.
    #[test]
    fn interface_ring_echo() {
        let page = Page::new();
        let mem = SharedMem::from_pages(std::slice::from_ref(&page));
        let n = usize::try_from(scaled(2_000_000)).unwrap();
        let pattern = |k: usize| (k.wrapping_mul(31) ^ (k >> 10)).to_le_bytes()[0];
        let client_ev = Event::default();
        let server_ev = Event::default();
        let mut client = Interface::xenstore_client(mem).unwrap();
        let mut server = Interface::xenstore_server(mem).unwrap();

        thread::scope(|s| {
            s.spawn(|| {
                server_ev.register();
                let mut buf = [0u8; 700];
                // Bytes read from req but not yet echoed into rsp.
                let (mut held, mut echoed) = (0usize, 0usize);
                while echoed < n {
                    server_ev.clear();
                    let mut progress = false;
                    if held == 0 {
                        held = server.rx.read(&mut buf).unwrap();
                        if held > 0 {
                            progress = true;
                            client_ev.notify(); // space freed in req
                        }
                    }
                    if held > 0 {
                        let w = server.tx.write(&buf[..held]).unwrap();
                        if w > 0 {
                            buf.copy_within(w..held, 0);
                            held -= w;
                            echoed += w;
                            progress = true;
                            client_ev.notify(); // data in rsp
                        }
                    }
                    if !progress {
                        server_ev.wait("server waiting");
                    }
                }
            });

            client_ev.register();
            let (mut sent, mut got) = (0usize, 0usize);
            let mut out = [0u8; 1500];
            let mut inb = [0u8; 333];
            while got < n {
                client_ev.clear();
                let mut progress = false;
                if sent < n {
                    let len = out.len().min(n - sent);
                    for (i, b) in out[..len].iter_mut().enumerate() {
                        *b = pattern(sent + i);
                    }
                    let w = client.tx.write(&out[..len]).unwrap();
                    if w > 0 {
                        sent += w;
                        progress = true;
                        server_ev.notify();
                    }
                }
                let r = client.rx.read(&mut inb).unwrap();
                if r > 0 {
                    for (i, b) in inb[..r].iter().enumerate() {
                        assert_eq!(*b, pattern(got + i), "echo byte {} corrupted", got + i);
                    }
                    got += r;
                    progress = true;
                    server_ev.notify();
                }
                if !progress {
                    client_ev.wait("client waiting");
                }
            }
            assert_eq!(sent, n);
        });
    }
}
