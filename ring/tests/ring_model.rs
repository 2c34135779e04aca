//! Property tests of `FrontRing`/`BackRing` against a simple queue model: random interleavings
//! of both ends, index wrap-around at 2^32, multi-page and tiny rings, and hostile indices.

#[cfg(test)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "absolute positions reduced mod 2^32"
)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicU32;

    use proptest::prelude::*;
    use xen_ring::sring::{entry_size, ring_entries, REQ_PROD, RSP_PROD};
    use xen_ring::{BackRing, Fault, FrontRing, PushError};
    use xen_shmem::{Page, Pod, SharedMem};

    /// `PROPTEST_CASES` overrides the default number of cases (e.g. for a long soak).
    fn cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// A message that encodes a sequence number (so order and integrity can be checked).
    trait Msg: Pod + PartialEq + std::fmt::Debug {
        fn make(seq: u64) -> Self;
    }
    impl Msg for u64 {
        fn make(seq: u64) -> Self {
            seq ^ 0x5a5a_0000_0000_0000
        }
    }
    impl Msg for [u32; 3] {
        fn make(seq: u64) -> Self {
            let b = seq.to_le_bytes();
            [
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                0xfeed,
            ]
        }
    }
    impl Msg for [u8; 5] {
        fn make(seq: u64) -> Self {
            let b = seq.to_le_bytes();
            [b[0], b[1], b[2], b[3], 0xa5]
        }
    }
    impl Msg for [u8; 3] {
        fn make(seq: u64) -> Self {
            let b = seq.to_le_bytes();
            [b[0], b[1], 0x3c]
        }
    }
    impl Msg for [u64; 14] {
        fn make(seq: u64) -> Self {
            core::array::from_fn(|i| seq.wrapping_mul(i as u64 + 1))
        }
    }

    /// Backing storage: whole pages, or a tiny word array for very small rings.
    enum Store {
        Pages(Vec<Page>),
        Words(Vec<AtomicU32>),
    }
    impl Store {
        fn new(region: Region) -> Self {
            match region {
                Region::Pages(n) => Store::Pages((0..n).map(|_| Page::new()).collect()),
                Region::Bytes(n) => {
                    Store::Words((0..n.div_ceil(4)).map(|_| AtomicU32::new(0)).collect())
                }
            }
        }
        fn mem(&self) -> SharedMem<'_> {
            match self {
                Store::Pages(p) => SharedMem::from_pages(p),
                Store::Words(w) => SharedMem::from_words(w),
            }
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Region {
        Pages(usize),
        Bytes(usize),
    }

    fn region() -> impl Strategy<Value = Region> {
        prop_oneof![
            (1usize..=4).prop_map(Region::Pages),
            (68usize..600).prop_map(Region::Bytes),
        ]
    }

    fn start_index() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0u32), (u32::MAX - 600)..=u32::MAX, any::<u32>()]
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        FrontPush(u8),
        FrontPublish,
        FrontPop(u8),
        FrontConsume(u8),
        FrontFinal,
        BackPop(u8),
        BackConsume(u8),
        BackRespond(u8),
        BackPublish,
        BackFinal,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..40).prop_map(Op::FrontPush),
            Just(Op::FrontPublish),
            (1u8..40).prop_map(Op::FrontPop),
            (0u8..40).prop_map(Op::FrontConsume),
            Just(Op::FrontFinal),
            (1u8..40).prop_map(Op::BackPop),
            (0u8..40).prop_map(Op::BackConsume),
            (1u8..40).prop_map(Op::BackRespond),
            Just(Op::BackPublish),
            Just(Op::BackFinal),
        ]
    }

    /// Runs `ops` on both ends and checks them against a queue model.
    fn run_model<Req: Msg, Rsp: Msg>(
        region: Region,
        start: u32,
        ops: &[Op],
    ) -> Result<(), TestCaseError> {
        let store = Store::new(region);
        let mem = store.mem();
        let size = ring_entries(mem.len(), entry_size::<Req, Rsp>());
        let Ok(mut front) = FrontRing::<Req, Rsp>::init_at(mem, start) else {
            prop_assert_eq!(size, 0);
            return Ok(());
        };
        prop_assert_eq!(front.size(), size);
        let mut back = BackRing::<Req, Rsp>::attach(mem).unwrap();

        // Model: sequence numbers in each stage of their life.
        let mut next_req = 0u64;
        let mut unpublished: VecDeque<u64> = VecDeque::new();
        let mut published: VecDeque<u64> = VecDeque::new();
        let mut unanswered: VecDeque<u64> = VecDeque::new();
        let mut rsp_unpublished: VecDeque<u64> = VecDeque::new();
        let mut rsp_published: VecDeque<u64> = VecDeque::new();
        // "Asleep" = the side's last final check reported no work: the peer must then notify.
        let mut back_asleep = false;
        let mut front_asleep = false;

        for &op in ops {
            match op {
                Op::FrontPush(k) => {
                    for _ in 0..k {
                        let outstanding = unpublished.len()
                            + published.len()
                            + unanswered.len()
                            + rsp_unpublished.len()
                            + rsp_published.len();
                        let r = front.push_request(&Req::make(next_req));
                        if outstanding == size as usize {
                            prop_assert_eq!(r, Err(PushError::Full));
                            break;
                        }
                        prop_assert_eq!(r, Ok(()));
                        unpublished.push_back(next_req);
                        next_req += 1;
                    }
                }
                Op::FrontPublish => {
                    let had_new = !unpublished.is_empty();
                    published.extend(unpublished.drain(..));
                    let n = front.push_requests_and_check_notify().unwrap();
                    if back_asleep && had_new {
                        prop_assert!(n.is_required(), "lost wakeup of the backend");
                    }
                    if n.is_required() {
                        back_asleep = false;
                    }
                }
                Op::FrontPop(k) => {
                    front_asleep = false;
                    for _ in 0..k {
                        let got = front.pop_response().unwrap();
                        prop_assert_eq!(got, rsp_published.pop_front().map(Rsp::make));
                        if got.is_none() {
                            break;
                        }
                    }
                }
                Op::FrontConsume(k) => {
                    front_asleep = false;
                    let mut got = Vec::new();
                    let n = front
                        .consume_responses(u32::from(k), |r| got.push(r))
                        .unwrap();
                    prop_assert_eq!(n as usize, got.len());
                    prop_assert_eq!(got.len(), rsp_published.len().min(usize::from(k)));
                    for r in got {
                        prop_assert_eq!(Some(r), rsp_published.pop_front().map(Rsp::make));
                    }
                }
                Op::FrontFinal => {
                    let more = front.final_check_for_responses().unwrap();
                    prop_assert_eq!(more, !rsp_published.is_empty());
                    front_asleep = !more;
                }
                Op::BackPop(k) => {
                    back_asleep = false;
                    for _ in 0..k {
                        let got = back.pop_request().unwrap();
                        let want = published.pop_front();
                        prop_assert_eq!(got, want.map(Req::make));
                        match want {
                            Some(s) => unanswered.push_back(s),
                            None => break,
                        }
                    }
                }
                Op::BackConsume(k) => {
                    back_asleep = false;
                    let mut got = Vec::new();
                    let n = back
                        .consume_requests(u32::from(k), |r| got.push(r))
                        .unwrap();
                    prop_assert_eq!(n as usize, got.len());
                    prop_assert_eq!(got.len(), published.len().min(usize::from(k)));
                    for r in got {
                        let s = published.pop_front().unwrap();
                        prop_assert_eq!(r, Req::make(s));
                        unanswered.push_back(s);
                    }
                }
                Op::BackRespond(k) => {
                    back_asleep = false;
                    for _ in 0..k {
                        match unanswered.pop_front() {
                            Some(s) => {
                                prop_assert_eq!(back.push_response(&Rsp::make(s)), Ok(()));
                                rsp_unpublished.push_back(s);
                            }
                            None => {
                                prop_assert_eq!(
                                    back.push_response(&Rsp::make(0)),
                                    Err(PushError::Full)
                                );
                                break;
                            }
                        }
                    }
                }
                Op::BackPublish => {
                    let had_new = !rsp_unpublished.is_empty();
                    rsp_published.extend(rsp_unpublished.drain(..));
                    let n = back.push_responses_and_check_notify().unwrap();
                    if front_asleep && had_new {
                        prop_assert!(n.is_required(), "lost wakeup of the frontend");
                    }
                    if n.is_required() {
                        front_asleep = false;
                    }
                }
                Op::BackFinal => {
                    let more = back.final_check_for_requests().unwrap();
                    prop_assert_eq!(more, !published.is_empty());
                    back_asleep = !more;
                }
            }
            // Private counters agree with the model.
            let in_flight =
                published.len() + unanswered.len() + rsp_unpublished.len() + rsp_published.len();
            prop_assert_eq!(front.outstanding() as usize, unpublished.len() + in_flight);
            prop_assert_eq!(front.unpublished() as usize, unpublished.len());
            prop_assert_eq!(
                front.free_requests() as usize,
                size as usize - unpublished.len() - in_flight
            );
            prop_assert_eq!(back.unanswered() as usize, unanswered.len());
            prop_assert_eq!(back.unpublished() as usize, rsp_unpublished.len());
            prop_assert!(front.fault().is_none() && back.fault().is_none());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(64)))]

        #[test]
        fn model_u64(region in region(), start in start_index(), ops in prop::collection::vec(op(), 1..300)) {
            run_model::<u64, u64>(region, start, &ops)?;
        }

        #[test]
        fn model_netif_like(region in region(), start in start_index(), ops in prop::collection::vec(op(), 1..300)) {
            run_model::<[u32; 3], u64>(region, start, &ops)?;
        }

        #[test]
        fn model_unaligned_entries(region in region(), start in start_index(), ops in prop::collection::vec(op(), 1..300)) {
            run_model::<[u8; 5], [u8; 3]>(region, start, &ops)?;
        }

        #[test]
        fn model_blkif_like(region in region(), start in start_index(), ops in prop::collection::vec(op(), 1..300)) {
            run_model::<[u64; 14], [u64; 2]>(region, start, &ops)?;
        }
    }

    impl Msg for [u64; 2] {
        fn make(seq: u64) -> Self {
            [seq, !seq]
        }
    }

    /// A consumption budget: often small (partial consumption leaves a validated window
    /// behind, which a regressing index must not be allowed to shrink), sometimes unlimited.
    fn budget_of(b: u8) -> u32 {
        if b % 4 == 0 {
            u32::MAX
        } else {
            u32::from(b % 5)
        }
    }

    /// The index value `start + abs + jitter - back` (mod 2^32).
    fn near(start: u32, abs: u64, jitter: u32, back: u32) -> u32 {
        start
            .wrapping_add(abs as u32)
            .wrapping_add(jitter)
            .wrapping_sub(back)
    }

    /// Hostile frontend: after some legitimate traffic, the frontend writes arbitrary req_prod
    /// values. The backend must accept exactly the values a correct frontend could have
    /// written (checked with 64-bit absolute positions, an independent formulation), never
    /// hold more than `size` unanswered requests, and stick in its first fault.
    fn run_hostile_front(
        pages: usize,
        start: u32,
        legit: u8,
        answer: u8,
        values: &[(u8, u32, u8)],
    ) -> Result<(), TestCaseError> {
        let store = Store::new(Region::Pages(pages));
        let mem = store.mem();
        let mut front = FrontRing::<u64, u64>::init_at(mem, start).unwrap();
        let mut back = BackRing::<u64, u64>::attach(mem).unwrap();
        let size = u64::from(back.size());
        for i in 0..u64::from(legit).min(size) {
            front.push_request(&i).unwrap();
        }
        let _ = front.push_requests_and_check_notify().unwrap();
        // Absolute positions, starting at 0 for `start`.
        let mut cons_abs = u64::from(back.consume_requests(u32::MAX, |_| {}).unwrap());
        let mut seen_abs = cons_abs;
        let mut answered_abs = 0u64;
        for _ in 0..u64::from(answer).min(cons_abs) {
            back.push_response(&0).unwrap();
            answered_abs += 1;
        }
        let mut fault: Option<Fault> = None;
        for &(mode, v, budget) in values {
            // Anything at all, or a value near one of the bounds of the legal window.
            let v = match mode % 8 {
                0 => v,
                1..=4 => near(start, seen_abs, v % 64, 32),
                _ => near(start, answered_abs + size, v % 8, 4),
            };
            mem.store_release_u32(REQ_PROD, v).unwrap();
            let budget = budget_of(budget);
            let r = back.consume_requests(budget, |_| {});
            if let Some(f) = fault {
                prop_assert_eq!(r, Err(f));
                continue;
            }
            // The unique absolute position congruent to v in [seen_abs, seen_abs + 2^32).
            let delta = v.wrapping_sub(start.wrapping_add(seen_abs as u32));
            let p = seen_abs + u64::from(delta);
            let legal = p <= answered_abs + size;
            match r {
                Ok(n) => {
                    prop_assert!(legal, "accepted req_prod {v:#x}");
                    prop_assert_eq!(u64::from(n), (p - cons_abs).min(u64::from(budget)));
                    cons_abs += u64::from(n);
                    seen_abs = p;
                }
                Err(f) => {
                    prop_assert!(!legal, "refused legal {v:#x}: {f}");
                    fault = Some(f);
                    prop_assert_eq!(back.fault(), Some(f));
                    prop_assert_eq!(back.pop_request(), Err(f));
                    prop_assert_eq!(back.push_response(&0), Err(PushError::Fault(f)));
                    prop_assert_eq!(back.final_check_for_requests(), Err(f));
                }
            }
            prop_assert!(u64::from(back.unanswered()) <= size);
            prop_assert_eq!(u64::from(back.unanswered()), cons_abs - answered_abs);
            // Answer a few to make room, so overruns relative to new positions are tested.
            if fault.is_none() && back.unanswered() > 0 {
                back.push_response(&0).unwrap();
                answered_abs += 1;
            }
        }
        Ok(())
    }

    /// Hostile backend: arbitrary rsp_prod values. The frontend must accept exactly the values
    /// within the published, unanswered requests.
    fn run_hostile_back(
        pages: usize,
        start: u32,
        legit: u8,
        values: &[(u8, u32, u8)],
    ) -> Result<(), TestCaseError> {
        let store = Store::new(Region::Pages(pages));
        let mem = store.mem();
        let mut front = FrontRing::<u64, u64>::init_at(mem, start).unwrap();
        let size = u64::from(front.size());
        let mut published_abs = 0u64;
        let mut seen_abs = 0u64;
        let mut cons_abs = 0u64;
        let mut fault: Option<Fault> = None;
        for (i, &(mode, v, budget)) in values.iter().enumerate() {
            if fault.is_none() {
                // Keep some requests outstanding.
                for _ in 0..(legit % 8) {
                    if front.push_request(&(i as u64)).is_ok() {
                        published_abs += 1;
                    }
                }
                let _ = front.push_requests_and_check_notify().unwrap();
            }
            let v = match mode % 8 {
                0 => v,
                1..=4 => near(start, seen_abs, v % 64, 32),
                _ => near(start, published_abs, v % 8, 4),
            };
            mem.store_release_u32(RSP_PROD, v).unwrap();
            let budget = budget_of(budget);
            let r = front.consume_responses(budget, |_| {});
            if let Some(f) = fault {
                prop_assert_eq!(r, Err(f));
                continue;
            }
            let delta = v.wrapping_sub(start.wrapping_add(seen_abs as u32));
            let p = seen_abs + u64::from(delta);
            let legal = p <= published_abs;
            match r {
                Ok(n) => {
                    prop_assert!(legal, "accepted rsp_prod {v:#x}");
                    prop_assert_eq!(u64::from(n), (p - cons_abs).min(u64::from(budget)));
                    cons_abs += u64::from(n);
                    seen_abs = p;
                }
                Err(f) => {
                    prop_assert!(!legal, "refused legal {v:#x}: {f}");
                    fault = Some(f);
                    prop_assert_eq!(front.pop_response(), Err(f));
                    prop_assert_eq!(front.push_request(&0), Err(PushError::Fault(f)));
                }
            }
            prop_assert!(u64::from(front.outstanding()) <= size);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(512)))]

        #[test]
        fn hostile_frontend(pages in 1usize..=2, start in start_index(), legit in any::<u8>(),
                            answer in any::<u8>(),
                            values in prop::collection::vec((any::<u8>(), any::<u32>(), any::<u8>()), 1..40)) {
            run_hostile_front(pages, start, legit, answer, &values)?;
        }

        #[test]
        fn hostile_backend(pages in 1usize..=2, start in start_index(), legit in any::<u8>(),
                           values in prop::collection::vec((any::<u8>(), any::<u32>(), any::<u8>()), 1..40)) {
            run_hostile_back(pages, start, legit, &values)?;
        }
    }

    #[test]
    fn wraps_at_u32_max_many_times() {
        // Drive a small ring through the 2^32 wrap with full-ring batches.
        let store = Store::new(Region::Bytes(64 + 8 * 8));
        let mem = store.mem();
        let mut front = FrontRing::<u64, u64>::init_at(mem, u32::MAX - 20).unwrap();
        let mut back = BackRing::<u64, u64>::attach(mem).unwrap();
        assert_eq!(front.size(), 8);
        let mut seq = 0u64;
        let mut expect = 0u64;
        for _ in 0..20 {
            while front.push_request(&seq).is_ok() {
                seq += 1;
            }
            let _ = front.push_requests_and_check_notify().unwrap();
            while let Some(r) = back.pop_request().unwrap() {
                back.push_response(&(r + 1000)).unwrap();
            }
            let _ = back.push_responses_and_check_notify().unwrap();
            while let Some(r) = front.pop_response().unwrap() {
                assert_eq!(r, expect + 1000);
                expect += 1;
            }
        }
        assert_eq!(expect, 160);
        assert!(front.req_prod_pvt() < 200);
    }
}
