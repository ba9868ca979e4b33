/* cffi declarations for <xdp/xsk.h> (libxdp 1.3): the AF_XDP socket API.
 *
 * Compiled in only when _build.py finds libxdp (headers and library).  The ring structs are
 * opaque with a size ("...;": API mode takes the layout from libxdp's header): only C touches
 * their fields, and ffi.new() zeroes them, which xsk_umem__create / xsk_socket__create need
 * because libxdp leaves fields it does not set uninitialised.
 */

struct xdp_desc {
    __u64 addr;
    __u32 len;
    __u32 options;
};

struct xsk_ring_prod { ...; };

struct xsk_ring_cons { ...; };

struct xsk_umem;
struct xsk_socket;

struct xsk_umem_config {
    __u32 fill_size;
    __u32 comp_size;
    __u32 frame_size;
    __u32 frame_headroom;
    __u32 flags;
};

struct xsk_socket_config {
    __u32 rx_size;
    __u32 tx_size;
    __u32 libxdp_flags;
    __u32 xdp_flags;
    __u16 bind_flags;
    ...;
};

#define XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD ...
#define XDP_SHARED_UMEM ...
#define XDP_COPY ...
#define XDP_ZEROCOPY ...
#define XDP_USE_NEED_WAKEUP ...

int xsk_umem__create(struct xsk_umem **umem, void *umem_area, __u64 size,
                     struct xsk_ring_prod *fill, struct xsk_ring_cons *comp,
                     const struct xsk_umem_config *config);
int xsk_umem__delete(struct xsk_umem *umem);
int xsk_umem__fd(const struct xsk_umem *umem);

int xsk_socket__create(struct xsk_socket **xsk, const char *ifname, __u32 queue_id,
                       struct xsk_umem *umem, struct xsk_ring_cons *rx, struct xsk_ring_prod *tx,
                       const struct xsk_socket_config *config);
void xsk_socket__delete(struct xsk_socket *xsk);
int xsk_socket__fd(const struct xsk_socket *xsk);
int xsk_socket__update_xskmap(struct xsk_socket *xsk, int xsks_map_fd);

/* Ring accessors are inline in the header; cffi compiles a wrapper for each. */
__u64 *xsk_ring_prod__fill_addr(struct xsk_ring_prod *fill, __u32 idx);
const __u64 *xsk_ring_cons__comp_addr(const struct xsk_ring_cons *comp, __u32 idx);
struct xdp_desc *xsk_ring_prod__tx_desc(struct xsk_ring_prod *tx, __u32 idx);
const struct xdp_desc *xsk_ring_cons__rx_desc(const struct xsk_ring_cons *rx, __u32 idx);
int xsk_ring_prod__needs_wakeup(const struct xsk_ring_prod *r);
__u32 xsk_prod_nb_free(struct xsk_ring_prod *r, __u32 nb);
__u32 xsk_ring_prod__reserve(struct xsk_ring_prod *prod, __u32 nb, __u32 *idx);
void xsk_ring_prod__submit(struct xsk_ring_prod *prod, __u32 nb);
__u32 xsk_ring_cons__peek(struct xsk_ring_cons *cons, __u32 nb, __u32 *idx);
void xsk_ring_cons__release(struct xsk_ring_cons *cons, __u32 nb);
