// The few Linux calls the splice data plane needs that Swift's Glibc module does not
// import: epoll and eventfd (headers it leaves out) and the GNU extensions splice(2),
// pipe2(2), F_SETPIPE_SZ, sched_getaffinity and pthread_setname_np (hidden behind
// _GNU_SOURCE, which the Glibc module is built without; shim.c defines it).
#ifndef RELAY_CDATAPLANE_H
#define RELAY_CDATAPLANE_H

#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/types.h>

/// SPLICE_F_MOVE | SPLICE_F_NONBLOCK.
extern const unsigned int cdataplane_splice_flags;

/// splice(2) from `in` to `out` (no offsets: both are sockets or pipes), at most `length` bytes.
ssize_t cdataplane_splice(int in, int out, size_t length, unsigned int flags);

/// pipe2(2) with O_NONBLOCK | O_CLOEXEC; `fds[0]` reads, `fds[1]` writes.
int cdataplane_pipe(int fds[2]);

/// fcntl(F_SETPIPE_SZ): the new capacity in bytes, or -1 with errno.
int cdataplane_set_pipe_size(int fd, int size);

/// fcntl(F_GETPIPE_SZ): the capacity in bytes, or -1 with errno.
int cdataplane_pipe_size(int fd);

/// The CPUs this thread may run on (sched_getaffinity), or -1 with errno.
int cdataplane_active_cpu_count(void);

/// Names the calling thread (at most 15 bytes are kept).
void cdataplane_name_thread(const char *name);

/// signal(SIGPIPE, SIG_IGN): SIG_IGN is a cast macro Swift cannot import.
void cdataplane_ignore_sigpipe(void);

// accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC): a GNU call.
int cdataplane_accept(int fd);

#endif
