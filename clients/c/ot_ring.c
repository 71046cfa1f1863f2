/* The producer side of onlinetrain's shared-memory ring, as the Python RingProducer does it:
 * attach (retrying until the consumer's magic appears), reserve a slot under the ring lock (robust
 * process-shared mutex, or flock), publish write_pos, copy outside the lock, commit. Byte layout
 * and ordering rules: docs/wire-format.md. C11 atomics give the release/acquire order the
 * protocol needs on any architecture (on x86-64 they compile to plain stores and loads). */
#define _GNU_SOURCE
#include "ot_ring.h"
#include "ot_client.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the onlinetrain ring and frames are little-endian: this client needs a little-endian host"
#endif

#define RING_MAGIC 0x3130474E4952544FULL /* "OTRING01" */
#define CTL_SIZE 4096
#define SLOT_HDR 64
#define MUTEX_AT 512
#define C_MAGIC 0
#define C_CAP 1
#define C_OWNER 2
#define C_OWNER_T 3
#define C_CLOSED 4
#define C_LOCK_KIND 5
#define C_WRITE 8
#define C_SEQ 9
#define C_READ 16
#define WRITING 1
#define COMMITTED 2
#define PAD 3
#define CONSUMER_CHECK_S 0.5

#define LOAD_ACQ(p) atomic_load_explicit((_Atomic uint64_t *)(p), memory_order_acquire)
#define STORE_REL(p, v) atomic_store_explicit((_Atomic uint64_t *)(p), (v), memory_order_release)

double ot_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* psutil's create_time: /proc/stat's btime + /proc/PID/stat's starttime / CLK_TCK. */
double ot_proc_start(long pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1.0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1.0;
    p++;
    unsigned long long start = 0;
    for (int field = 2; field < 22 && *p; field++) { /* ')' ends field 2; starttime is field 22 */
        while (*p == ' ') p++;
        if (field == 21) { start = strtoull(p, NULL, 10); break; }
        while (*p && *p != ' ') p++;
    }
    f = fopen("/proc/stat", "r");
    if (!f) return -1.0;
    double btime = -1.0;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "btime ", 6) == 0) { btime = strtod(line + 6, NULL); break; }
    }
    fclose(f);
    if (btime < 0) return -1.0;
    return btime + (double)start / (double)sysconf(_SC_CLK_TCK);
}

/* Process `pid` exists and, when `start` is known, started then (so a recycled pid is not it). */
int ot_alive(uint64_t pid, double start) {
    if (pid == 0 || pid > (uint64_t)0x7fffffff) return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) return 0;
    if (start > 0) {
        double s = ot_proc_start((long)pid);
        if (s >= 0) {
            double d = s - start;
            return d < 0.5 && d > -0.5;
        }
    }
    return 1;
}

static double u2f(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }
static uint64_t f2u(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }

int ot_ring_attach(ot_ring *r, const char *name, double timeout_s, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    r->fd = -1;
    r->put_timeout = -1.0;
    if (!name[0] || strchr(name, '/') || strlen(name) > 200) {
        snprintf(err, errlen, "bad channel name '%s': use letters, digits, '-', '_' or '.'", name);
        return OT_ERR_CHANNEL;
    }
    snprintf(r->name, sizeof r->name, "%s", name);
    char path[256];
    snprintf(path, sizeof path, "/dev/shm/ot_%s", name);
    double deadline = ot_monotonic() + timeout_s;
    const char *why = "not found";
    for (;;) {
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd >= 0) {
            struct stat st;
            uint64_t head[2] = {0, 0};
            if (fstat(fd, &st) == 0 && st.st_size >= CTL_SIZE && pread(fd, head, 16, 0) == 16 &&
                head[0] == RING_MAGIC) {
                if (head[1] % 64 || CTL_SIZE + head[1] > (uint64_t)st.st_size) {
                    close(fd);
                    snprintf(err, errlen, "%s is not an onlinetrain ring (bad capacity %llu)",
                             path, (unsigned long long)head[1]);
                    return OT_ERR_CHANNEL;
                }
                /* no MAP_POPULATE: the consumer allocated every page; this process faults in
                 * only those it writes (the whole 64 MB ring cost ~30 ms per ot_init, paid by
                 * every short simulation: bench/attach.py) */
                void *m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE,
                               MAP_SHARED, fd, 0);
                if (m == MAP_FAILED) {
                    int e = errno;
                    close(fd);
                    snprintf(err, errlen, "cannot map %s: %s", path, strerror(e));
                    return OT_ERR_SYS;
                }
                r->fd = fd;
                r->base = m;
                r->size = (size_t)st.st_size;
                r->ctl = (uint64_t *)m;
                r->cap = head[1];
                r->data = (uint8_t *)m + CTL_SIZE;
                r->owner_pid = r->ctl[C_OWNER];
                r->owner_start = u2f(r->ctl[C_OWNER_T]);
                if (!LOAD_ACQ(&r->ctl[C_CLOSED]) && ot_alive(r->owner_pid, r->owner_start)) break;
                why = "exists but its consumer is gone";
                munmap(m, r->size);
                r->base = NULL;
                r->fd = -1;
            } else {
                why = "exists but is not (yet) a ring: no magic";
            }
            close(fd);
        } else if (errno != ENOENT) {
            snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
            return OT_ERR_SYS;
        }
        if (ot_monotonic() >= deadline) {
            if (strcmp(why, "exists but its consumer is gone") == 0) {
                snprintf(err, errlen, "channel shm://%s %s", name, why);
                return OT_ERR_CONSUMER_GONE;
            }
            snprintf(err, errlen, "channel shm://%s %s after %g s (%s): start the consumer (`ot "
                     "train --from shm://%s`) first, or check the name", name, why, timeout_s,
                     path, name);
            return OT_ERR_CHANNEL;
        }
        sleep_s(0.05);
    }
    r->lock_kind = (int)r->ctl[C_LOCK_KIND];
    r->mutex = (pthread_mutex_t *)(r->base + MUTEX_AT);
    pthread_mutex_init(&r->local, NULL);
    r->pid = (uint64_t)getpid();
    r->ptime_bits = f2u(ot_proc_start((long)getpid()));
    uint64_t id = 0;
    int u = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (u < 0 || read(u, &id, sizeof id) != sizeof id) id = (uint64_t)ot_monotonic() ^ r->pid << 32;
    if (u >= 0) close(u);
    r->producer_id = id & ((1ULL << 56) - 1);
    r->next_check = ot_monotonic() + CONSUMER_CHECK_S;
    const char *hook = getenv("OT_CLIENT_TEST_PAUSE"); /* tests: widen a crash window, then wait */
    if (hook) {
        r->pause_mode = strncmp(hook, "locked", 6) == 0 ? 1 : strncmp(hook, "reserved", 8) == 0 ? 2 : 0;
        const char *c = strchr(hook, ':');
        r->pause_after = c ? atoi(c + 1) : 0;
    }
    return OT_OK;
}

static int consumer_gone(ot_ring *r, char *err, size_t errlen) {
    if (LOAD_ACQ(&r->ctl[C_CLOSED]) || !ot_alive(r->owner_pid, r->owner_start)) {
        snprintf(err, errlen, "the consumer of shm://%s (pid %llu) is gone; nothing more can be "
                 "delivered", r->name, (unsigned long long)r->owner_pid);
        return 1;
    }
    return 0;
}

static int lock(ot_ring *r, char *err, size_t errlen) {
    if (r->lock_kind == 1) {
        int rc = pthread_mutex_lock(r->mutex);
        if (rc == EOWNERDEAD) { /* its holder died; nothing it did is published: carry on */
            pthread_mutex_consistent(r->mutex);
            return OT_OK;
        }
        if (rc == 0) return OT_OK;
        if (rc == ENOTRECOVERABLE)
            snprintf(err, errlen, "the lock of ring shm://%s is unrecoverable (a holder died and "
                     "the next one unlocked it without pthread_mutex_consistent): restart the "
                     "trainer to recreate the ring", r->name);
        else
            snprintf(err, errlen, "pthread_mutex_lock on ring shm://%s failed: %s", r->name,
                     strerror(rc));
        return OT_ERR_SYS;
    }
    pthread_mutex_lock(&r->local);
    while (flock(r->fd, LOCK_EX) != 0) {
        if (errno == EINTR) continue;
        int e = errno;
        pthread_mutex_unlock(&r->local);
        snprintf(err, errlen, "flock on ring shm://%s failed: %s", r->name, strerror(e));
        return OT_ERR_SYS;
    }
    return OT_OK;
}

static void unlock(ot_ring *r) {
    if (r->lock_kind == 1) {
        pthread_mutex_unlock(r->mutex);
    } else {
        flock(r->fd, LOCK_UN);
        pthread_mutex_unlock(&r->local);
    }
}

static void test_pause(ot_ring *r, int mode, uint64_t done) { /* done: puts before this one */
    if (r->pause_mode == mode && done >= (uint64_t)r->pause_after) {
        fprintf(stderr, "ot_client test hook: paused %s\n", mode == 1 ? "locked" : "reserved");
        for (;;) pause();
    }
}

int ot_ring_reserve(ot_ring *r, uint64_t len, uint8_t **frame, uint64_t *slot_off,
                    char *err, size_t errlen) {
    uint64_t slot = SLOT_HDR + ((len + 63) & ~(uint64_t)63), cap = r->cap;
    if (slot > cap) {
        snprintf(err, errlen, "frame of %llu bytes does not fit ring shm://%s of %llu bytes; "
                 "create the ring larger (ring_mb)", (unsigned long long)len, r->name,
                 (unsigned long long)cap);
        return OT_ERR_TOO_BIG;
    }
    double now = ot_monotonic(), deadline = -1.0;
    if (LOAD_ACQ(&r->ctl[C_CLOSED]) || now >= r->next_check) {
        r->next_check = now + CONSUMER_CHECK_S;
        if (consumer_gone(r, err, errlen)) return OT_ERR_CONSUMER_GONE;
    }
    for (unsigned spins = 0;; spins++) {
        int rc = lock(r, err, errlen);
        if (rc) return rc;
        test_pause(r, 1, r->puts);
        uint64_t w = r->ctl[C_WRITE], limit = LOAD_ACQ(&r->ctl[C_READ]) + cap;
        uint64_t off = w % cap, tail = cap - off;
        int fits;
        if (slot > tail) { /* space check first, then the PAD that skips the region's end */
            fits = w + tail + slot <= limit;
            if (fits) {
                uint64_t *q = (uint64_t *)(r->data + off);
                q[1] = tail - SLOT_HDR; /* a PAD slot needs only its length and state */
                STORE_REL(&q[0], PAD);
                w += tail;
                off = 0;
            }
        } else {
            fits = w + slot <= limit;
        }
        if (fits) {
            uint64_t *q = (uint64_t *)(r->data + off), seq = r->ctl[C_SEQ];
            q[1] = len;
            q[2] = r->pid;
            q[3] = seq;
            q[4] = r->producer_id;
            q[5] = r->ptime_bits;
            q[6] = q[7] = 0;
            q[0] = WRITING;
            r->ctl[C_SEQ] = seq + 1;
            STORE_REL(&r->ctl[C_WRITE], w + slot); /* publish: readers see the header above */
            unlock(r);
            r->puts++;
            *frame = r->data + off + SLOT_HDR;
            *slot_off = off;
            return OT_OK;
        }
        unlock(r);
        /* full: wait for the consumer (backpressure), checking now and then that it lives */
        now = ot_monotonic();
        if (deadline < 0 && r->put_timeout >= 0) deadline = now + r->put_timeout;
        if (now >= r->next_check) {
            r->next_check = now + CONSUMER_CHECK_S / 2;
            if (consumer_gone(r, err, errlen)) return OT_ERR_CONSUMER_GONE;
        }
        if (deadline >= 0 && now >= deadline) {
            snprintf(err, errlen, "ring shm://%s stayed full for %g s (consumer too slow or "
                     "stalled)", r->name, r->put_timeout);
            return OT_ERR_TIMEOUT;
        }
        if (spins < 20) continue;
        sleep_s(spins < 100 ? 0.0 : (spins - 99) * 2e-5 < 1e-3 ? (spins - 99) * 2e-5 : 1e-3);
    }
}

void ot_ring_commit(ot_ring *r, uint64_t slot_off) {
    test_pause(r, 2, r->puts - 1);
    STORE_REL((uint64_t *)(r->data + slot_off), COMMITTED); /* after every frame byte */
}

void ot_ring_abort(ot_ring *r, uint64_t slot_off) {
    STORE_REL((uint64_t *)(r->data + slot_off), PAD);
}

void ot_ring_detach(ot_ring *r) {
    if (r->base) munmap(r->base, r->size);
    if (r->fd >= 0) close(r->fd);
    if (r->base) pthread_mutex_destroy(&r->local);
    r->base = NULL;
    r->fd = -1;
}
