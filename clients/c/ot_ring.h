/* Internal to the onlinetrain C client: the producer side of the shm ring (docs/wire-format.md). */
#ifndef OT_RING_H
#define OT_RING_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int fd;
    uint8_t *base;            /* the whole mapping: 4 KiB control block, then the data region */
    size_t size;
    uint64_t cap;             /* bytes of the data region */
    uint64_t *ctl;            /* control block words */
    uint8_t *data;
    int lock_kind;            /* 1: robust pthread mutex at byte 512; 0: flock on fd */
    pthread_mutex_t *mutex;   /* lock kind 1 */
    pthread_mutex_t local;    /* lock kind 0: threads of this process exclude each other */
    uint64_t owner_pid;
    double owner_start;
    uint64_t pid, ptime_bits, producer_id;
    double put_timeout;       /* < 0: wait for room as long as the consumer lives */
    _Atomic double next_check; /* monotonic time of the next consumer liveness check */
    int pause_mode, pause_after; /* test hook: OT_CLIENT_TEST_PAUSE=locked|reserved:N */
    _Atomic uint64_t puts;    /* reservations made (the test hook counts them) */
    char name[256];
} ot_ring;

/* Status codes are those of ot_client.h. `err` receives a one-line message on failure. */
int ot_ring_attach(ot_ring *r, const char *name, double timeout_s, char *err, size_t errlen);
/* Reserve a slot for a frame of `len` bytes; *frame points at where the frame goes, *slot_off is
 * the slot's data offset (for ot_ring_commit). */
int ot_ring_reserve(ot_ring *r, uint64_t len, uint8_t **frame, uint64_t *slot_off,
                    char *err, size_t errlen);
void ot_ring_commit(ot_ring *r, uint64_t slot_off);
void ot_ring_abort(ot_ring *r, uint64_t slot_off);  /* the slot becomes PAD: readers skip it */
void ot_ring_detach(ot_ring *r);

double ot_monotonic(void);
double ot_proc_start(long pid);  /* seconds since the epoch, as psutil's create_time; < 0: gone */
int ot_alive(uint64_t pid, double start);

#endif
