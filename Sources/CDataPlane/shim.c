// Wrappers for the GNU extensions declared in include/CDataPlane.h.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "CDataPlane.h"

const unsigned int cdataplane_splice_flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;

ssize_t cdataplane_splice(int in, int out, size_t length, unsigned int flags) {
    return splice(in, NULL, out, NULL, length, flags);
}

int cdataplane_pipe(int fds[2]) {
    return pipe2(fds, O_NONBLOCK | O_CLOEXEC);
}

int cdataplane_set_pipe_size(int fd, int size) {
    return fcntl(fd, F_SETPIPE_SZ, size);
}

int cdataplane_pipe_size(int fd) {
    return fcntl(fd, F_GETPIPE_SZ);
}

int cdataplane_active_cpu_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return -1;
    return CPU_COUNT(&set);
}

void cdataplane_name_thread(const char *name) {
    pthread_setname_np(pthread_self(), name);
}

void cdataplane_ignore_sigpipe(void) {
    signal(SIGPIPE, SIG_IGN);
}

int cdataplane_accept(int fd) {
    return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}
