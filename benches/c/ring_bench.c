/*
 * The ring benchmark loop written with Xen's io/ring.h macros (the reference the Rust ring is
 * compared with). Single thread, one page, both ends in turn, exactly the pattern of
 * benches/src/micro.rs `rust_round_trips`:
 *
 *   front: fill every free slot, RING_PUSH_REQUESTS_AND_CHECK_NOTIFY
 *   back:  copy out every request (RING_COPY_REQUEST), RING_FINAL_CHECK_FOR_REQUESTS,
 *          answer each, RING_PUSH_RESPONSES_AND_CHECK_NOTIFY
 *   front: copy out every response, RING_FINAL_CHECK_FOR_RESPONSES
 *
 * Barriers are the C11 fences that the Rust ring's Acquire/Release/SeqCst operations compile
 * to, so both sides pay for the same ordering (x86: compiler barriers, and one locked/mfence
 * instruction for each xen_mb()).
 */
#include <stdint.h>
#include <string.h>

#define __XEN_INTERFACE_VERSION__ 0x00040e00
#define xen_mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#include <xen/io/ring.h>

#define BENCH(W)                                                                  \
    struct req##W { uint64_t w[W]; };                                             \
    struct rsp##W { uint64_t w[2]; };                                             \
    DEFINE_RING_TYPES(b##W, struct req##W, struct rsp##W);                        \
    unsigned int c_ring_size_##W(void)                                            \
    {                                                                             \
        return __RING_SIZE((struct b##W##_sring *)0, 4096);                       \
    }                                                                             \
    uint64_t c_ring_round_trips_##W(void *page, uint64_t n, uint64_t *notifies)   \
    {                                                                             \
        struct b##W##_sring *s = page;                                            \
        struct b##W##_front_ring f;                                               \
        struct b##W##_back_ring b;                                                \
        uint64_t i = 0, sum = 0, nt = 0;                                          \
        int notify, more;                                                         \
        SHARED_RING_INIT(s);                                                      \
        FRONT_RING_INIT(&f, s, 4096);                                             \
        BACK_RING_INIT(&b, s, 4096);                                              \
        while (i < n) {                                                           \
            while (!RING_FULL(&f)) {                                              \
                struct req##W r;                                                  \
                memset(&r, 0, sizeof(r));                                         \
                r.w[0] = i++;                                                     \
                *RING_GET_REQUEST(&f, f.req_prod_pvt) = r;                        \
                f.req_prod_pvt++;                                                 \
            }                                                                     \
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f, notify);                      \
            nt += notify;                                                         \
            do {                                                                  \
                RING_IDX rc = b.req_cons, rp = s->req_prod;                       \
                xen_rmb();                                                        \
                while (rc != rp) {                                                \
                    struct req##W q;                                              \
                    RING_COPY_REQUEST(&b, rc, &q);                                \
                    b.req_cons = ++rc;                                            \
                    sum += q.w[0];                                                \
                }                                                                 \
                RING_FINAL_CHECK_FOR_REQUESTS(&b, more);                          \
            } while (more);                                                       \
            while (b.rsp_prod_pvt != b.req_cons) {                                \
                struct rsp##W p = { { 1, 2 } };                                   \
                *RING_GET_RESPONSE(&b, b.rsp_prod_pvt) = p;                       \
                b.rsp_prod_pvt++;                                                 \
            }                                                                     \
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&b, notify);                     \
            nt += notify;                                                         \
            do {                                                                  \
                RING_IDX rc = f.rsp_cons, rp = s->rsp_prod;                       \
                xen_rmb();                                                        \
                while (rc != rp) {                                                \
                    struct rsp##W p;                                              \
                    RING_COPY_RESPONSE(&f, rc, &p);                               \
                    f.rsp_cons = ++rc;                                            \
                    sum += p.w[1];                                                \
                }                                                                 \
                RING_FINAL_CHECK_FOR_RESPONSES(&f, more);                         \
            } while (more);                                                       \
        }                                                                         \
        *notifies = nt;                                                           \
        return sum;                                                               \
    }

BENCH(3)
BENCH(14)
