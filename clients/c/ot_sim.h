/* Internal to the onlinetrain C client: the handle's layout, shared by ot_client.c (frames,
 * counts, finalize) and ot_env.c (environment, heartbeat, errors). Not installed. */
#ifndef OT_SIM_H
#define OT_SIM_H

#include "ot_client.h"
#include "ot_ring.h"

#include <pthread.h>
#include <stdatomic.h>

#define FIXED 48
#define MAX_NDIM 8
#define MAX_PARAMS 4096
#define MAX_NAME 255
#define MAX_META 16384
#define KIND_DATA 0
#define KIND_SIM_END 1
#define KIND_SIM_FAILED 2

typedef struct {
    char name[MAX_NAME + 1];
    int64_t last_step, steps, cur_pieces, max_pieces; /* what this process sent */
    int64_t ann_steps, ann_pieces;                    /* ot_announce */
    int sent, announced;
} field_count;

struct ot_sim {
    ot_ring ring;
    int64_t sim_id;
    double *params;
    uint32_t n_params;
    int progress_fd;
    _Atomic uint64_t beats;          /* frames sent + heartbeats: the progress counter */
    _Atomic uint64_t sent;           /* data frames sent */
    _Atomic double last_progress;     /* monotonic time of the last progress write */
    pthread_mutex_t counts_lock;
    field_count *fields;
    int n_fields, cap_fields, any_announced;
    char err[512];
};

/* Set the handle's message (printf-style) and return `status`. */
int ot__fail(ot_sim *s, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Bump the progress counter; rewrite the heartbeat file if 50 ms passed (or `force`). */
void ot__progress(ot_sim *s, int force);

#endif
