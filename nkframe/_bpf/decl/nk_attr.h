/* Our own layouts of the bpf(2) attribute blocks that the system's <linux/bpf.h> (6.1) and
 * libbpf 1.1 do not know yet.  This text is both the cffi cdef and part of the C source, so it
 * must stay plain C (no "..."). Offsets follow include/uapi/linux/bpf.h of Linux 6.6+ and are
 * pinned by tests/unit/test_bpf_attr.py.
 *
 * The kernel reads only the prefix of union bpf_attr we pass (the size argument) and requires
 * every byte it knows past the last field a command uses to be zero, so these structs are passed
 * zero-initialised with their exact size.
 */

/* BPF_LINK_CREATE (cmd 28). tcx and netkit share one member layout (6.6 / 6.7). */
struct nk_link_create_attr {
    uint32_t prog_fd;           /* 0 */
    uint32_t target;            /* 4: target_fd, or target_ifindex for tcx/netkit/xdp */
    uint32_t attach_type;       /* 8 */
    uint32_t flags;             /* 12: BPF_F_BEFORE/AFTER/ID/LINK/REPLACE; XDP_FLAGS_* for xdp */
    uint32_t relative;          /* 16: tcx/netkit relative_fd or relative_id (with BPF_F_ID) */
    uint32_t _pad0;             /* 20 */
    uint64_t expected_revision; /* 24 */
};

/* BPF_PROG_QUERY (cmd 16). link_ids/link_attach_flags/revision arrived with tcx in 6.6. */
struct nk_prog_query_attr {
    uint32_t target;            /* 0: target_fd or target_ifindex */
    uint32_t attach_type;       /* 4 */
    uint32_t query_flags;       /* 8 */
    uint32_t attach_flags;      /* 12: out */
    uint64_t prog_ids;          /* 16: pointer to __u32[count] */
    uint32_t count;             /* 24: in: capacity, out: number attached */
    uint32_t _pad0;             /* 28 */
    uint64_t prog_attach_flags; /* 32 */
    uint64_t link_ids;          /* 40: pointer to __u32[count]; 0 entries = attached without link */
    uint64_t link_attach_flags; /* 48 */
    uint64_t revision;          /* 56: out */
};

/* struct bpf_link_info as returned by BPF_OBJ_GET_INFO_BY_FD: the common head and the two
 * union members we decode.  The union holds __u64s, so it starts 8-aligned at offset 16. The
 * tail is spare room: the kernel accepts a longer buffer as long as the extra bytes are zero. */
struct nk_link_info {
    uint32_t type;              /* 0 */
    uint32_t id;                /* 4 */
    uint32_t prog_id;           /* 8 */
    uint32_t _pad0;             /* 12 */
    union {
        struct {
            uint32_t ifindex;     /* 16 */
            uint32_t attach_type; /* 20 */
        } tcx;                  /* also netkit's layout */
        struct {
            uint32_t ifindex;     /* 16 */
        } xdp;
        struct {
            uint32_t netns_ino;   /* 16 */
            uint32_t attach_type; /* 20 */
        } netns;
        uint64_t _space[14];
    } u;
};
