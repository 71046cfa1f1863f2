/* onlinetrain C client: stream a simulation's fields into the node's shared-memory ring.
 *
 * C11, libc + pthreads only; no global state: everything lives in the handle. Every call returns
 * an ot_status (OT_OK = 0); ot_errmsg(h) says what went wrong in words (value and fix).
 * The bytes written are the frame format version 2 of docs/wire-format.md; the ring protocol is
 * the one of onlinetrain's Python RingProducer (reserve under the ring lock, copy, commit).
 *
 *     ot_sim *sim;
 *     if (ot_init_env(&sim) != OT_OK) { ... }            // OT_CHANNEL, OT_SIM_ID, OT_PARAMS, ...
 *     const double *p; uint32_t np; ot_params(sim, &p, &np);
 *     for (int64_t k = 1; k <= steps; k++) {
 *         solve_step(u, p);
 *         uint64_t shape[2] = {n, n};
 *         if (ot_send(sim, k, "T", OT_FLOAT64, 2, shape, u) != OT_OK) { ot_fail(sim, ot_errmsg(sim)); ... }
 *     }
 *     ot_finalize(sim);                 // SIM_END announcing what was sent, close, free
 *
 * An MPI solver sends each rank's piece and lets one rank announce the totals:
 *
 *     uint64_t shape[2] = {my_rows, n}, global[2] = {n, n}, offset[2] = {my_first_row, 0};
 *     ot_send_piece(sim, k, "T", OT_FLOAT64, 2, shape, global, offset, u_local, NULL, 0);
 *     ...
 *     MPI_Barrier(comm);                 // every rank's last frame is in the ring
 *     if (rank == 0) { ot_announce(sim, "T", steps, nranks); ot_finalize(sim); }
 *     else ot_close(sim);
 *
 * Thread safety: one handle may be used by several threads of one process for ot_send /
 * ot_send_piece / ot_heartbeat; init, announce, finalize, fail and close must not race with them.
 * A process killed at any point (inside ot_send too) never blocks the ring for the others.
 * Build flags: `python -m onlinetrain.clientflags --cflags --libs` (see docs/clients.md).
 */
#ifndef OT_CLIENT_H
#define OT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OT_FRAME_VERSION 2

/* Status codes returned by every call. */
typedef enum {
    OT_OK = 0,
    OT_ERR_ARG = 1,           /* a bad argument (NULL handle, ndim > 8, unknown dtype, name too long,
                                 a piece outside its global shape, ...) */
    OT_ERR_ENV = 2,           /* an OT_* variable is missing or malformed (ot_init_env) */
    OT_ERR_CHANNEL = 3,       /* the channel does not exist in time, is not a ring, or its URL is
                                 not shm://NAME (the C client writes only to the node's ring) */
    OT_ERR_CONSUMER_GONE = 4, /* the trainer (the ring's consumer) exited or closed the ring */
    OT_ERR_TOO_BIG = 5,       /* the frame cannot fit the ring at all: ask for a larger ring_mb */
    OT_ERR_SYS = 6,           /* a system call failed (errno in the message) */
    OT_ERR_NOMEM = 7,         /* malloc failed */
    OT_ERR_TIMEOUT = 8        /* the ring stayed full for the handle's put timeout */
} ot_status;

/* Element types: the frame format's dtype codes. */
typedef enum {
    OT_FLOAT32 = 1, OT_FLOAT64 = 2, OT_INT32 = 3, OT_INT64 = 4,
    OT_UINT8 = 5, OT_FLOAT16 = 6, OT_INT16 = 7, OT_UINT16 = 8
} ot_dtype;

typedef struct ot_sim ot_sim; /* one simulation's connection (one per process / MPI rank) */

/* Connect from the environment `ot simulate` / `ot run` set for the program:
 * OT_CHANNEL (shm://NAME), OT_SIM_ID (integer), OT_PARAMS (JSON list of numbers),
 * OT_CONNECT_TIMEOUT (seconds to wait for the ring, default 30), OT_PROGRESS (optional: the
 * launcher's heartbeat file). On error *out is NULL and the message goes to stderr. */
int ot_init_env(ot_sim **out);

/* Connect with explicit values; `channel` is "shm://NAME" or "NAME"; `params` may be NULL when
 * n_params is 0; waits up to `timeout_s` seconds for the ring to exist; `progress_path` may be
 * NULL (no heartbeat file). On error *out is NULL and the message goes to stderr. */
int ot_init(ot_sim **out, const char *channel, int64_t sim_id, const double *params,
            uint32_t n_params, double timeout_s, const char *progress_path);

/* The simulation id and parameters of this handle (views owned by the handle). */
int64_t ot_sim_id(const ot_sim *sim);
int ot_params(const ot_sim *sim, const double **params, uint32_t *n_params);

/* Seconds a put may wait for room in a full ring before OT_ERR_TIMEOUT (default: forever, < 0);
 * it returns OT_ERR_CONSUMER_GONE as soon as the trainer is gone, whatever this is. */
int ot_set_put_timeout(ot_sim *sim, double seconds);

/* Send the whole field `field` (UTF-8, 1..255 bytes) at `time_step`: `ndim` (0..8) extents in
 * `shape`, elements of `dtype` in C order (row-major) at `data`, native little-endian. The bytes
 * are copied straight into the ring; `data` is free again on return. Blocks while the ring is full. */
int ot_send(ot_sim *sim, int64_t time_step, const char *field, ot_dtype dtype, int ndim,
            const uint64_t *shape, const void *data);

/* Send this process's piece of field `field`: the piece has extents `shape` and starts at
 * `offset` in a field of extents `global_shape` (both NULL: the whole field). `meta` (NULL or
 * meta_len bytes, at most 16384; JSON text by convention) travels with the frame. */
int ot_send_piece(ot_sim *sim, int64_t time_step, const char *field, ot_dtype dtype, int ndim,
                  const uint64_t *shape, const uint64_t *global_shape, const uint64_t *offset,
                  const void *data, const char *meta, size_t meta_len);

/* Show the launcher this simulation is alive while it sends nothing (a long solve): without it
 * (or sends), `simulate.simulation_timeout` kills the program. Cheap: call it as often as you like. */
int ot_heartbeat(ot_sim *sim);

/* Declare what SIM_END announces for field `field`: `steps` distinct time steps of `pieces`
 * pieces each, counted over ALL processes of the simulation. Without any ot_announce call,
 * ot_finalize announces what this process sent (steps counted as changes of time_step per field,
 * pieces as the most frames of one step). */
int ot_announce(ot_sim *sim, const char *field, int64_t steps, int64_t pieces);

/* End the simulation: send SIM_END with the counts, mark the heartbeat file, close the ring and
 * free the handle (also on error). One process of the simulation calls it; the others ot_close. */
int ot_finalize(ot_sim *sim);

/* The simulation failed: send SIM_FAILED with `reason` (cut to 255 bytes), close, free. */
int ot_fail(ot_sim *sim, const char *reason);

/* Close and free without announcing anything (MPI ranks other than the one that finalizes). */
int ot_close(ot_sim *sim);

/* The last error of this handle in words (never NULL; "" if none), and a status in words. */
const char *ot_errmsg(const ot_sim *sim);
const char *ot_strerror(int status);

#ifdef __cplusplus
}
#endif
#endif /* OT_CLIENT_H */
