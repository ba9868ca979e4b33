/* cffi declarations for <bpf/libbpf.h>, <bpf/bpf.h> and <bpf/btf.h> (libbpf 1.1 baseline).
 *
 * Only what nkframe calls.  Structs end with "...;" so cffi takes their real layout from the
 * installed headers; the fields named here are the ones we touch.  Symbols newer than libbpf 1.1
 * are not declared here: _build.py probes for them and adds them from OPTIONAL.
 */

/* The kernel's fixed-width types (asm-generic/int-ll64.h: __u64 is unsigned long long). */
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;

/* ---- library ---- */
__u32 libbpf_major_version(void);
__u32 libbpf_minor_version(void);
int libbpf_num_possible_cpus(void);
int libbpf_strerror(int err, char *buf, size_t size);

enum libbpf_print_level { LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG, ... };

/* ---- objects ---- */
struct bpf_object;
struct bpf_program;
struct bpf_map;
struct btf;

struct bpf_object_open_opts {
    size_t sz;
    const char *object_name;
    const char *pin_root_path;
    char *kernel_log_buf;
    size_t kernel_log_size;
    __u32 kernel_log_level;
    ...;
};

struct bpf_object *bpf_object__open_file(const char *path, const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
const char *bpf_object__name(const struct bpf_object *obj);
struct btf *bpf_object__btf(const struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);

const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_program__type(const struct bpf_program *prog);
int bpf_program__set_type(struct bpf_program *prog, int type);
int bpf_program__expected_attach_type(const struct bpf_program *prog);
int bpf_program__set_expected_attach_type(struct bpf_program *prog, int type);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
int bpf_program__set_log_level(struct bpf_program *prog, __u32 log_level);
int bpf_program__set_log_buf(struct bpf_program *prog, char *log_buf, size_t log_size);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__reuse_fd(struct bpf_map *map, int fd);
int bpf_map__type(const struct bpf_map *map);
__u32 bpf_map__key_size(const struct bpf_map *map);
__u32 bpf_map__value_size(const struct bpf_map *map);
__u32 bpf_map__max_entries(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);
__u32 bpf_map__map_flags(const struct bpf_map *map);
bool bpf_map__is_internal(const struct bpf_map *map);
int bpf_map__set_pin_path(struct bpf_map *map, const char *path);
const char *bpf_map__pin_path(const struct bpf_map *map);
int bpf_map__set_initial_value(struct bpf_map *map, const void *data, size_t size);
const void *bpf_map__initial_value(struct bpf_map *map, size_t *psize);

/* ---- BTF (to find a global variable's offset in its data section) ---- */
struct btf_type {
    __u32 name_off;
    __u32 info;
    ...;
};
struct btf_var_secinfo {
    __u32 type;
    __u32 offset;
    __u32 size;
};
#define BTF_KIND_DATASEC ...
__s32 btf__find_by_name_kind(const struct btf *btf, const char *type_name, __u32 kind);
const struct btf_type *btf__type_by_id(const struct btf *btf, __u32 id);
const char *btf__name_by_offset(const struct btf *btf, __u32 offset);
__u16 btf_vlen(const struct btf_type *t);
struct btf_var_secinfo *btf_var_secinfos(const struct btf_type *t);

/* ---- bpf(2) wrappers ---- */
struct bpf_map_batch_opts {
    size_t sz;
    __u64 elem_flags;
    __u64 flags;
};

struct bpf_map_create_opts {
    size_t sz;
    __u32 inner_map_fd;
    __u32 map_flags;
    ...;
};
int bpf_map_create(int map_type, const char *map_name, __u32 key_size, __u32 value_size,
                   __u32 max_entries, const struct bpf_map_create_opts *opts);

int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);

int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);

int bpf_prog_get_fd_by_id(__u32 id);
int bpf_map_get_fd_by_id(__u32 id);
int bpf_link_get_fd_by_id(__u32 id);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);

struct bpf_link_update_opts {
    size_t sz;
    __u32 flags;
    __u32 old_prog_fd;
    ...;
};
int bpf_link_update(int link_fd, int new_prog_fd, const struct bpf_link_update_opts *opts);
int bpf_link_detach(int link_fd);

struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    __u32 data_size_in;
    __u32 data_size_out;
    const void *ctx_in;
    void *ctx_out;
    __u32 ctx_size_in;
    __u32 ctx_size_out;
    __u32 retval;
    int repeat;
    __u32 duration;
    __u32 flags;
    ...;
};
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);

/* Kernel info structs from the system <linux/bpf.h> (6.1): the fields used have been stable
 * since 4.15, newer kernels only append. */
struct bpf_prog_info {
    __u32 type;
    __u32 id;
    __u8 tag[8];
    __u32 nr_map_ids;
    __u64 map_ids;
    char name[16];
    __u64 load_time;
    ...;
};
struct bpf_map_info {
    __u32 type;
    __u32 id;
    __u32 key_size;
    __u32 value_size;
    __u32 max_entries;
    __u32 map_flags;
    char name[16];
    ...;
};

/* ---- XDP ---- */
struct bpf_xdp_attach_opts {
    size_t sz;
    int old_prog_fd;
    ...;
};
int bpf_xdp_attach(int ifindex, int prog_fd, __u32 flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_detach(int ifindex, __u32 flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_query_id(int ifindex, int flags, __u32 *prog_id);

/* ---- legacy TC (clsact + cls_bpf direct-action) ---- */
enum bpf_tc_attach_point { BPF_TC_INGRESS, BPF_TC_EGRESS, BPF_TC_CUSTOM, ... };
enum bpf_tc_flags { BPF_TC_F_REPLACE, ... };
struct bpf_tc_hook {
    size_t sz;
    int ifindex;
    enum bpf_tc_attach_point attach_point;
    __u32 parent;
    ...;
};
struct bpf_tc_opts {
    size_t sz;
    int prog_fd;
    __u32 flags;
    __u32 prog_id;
    __u32 handle;
    __u32 priority;
    ...;
};
int bpf_tc_hook_create(struct bpf_tc_hook *hook);
int bpf_tc_hook_destroy(struct bpf_tc_hook *hook);
int bpf_tc_attach(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts);
int bpf_tc_detach(const struct bpf_tc_hook *hook, const struct bpf_tc_opts *opts);
int bpf_tc_query(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts);
