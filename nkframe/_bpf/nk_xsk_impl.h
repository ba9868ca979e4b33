/* Batch ring operations for nkframe.xsk, compiled into nkframe._bpf._lib when libxdp is present
 * (included by _build.py; declarations for cffi in decl/nk_xsk.h).
 *
 * libxdp's ring accessors are inline functions: called from Python one descriptor at a time
 * they cost a cffi call each, which is what held the Python AF_XDP loop to ~0.3 Mpps.  Here
 * every function moves a whole batch (receive, recycle, fill, complete, transmit), and
 * nk_xsk_loop runs an echo / forward loop entirely in C.  cffi releases the GIL around all of
 * them.
 *
 * Frame ownership: every UMEM frame is in exactly one place at a time: the fill ring, the RX
 * ring, a caller's descriptor array, the TX ring, the completion ring (and the kernel between
 * them) or the UMEM's free stack (struct nk_xsk_frames).  Each function below moves frames from
 * one place to another and never loses or duplicates one.
 */
#include <poll.h>
#include <time.h>

#define NK_XSK_MAX_BATCH 256
#define NK_XSK_KICK_BATCH 32  /* copy mode transmits at most this many per sendto (measured on 6.18) */
#define NK_XSK_PORT_NEED_WAKEUP 1u  /* bound with XDP_USE_NEED_WAKEUP */
#define NK_XSK_LOOP_SWAP_MACS 1u
#define NK_XSK_LOOP_BIDIR 2u

struct nk_xsk_frames {
    __u64 *addr;      /* free frame addresses (chunk starts), a stack */
    __u32 count;
    __u32 cap;
};

/* One socket with its UMEM's rings, as the batch functions see it. */
struct nk_xsk_port {
    struct xsk_ring_cons *rx;
    struct xsk_ring_prod *tx;
    struct xsk_ring_prod *fill;
    struct xsk_ring_cons *comp;
    struct nk_xsk_frames *free;
    unsigned char *area;
    __u64 area_size;
    __u32 frame_size;   /* power of two: chunk = addr & ~(frame_size - 1) */
    __u32 flags;        /* NK_XSK_PORT_* */
    int fd;
};

struct nk_xsk_loop_stats {
    __u64 rx;           /* frames taken off RX rings */
    __u64 tx;           /* frames queued on TX rings */
    __u64 dropped;      /* received but not queued: TX ring full or (forward) no free frame */
    __u64 completed;    /* frames the kernel reported transmitted */
    __u64 kicks;        /* sendto() doorbells */
    __u64 polls;        /* poll() waits while idle */
    double seconds;
};

struct nk_xsk_ctl {
    volatile int stop;  /* set from another thread to end nk_xsk_loop early */
};

static inline __u64 nk_chunk(const struct nk_xsk_port *p, __u64 addr)
{
    return addr & ~((__u64)p->frame_size - 1);
}

static inline void nk_free_push(struct nk_xsk_port *p, __u64 addr)
{
    struct nk_xsk_frames *f = p->free;

    if (f->count < f->cap)
        f->addr[f->count++] = nk_chunk(p, addr);
}

static inline __u32 nk_prod_room(struct xsk_ring_prod *r, __u32 want)
{
    __u32 room = xsk_prod_nb_free(r, want);

    return room < want ? room : want;
}

/* Frames whose transmission completed go back to the free stack; returns how many. */
static __u32 nk_xsk_complete(struct nk_xsk_port *p)
{
    __u32 idx, i, n = xsk_ring_cons__peek(p->comp, p->comp->size, &idx);

    for (i = 0; i < n; i++)
        nk_free_push(p, *xsk_ring_cons__comp_addr(p->comp, idx + i));
    if (n)
        xsk_ring_cons__release(p->comp, n);
    return n;
}

/* Up to max free frames into the fill ring; returns how many. */
static __u32 nk_xsk_fill(struct nk_xsk_port *p, __u32 max)
{
    struct nk_xsk_frames *f = p->free;
    __u32 idx, i, n = max < f->count ? max : f->count;

    n = nk_prod_room(p->fill, n);
    if (n == 0 || xsk_ring_prod__reserve(p->fill, n, &idx) != n)
        return 0;
    for (i = 0; i < n; i++)
        *xsk_ring_prod__fill_addr(p->fill, idx + i) = f->addr[--f->count];
    xsk_ring_prod__submit(p->fill, n);
    return n;
}

/* Frames at addrs[0..n) straight back to the fill ring (to the free stack what does not fit). */
static void nk_xsk_refill(struct nk_xsk_port *p, const __u64 *addrs, __u32 n)
{
    __u32 idx, i, k = nk_prod_room(p->fill, n);

    if (k && xsk_ring_prod__reserve(p->fill, k, &idx) == k) {
        for (i = 0; i < k; i++)
            *xsk_ring_prod__fill_addr(p->fill, idx + i) = nk_chunk(p, addrs[i]);
        xsk_ring_prod__submit(p->fill, k);
    } else {
        k = 0;
    }
    for (i = k; i < n; i++)
        nk_free_push(p, addrs[i]);
}

static void nk_xsk_refill_descs(struct nk_xsk_port *p, const struct xdp_desc *d, __u32 n)
{
    __u64 addrs[NK_XSK_MAX_BATCH];

    while (n) {
        __u32 i, k = n < NK_XSK_MAX_BATCH ? n : NK_XSK_MAX_BATCH;

        for (i = 0; i < k; i++)
            addrs[i] = d[i].addr;
        nk_xsk_refill(p, addrs, k);
        d += k;
        n -= k;
    }
}

/* Completions straight into the fill ring (echo: a transmitted frame receives again). */
static __u32 nk_xsk_complete_to_fill(struct nk_xsk_port *p)
{
    __u32 idx, i, n = xsk_ring_cons__peek(p->comp, NK_XSK_MAX_BATCH, &idx);
    __u64 addrs[NK_XSK_MAX_BATCH];

    for (i = 0; i < n; i++)
        addrs[i] = *xsk_ring_cons__comp_addr(p->comp, idx + i);
    if (n) {
        xsk_ring_cons__release(p->comp, n);
        nk_xsk_refill(p, addrs, n);
    }
    return n;
}

static void nk_xsk_wake_fill(struct nk_xsk_port *p)
{
    if ((p->flags & NK_XSK_PORT_NEED_WAKEUP) && xsk_ring_prod__needs_wakeup(p->fill))
        recvfrom(p->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
}

static inline __u32 nk_tx_outstanding(const struct nk_xsk_port *p)
{
    return p->tx->cached_prod - __atomic_load_n(p->tx->consumer, __ATOMIC_ACQUIRE);
}

static inline int nk_transient(int err)
{
    return err == EAGAIN || err == EBUSY || err == ENOBUFS || err == ENETDOWN;
}

/* Ring the TX doorbell until the kernel has taken what is queued: copy mode takes a bounded
 * number of descriptors per sendto and answers EAGAIN while more remain, or while the completion
 * ring is full (drained here: into the free stack, or with to_fill (echo) into the fill ring).  Stops when the ring is empty, on success,
 * or when a doorbell moved nothing.  Returns 0, or -errno for an error that is not "busy, try
 * again". */
static int nk_xsk_kick_to(struct nk_xsk_port *p, struct nk_xsk_loop_stats *st, int to_fill)
{
    __u32 left = nk_tx_outstanding(p);
    int tries;

    if ((p->flags & NK_XSK_PORT_NEED_WAKEUP) && !xsk_ring_prod__needs_wakeup(p->tx))
        return 0;
    for (tries = 0; tries < 16 && left; tries++) {
        long ret = sendto(p->fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
        __u32 now, done;

        if (st)
            st->kicks++;
        if (ret >= 0)
            break;
        if (!nk_transient(errno))
            return -errno;
        if (errno != EAGAIN)
            break;
        done = to_fill ? nk_xsk_complete_to_fill(p) : nk_xsk_complete(p);
        if (st)
            st->completed += done;
        now = nk_tx_outstanding(p);
        if (now >= left && !done)
            break;  /* the device is busy: nothing moved, try again on the next call */
        left = now;
    }
    return 0;
}

static int nk_xsk_kick(struct nk_xsk_port *p, struct nk_xsk_loop_stats *st)
{
    return nk_xsk_kick_to(p, st, 0);
}

/* Receive: give the frames out[0..held) still names back to the fill ring, then take up to max
 * descriptors off RX into out.  Returns how many were taken. */
static __u32 nk_xsk_rx_batch(struct nk_xsk_port *p, struct xdp_desc *out, __u32 held, __u32 max)
{
    __u32 idx, i, n;

    if (held)
        nk_xsk_refill_descs(p, out, held);
    nk_xsk_wake_fill(p);
    n = xsk_ring_cons__peek(p->rx, max, &idx);
    for (i = 0; i < n; i++)
        out[i] = *xsk_ring_cons__rx_desc(p->rx, idx + i);
    if (n)
        xsk_ring_cons__release(p->rx, n);
    return n;
}

/* Wait up to timeout_ms for RX (poll); 1 if frames are there. */
static int nk_xsk_wait_rx(struct nk_xsk_port *p, int timeout_ms)
{
    struct pollfd pfd = { .fd = p->fd, .events = POLLIN };

    if (xsk_cons_nb_avail(p->rx, 1))
        return 1;
    return poll(&pfd, 1, timeout_ms) > 0;
}

/* Give back frames a caller holds: to the fill ring (to_fill) or the free stack. */
static void nk_xsk_put_back(struct nk_xsk_port *p, const struct xdp_desc *d, __u32 n, int to_fill)
{
    __u32 i;

    if (to_fill) {
        nk_xsk_refill_descs(p, d, n);
        return;
    }
    for (i = 0; i < n; i++)
        nk_free_push(p, d[i].addr);
}

/* Take up to n free frames into out (addr = chunk start, len = length). */
static __u32 nk_xsk_alloc(struct nk_xsk_port *p, struct xdp_desc *out, __u32 n, __u32 length)
{
    __u32 i;

    if (p->free->count == 0)
        nk_xsk_complete(p);
    if (n > p->free->count)
        n = p->free->count;
    for (i = 0; i < n; i++) {
        out[i].addr = p->free->addr[--p->free->count];
        out[i].len = length;
        out[i].options = 0;
    }
    return n;
}

/* Transmit the frames d[0..n) name (zero copy: they are in the UMEM already).  Queues as many as
 * the TX ring takes, moves the rest to the front of d and returns how many were queued; *err is
 * 0 or the doorbell's -errno. */
static __u32 nk_xsk_tx_descs(struct nk_xsk_port *p, struct xdp_desc *d, __u32 n, int *err)
{
    __u32 idx, i, k;

    nk_xsk_complete(p);
    k = nk_prod_room(p->tx, n);
    if (k < n) {
        nk_xsk_kick(p, NULL);
        k = nk_prod_room(p->tx, n);
    }
    if (k && xsk_ring_prod__reserve(p->tx, k, &idx) == k) {
        for (i = 0; i < k; i++) {
            struct xdp_desc *t = xsk_ring_prod__tx_desc(p->tx, idx + i);

            t->addr = d[i].addr;
            t->len = d[i].len;
            t->options = 0;
        }
        xsk_ring_prod__submit(p->tx, k);
        memmove(d, d + k, (size_t)(n - k) * sizeof(*d));
    } else {
        k = 0;
    }
    *err = nk_xsk_kick(p, NULL);
    return k;
}

/* Transmit copies: n frames packed back to back in data, lens[i] bytes each, copied into free
 * frames.  Returns how many were queued (the first ones); *err as above. */
static __u32 nk_xsk_tx_copy(struct nk_xsk_port *p, const void *packed, const __u32 *lens,
                            __u32 n, int *err)
{
    const unsigned char *data = packed;
    __u32 idx, i, k;
    struct nk_xsk_frames *f = p->free;

    nk_xsk_complete(p);
    k = nk_prod_room(p->tx, n);
    if (k < n) {
        nk_xsk_kick(p, NULL);
        k = nk_prod_room(p->tx, n);
    }
    if (k > f->count)
        k = f->count;
    if (k && xsk_ring_prod__reserve(p->tx, k, &idx) == k) {
        for (i = 0; i < k; i++) {
            struct xdp_desc *t = xsk_ring_prod__tx_desc(p->tx, idx + i);
            __u64 addr = f->addr[--f->count];

            memcpy(p->area + addr, data, lens[i]);
            data += lens[i];
            t->addr = addr;
            t->len = lens[i];
            t->options = 0;
        }
        xsk_ring_prod__submit(p->tx, k);
    } else {
        k = 0;
    }
    *err = nk_xsk_kick(p, NULL);
    return k;
}

static inline void nk_swap_macs(unsigned char *frame, __u32 len)
{
    unsigned char tmp[6];

    if (len < 12)
        return;
    memcpy(tmp, frame, 6);
    memcpy(frame, frame + 6, 6);
    memcpy(frame + 6, tmp, 6);
}

/* One step of the loop: up to batch frames from in's RX to out's TX.  Same port: the
 * descriptors move (zero copy) and completions go straight back to the fill ring.  Two ports
 * (two UMEMs): each frame is copied into one of out's free frames and in's frame is refilled at
 * once.  Returns frames received, or -errno from the doorbell. */
static long nk_xsk_move(struct nk_xsk_port *in, struct nk_xsk_port *out, __u32 batch,
                        __u32 flags, struct nk_xsk_loop_stats *st)
{
    __u64 addrs[NK_XSK_MAX_BATCH];
    __u32 ridx, tidx = 0, i, n, k;
    int err;

    if (in == out) {
        st->completed += nk_xsk_complete_to_fill(out);
    } else {
        st->completed += nk_xsk_complete(out);
    }
    nk_xsk_wake_fill(in);
    n = xsk_ring_cons__peek(in->rx, batch, &ridx);
    if (n == 0) {
        if (nk_tx_outstanding(out)) {
            err = nk_xsk_kick_to(out, st, in == out);
            if (err)
                return err;
        }
        return 0;
    }
    k = nk_prod_room(out->tx, n);
    if (k < n) {
        err = nk_xsk_kick_to(out, st, in == out);
        if (err)
            return err;
        st->completed += in == out ? nk_xsk_complete_to_fill(out) : nk_xsk_complete(out);
        k = nk_prod_room(out->tx, n);
    }
    if (in != out && k > out->free->count)
        k = out->free->count;
    if (k && xsk_ring_prod__reserve(out->tx, k, &tidx) != k)
        k = 0;
    for (i = 0; i < n; i++) {
        const struct xdp_desc *d = xsk_ring_cons__rx_desc(in->rx, ridx + i);

        if (i >= k) {
            addrs[i - k] = d->addr;  /* dropped: back to in's fill ring */
            continue;
        }
        struct xdp_desc *t = xsk_ring_prod__tx_desc(out->tx, tidx + i);

        if (in == out) {
            t->addr = d->addr;
        } else {
            t->addr = out->free->addr[--out->free->count];
            memcpy(out->area + t->addr, in->area + d->addr, d->len);
        }
        t->len = d->len;
        t->options = 0;
        if (flags & NK_XSK_LOOP_SWAP_MACS)
            nk_swap_macs(out->area + t->addr, t->len);
    }
    if (in != out) {
        /* Everything received was copied (or dropped): all of it goes back to in's fill ring. */
        for (i = 0; i < k; i++)
            addrs[n - k + i] = xsk_ring_cons__rx_desc(in->rx, ridx + i)->addr;
    }
    xsk_ring_cons__release(in->rx, n);
    if (k)
        xsk_ring_prod__submit(out->tx, k);
    nk_xsk_refill(in, addrs, in == out ? n - k : n);
    st->rx += n;
    st->tx += k;
    st->dropped += n - k;
    /* A doorbell costs a system call, and copy mode then transmits up to NK_XSK_KICK_BATCH
     * frames in it: while frames keep coming, let a few rounds' worth gather first.  A round
     * that receives nothing rings it (above), so a lone frame waits one round at most. */
    if (nk_tx_outstanding(out) < NK_XSK_KICK_BATCH)
        return (long)n;
    err = nk_xsk_kick_to(out, st, in == out);
    return err ? err : (long)n;
}

static double nk_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Echo (a == b) or forward a -> b (and b -> a with NK_XSK_LOOP_BIDIR) until seconds have passed
 * (<= 0: no limit), max_frames were received (0: no limit) or ctl->stop is set.  Busy-polls;
 * after a run of empty rounds it waits in poll() for a millisecond at a time.  Returns 0 or
 * -errno; st holds the counts either way. */
static int nk_xsk_loop(struct nk_xsk_port *a, struct nk_xsk_port *b, __u32 batch, __u32 flags,
                       double seconds, __u64 max_frames, struct nk_xsk_ctl *ctl,
                       struct nk_xsk_loop_stats *st)
{
    double t0 = nk_now(), now = t0, end = t0 + seconds;
    int bidir = a != b && (flags & NK_XSK_LOOP_BIDIR);
    unsigned idle = 0;
    long r;

    memset(st, 0, sizeof(*st));
    if (batch == 0 || batch > NK_XSK_MAX_BATCH)
        batch = batch ? NK_XSK_MAX_BATCH : 64;
    while (!(ctl && ctl->stop)) {
        __u64 before = st->rx;
        __u32 b1 = batch;

        if (max_frames && max_frames - st->rx < b1)
            b1 = (__u32)(max_frames - st->rx);
        r = nk_xsk_move(a, b, b1, flags, st);
        if (r < 0)
            goto out;
        if (bidir && !(max_frames && st->rx >= max_frames)) {
            b1 = batch;
            if (max_frames && max_frames - st->rx < b1)
                b1 = (__u32)(max_frames - st->rx);
            r = nk_xsk_move(b, a, b1, flags, st);
            if (r < 0)
                goto out;
        }
        if (max_frames && st->rx >= max_frames)
            break;
        now = nk_now();
        if (seconds > 0 && now >= end)
            break;
        if (st->rx != before) {
            idle = 0;
        } else if (++idle >= 1024) {
            struct pollfd pfd[2] = { { .fd = a->fd, .events = POLLIN },
                                     { .fd = b->fd, .events = POLLIN } };

            poll(pfd, bidir ? 2 : 1, 1);
            st->polls++;
        }
    }
    /* Whatever the last rounds queued without ringing goes out now. */
    r = nk_xsk_kick_to(b, st, a == b);
    if (!r && bidir)
        r = nk_xsk_kick_to(a, st, 0);
out:
    st->seconds = nk_now() - t0;
    return (int)r;
}

/* The socket's XDP_STATISTICS counters (getsockopt); 0 or -errno. */
static int nk_xsk_statistics(int fd, struct xdp_statistics *out)
{
    socklen_t len = sizeof(*out);

    memset(out, 0, sizeof(*out));
    return getsockopt(fd, SOL_XDP, XDP_STATISTICS, out, &len) < 0 ? -errno : 0;
}
