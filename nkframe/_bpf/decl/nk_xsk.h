/* cffi declarations for nkframe's own AF_XDP batch helpers (../nk_xsk_impl.h), compiled in with
 * libxdp.  Every function handles a whole batch of descriptors; cffi releases the GIL around
 * each call, nk_xsk_loop included. */

#define NK_XSK_MAX_BATCH ...
#define NK_XSK_PORT_NEED_WAKEUP ...
#define NK_XSK_LOOP_SWAP_MACS ...
#define NK_XSK_LOOP_BIDIR ...

/* The structs nk_xsk_frames, nk_xsk_port, nk_xsk_loop_stats and nk_xsk_ctl are declared by
 * _build.py from their definitions in ../nk_xsk_impl.h (one source for C and cffi). */

struct xdp_statistics {
    __u64 rx_dropped;
    __u64 rx_invalid_descs;
    __u64 tx_invalid_descs;
    __u64 rx_ring_full;
    __u64 rx_fill_ring_empty_descs;
    __u64 tx_ring_empty_descs;
};

__u32 nk_xsk_complete(struct nk_xsk_port *p);
__u32 nk_xsk_fill(struct nk_xsk_port *p, __u32 max);
int nk_xsk_kick(struct nk_xsk_port *p, struct nk_xsk_loop_stats *st);
__u32 nk_xsk_rx_batch(struct nk_xsk_port *p, struct xdp_desc *out, __u32 held, __u32 max);
int nk_xsk_wait_rx(struct nk_xsk_port *p, int timeout_ms);
void nk_xsk_put_back(struct nk_xsk_port *p, const struct xdp_desc *d, __u32 n, int to_fill);
__u32 nk_xsk_alloc(struct nk_xsk_port *p, struct xdp_desc *out, __u32 n, __u32 length);
__u32 nk_xsk_tx_descs(struct nk_xsk_port *p, struct xdp_desc *d, __u32 n, int *err);
__u32 nk_xsk_tx_copy(struct nk_xsk_port *p, const void *packed, const __u32 *lens,
                     __u32 n, int *err);
int nk_xsk_loop(struct nk_xsk_port *a, struct nk_xsk_port *b, __u32 batch, __u32 flags,
                double seconds, __u64 max_frames, struct nk_xsk_ctl *ctl,
                struct nk_xsk_loop_stats *st);
int nk_xsk_statistics(int fd, struct xdp_statistics *out);
