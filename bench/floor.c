/* Independent C measurement of the OS floor figures `tandem compare` reports,
 * to validate them (see BENCHMARKS.md).
 *   gcc -O2 -pthread -o /tmp/floor bench/floor.c && /tmp/floor
 * Each figure: median of 21 samples; a sample averages a batch of operations.
 * Placement as in tandem compare: creation with the creator on CPU 0; "across" = measuring side on CPU 0, peer on
 * CPU 1; "same CPU" = both on CPU 0 (a round trip is two context switches). */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SAMPLES 21
extern char **environ;

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v) {
    qsort(v, SAMPLES, sizeof *v, cmp);
    return v[SAMPLES / 2];
}
static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    sched_setaffinity(0, sizeof s, &s);
}

/* ---- creation */
static void *nothing(void *a) { return a; }
static double thread_create(void) {
    double v[SAMPLES];
    for (int i = -3; i < SAMPLES; i++) {
        double t = now_us();
        pthread_t th;
        pthread_create(&th, NULL, nothing, NULL);
        pthread_join(th, NULL);
        if (i >= 0) v[i] = now_us() - t;
    }
    return median(v);
}
/* What Rust's std::thread::spawn adds per thread: a 2 MiB stack and a
 * guarded sigaltstack for its stack-overflow handler (seen with strace). */
static void *nothing_like_std(void *a) {
    size_t len = 16048;
    char *alt = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    mprotect(alt, 4096, PROT_NONE);
    stack_t ss = {.ss_sp = alt + 4096, .ss_size = len - 4096}, off = {.ss_flags = SS_DISABLE};
    sigaltstack(&ss, NULL);
    sigaltstack(&off, NULL);
    munmap(alt, len);
    return a;
}
static double thread_create_like_std(void) {
    double v[SAMPLES];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 2 << 20);
    for (int i = -3; i < SAMPLES; i++) {
        double t = now_us();
        pthread_t th;
        pthread_create(&th, &attr, nothing_like_std, NULL);
        pthread_join(th, NULL);
        if (i >= 0) v[i] = now_us() - t;
    }
    return median(v);
}
static double fork_wait(void) {
    double v[SAMPLES];
    for (int i = -3; i < SAMPLES; i++) {
        double t = now_us();
        pid_t p = fork();
        if (p == 0) _exit(0);
        waitpid(p, NULL, 0);
        if (i >= 0) v[i] = now_us() - t;
    }
    return median(v);
}
static double spawn_true(void) {
    double v[SAMPLES];
    char *argv[] = {"/bin/true", NULL};
    for (int i = -3; i < SAMPLES; i++) {
        double t = now_us();
        pid_t p;
        posix_spawn(&p, "/bin/true", NULL, NULL, argv, environ);
        waitpid(p, NULL, 0);
        if (i >= 0) v[i] = now_us() - t;
    }
    return median(v);
}

/* ---- byte echo over fds: peer is a thread or a process */
struct echo { int in, out; };
static void echo_loop(int in, int out) {
    char b;
    while (read(in, &b, 1) == 1)
        if (write(out, &b, 1) != 1) break;
}
static void *echo_thread(void *a) {
    struct echo *e = a;
    echo_loop(e->in, e->out);
    return NULL;
}
/* kind: 0 pipe, 1 unix socket. peer_cpu < 0: same CPU as us (0). */
static double echo_rtt(int kind, int process, int peer_cpu, int batch) {
    int to[2], from[2];
    if (kind == 0) {
        pipe(to);
        pipe(from);
    } else {
        int s[2];
        socketpair(AF_UNIX, SOCK_STREAM, 0, s);
        to[1] = from[0] = s[0];
        to[0] = from[1] = s[1];
    }
    pin(peer_cpu < 0 ? 0 : peer_cpu);
    struct echo e = {to[0], from[1]};
    pthread_t th;
    pid_t pid = 0;
    if (process) {
        pid = fork();
        if (pid == 0) {
            echo_loop(to[0], from[1]);
            _exit(0);
        }
    } else {
        pthread_create(&th, NULL, echo_thread, &e);
    }
    pin(0);
    double v[SAMPLES];
    char b = 1;
    for (int i = -3; i < SAMPLES; i++) {
        double t = now_us();
        for (int k = 0; k < batch; k++) {
            write(to[1], &b, 1);
            read(from[0], &b, 1);
        }
        if (i >= 0) v[i] = (now_us() - t) / batch;
    }
    if (process) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    } else {
        if (kind == 0) close(to[1]); else shutdown(to[1], SHUT_WR);
        pthread_join(th, NULL);
    }
    close(to[0]); close(from[0]);
    if (kind == 0) { close(to[1]); close(from[1]); }
    return median(v);
}

/* ---- futex ping-pong through MAP_SHARED memory */
static long futex(atomic_uint *w, int op, unsigned v) { return syscall(SYS_futex, w, op, v, NULL, NULL, 0); }
static void wait_ne(atomic_uint *w, unsigned seen) {
    while (atomic_load(w) == seen) futex(w, FUTEX_WAIT, seen);
}
static void futex_server(atomic_uint *c) {
    unsigned seen = 0;
    for (;;) {
        wait_ne(&c[0], seen);
        seen = atomic_load(&c[0]);
        if (atomic_load(&c[2])) return;
        atomic_store(&c[1], seen);
        futex(&c[1], FUTEX_WAKE, 1);
    }
}
static void *futex_thread(void *a) { futex_server(a); return NULL; }
static double futex_rtt(int process, int peer_cpu, int batch) {
    atomic_uint *c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pin(peer_cpu < 0 ? 0 : peer_cpu);
    pid_t pid = 0;
    pthread_t th;
    if (process) {
        pid = fork();
        if (pid == 0) { futex_server(c); _exit(0); }
    } else {
        pthread_create(&th, NULL, futex_thread, c);
    }
    pin(0);
    double v[SAMPLES];
    unsigned n = 0;
    for (int i = -3; i < SAMPLES; i++) {
        double t = now_us();
        for (int k = 0; k < batch; k++) {
            unsigned before = atomic_load(&c[1]);
            atomic_store(&c[0], ++n);
            futex(&c[0], FUTEX_WAKE, 1);
            while (atomic_load(&c[1]) != n) { wait_ne(&c[1], before); before = atomic_load(&c[1]); }
        }
        if (i >= 0) v[i] = (now_us() - t) / batch;
    }
    atomic_store(&c[2], 1);
    atomic_store(&c[0], ++n);
    futex(&c[0], FUTEX_WAKE, 1);
    if (process) waitpid(pid, NULL, 0); else pthread_join(th, NULL);
    munmap(c, 4096);
    return median(v);
}

/* ---- pipe bandwidth: 1 MiB chunks to a reader on CPU 1, one ack byte per chunk */
#define CHUNK (1 << 20)
static double pipe_bw(int process) {
    int to[2], ack[2];
    pipe(to);
    pipe(ack);
    pin(1);
    pid_t pid = 0;
    if (process) {
        pid = fork();
        if (pid == 0) {
            static char buf[1 << 16];
            long pending = 0;
            ssize_t n;
            while ((n = read(to[0], buf, sizeof buf)) > 0) {
                pending += n;
                while (pending >= CHUNK) { pending -= CHUNK; write(ack[1], "k", 1); }
            }
            _exit(0);
        }
    }
    pin(0);
    static char chunk[CHUNK];
    memset(chunk, 0x5a, sizeof chunk);
    double v[SAMPLES];
    for (int i = -2; i < SAMPLES; i++) {
        double t = now_us();
        for (int k = 0; k < 6; k++) {
            for (size_t off = 0; off < CHUNK;) off += write(to[1], chunk + off, CHUNK - off);
            char b;
            read(ack[0], &b, 1);
        }
        if (i >= 0) v[i] = 6.0 * CHUNK / (now_us() - t) / 1e3; /* GB/s */
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return median(v);
}

int main(void) {
    pin(0); /* creation measured with the creator on CPU 0, as tandem compare does */
    printf("thread create+join          %8.1f us\n", thread_create());
    printf("thread create+join, std-like %7.1f us\n", thread_create_like_std());
    printf("fork+_exit+waitpid          %8.1f us\n", fork_wait());
    printf("posix_spawn /bin/true+wait  %8.1f us\n", spawn_true());
    printf("pipe RTT across, thread     %8.2f us\n", echo_rtt(0, 0, 1, 150));
    printf("pipe RTT across, process    %8.2f us\n", echo_rtt(0, 1, 1, 150));
    printf("unix RTT across, thread     %8.2f us\n", echo_rtt(1, 0, 1, 150));
    printf("unix RTT across, process    %8.2f us\n", echo_rtt(1, 1, 1, 150));
    printf("futex RTT across, process   %8.2f us\n", futex_rtt(1, 1, 150));
    printf("pipe switch same CPU, thread  %6.2f us\n", echo_rtt(0, 0, -1, 500) / 2);
    printf("pipe switch same CPU, process %6.2f us\n", echo_rtt(0, 1, -1, 500) / 2);
    printf("futex switch same CPU, thread %6.2f us\n", futex_rtt(0, -1, 500) / 2);
    printf("futex switch same CPU, process %5.2f us\n", futex_rtt(1, -1, 500) / 2);
    printf("pipe bandwidth across, process %5.2f GB/s\n", pipe_bw(1));
    return 0;
}
