/* cffi declarations for the few libc calls Python's os module lacks (3.11: no os.setns, no
 * mount, no statfs f_type). */

int mount(const char *source, const char *target, const char *filesystemtype,
          unsigned long mountflags, const void *data);
int umount2(const char *target, int flags);
int setns(int fd, int nstype);

#define CLONE_NEWNET ...
#define MNT_DETACH ...

struct statfs {
    long f_type;
    ...;
};
int statfs(const char *path, struct statfs *buf);
