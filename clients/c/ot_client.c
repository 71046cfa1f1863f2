/* onlinetrain C client: frames (format version 2, docs/wire-format.md) written straight into the
 * node's shared-memory ring, and the SIM_END counts (ot_env.c: the OT_* environment, heartbeat,
 * errors). API and usage: ot_client.h. */
#define _GNU_SOURCE
#include "ot_sim.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const size_t itemsize[9] = {0, 4, 8, 4, 8, 1, 2, 2, 2};

static void free_sim(ot_sim *s) {
    if (s->progress_fd >= 0) close(s->progress_fd);
    ot_ring_detach(&s->ring);
    pthread_mutex_destroy(&s->counts_lock);
    free(s->fields);
    free(s->params);
    free(s);
}

int ot_init(ot_sim **out, const char *channel, int64_t sim_id, const double *params,
            uint32_t n_params, double timeout_s, const char *progress_path) {
    if (!out) return OT_ERR_ARG;
    *out = NULL;
    if (!channel || (n_params && !params) || n_params > MAX_PARAMS) {
        fprintf(stderr, "ot_init: need a channel and at most %d params (got channel=%s, "
                "n_params=%u)\n", MAX_PARAMS, channel ? channel : "NULL", n_params);
        return OT_ERR_ARG;
    }
    ot_sim *s = calloc(1, sizeof *s);
    if (!s) return OT_ERR_NOMEM;
    s->progress_fd = -1;
    s->ring.fd = -1;
    pthread_mutex_init(&s->counts_lock, NULL);
    s->sim_id = sim_id;
    s->n_params = n_params;
    s->params = malloc(sizeof(double) * (n_params ? n_params : 1));
    if (!s->params) { free_sim(s); return OT_ERR_NOMEM; }
    if (n_params) memcpy(s->params, params, sizeof(double) * n_params);
    const char *name = channel;
    if (strncmp(channel, "shm://", 6) == 0) {
        name = channel + 6;
    } else if (strstr(channel, "://")) {
        fprintf(stderr, "ot_init: channel %s: the C client writes only to the node's ring "
                "(shm://NAME); run `ot relay shm://NAME %s` to forward it\n", channel, channel);
        free_sim(s);
        return OT_ERR_CHANNEL;
    }
    int rc = ot_ring_attach(&s->ring, name, timeout_s, s->err, sizeof s->err);
    if (rc) {
        fprintf(stderr, "ot_init: %s\n", s->err);
        free_sim(s);
        return rc;
    }
    if (progress_path && progress_path[0]) {
        s->progress_fd = open(progress_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (s->progress_fd < 0)
            fprintf(stderr, "ot_init: cannot report progress to %s (%s): the launcher may time "
                    "this simulation out\n", progress_path, strerror(errno));
    }
    *out = s;
    return OT_OK;
}

static void put_u16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* One frame: validate, reserve its slot, write header and payload into the ring, commit. */
static int put_frame(ot_sim *s, int kind, int64_t step, const char *name, size_t name_len,
                     int dtype, int ndim, const uint64_t *shape, const uint64_t *gshape,
                     const uint64_t *offset, const void *data, const char *meta, size_t meta_len) {
    if (dtype < 1 || dtype > 8) return ot__fail(s, OT_ERR_ARG, "unknown dtype code %d (use ot_dtype)", dtype);
    if (ndim < 0 || ndim > MAX_NDIM)
        return ot__fail(s, OT_ERR_ARG, "ndim %d: use 0..%d axes", ndim, MAX_NDIM);
    if (name_len > MAX_NAME)
        return ot__fail(s, OT_ERR_ARG, "field name of %zu bytes: at most %d", name_len, MAX_NAME);
    if (meta_len > MAX_META || (meta_len && !meta))
        return ot__fail(s, OT_ERR_ARG, "metadata of %zu bytes: at most %d (and not NULL)", meta_len,
                    MAX_META);
    if ((gshape == NULL) != (offset == NULL))
        return ot__fail(s, OT_ERR_ARG, "a piece needs both global_shape and offset (or neither)");
    uint64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        if (!shape) return ot__fail(s, OT_ERR_ARG, "shape is NULL with ndim %d", ndim);
        if (shape[i] > (1ULL << 48)) return ot__fail(s, OT_ERR_ARG, "extent %llu above 2^48", (unsigned long long)shape[i]);
        if (gshape && (gshape[i] > (1ULL << 48) || offset[i] > gshape[i] ||
                       shape[i] > gshape[i] - offset[i]))
            return ot__fail(s, OT_ERR_ARG, "piece of extent %llu at offset %llu on axis %d does not "
                        "lie inside global extent %llu", (unsigned long long)shape[i],
                        (unsigned long long)offset[i], i, (unsigned long long)gshape[i]);
        if (shape[i] && count > UINT64_MAX / 8 / shape[i]) return ot__fail(s, OT_ERR_ARG, "array too large");
        count *= shape[i];
    }
    uint64_t payload = count * itemsize[dtype];
    if (payload && !data) return ot__fail(s, OT_ERR_ARG, "data is NULL for %llu bytes", (unsigned long long)payload);
    int piece = gshape != NULL;
    uint64_t dims = (uint64_t)ndim * (piece ? 3 : 1);
    uint64_t hlen = (FIXED + 8 * dims + 8ULL * s->n_params + name_len + meta_len + 7) & ~7ULL;
    uint8_t *f;
    uint64_t slot;
    int rc = ot_ring_reserve(&s->ring, hlen + payload, &f, &slot, s->err, sizeof s->err);
    if (rc) return rc;
    memcpy(f, "OTFR", 4);
    put_u16(f + 4, OT_FRAME_VERSION);
    put_u16(f + 6, (uint16_t)hlen);
    f[8] = (uint8_t)kind;
    f[9] = (uint8_t)dtype;
    f[10] = (uint8_t)ndim;
    f[11] = (uint8_t)name_len;
    put_u32(f + 12, s->n_params);
    put_u64(f + 16, (uint64_t)s->sim_id);
    put_u64(f + 24, (uint64_t)step);
    put_u64(f + 32, payload);
    put_u32(f + 40, (uint32_t)meta_len);
    f[44] = piece ? 1 : 0;
    f[45] = f[46] = f[47] = 0;
    uint8_t *p = f + FIXED;
    if (ndim) {
        memcpy(p, shape, 8 * (size_t)ndim);
        p += 8 * ndim;
    }
    if (piece && ndim) {
        memcpy(p, gshape, 8 * (size_t)ndim);
        memcpy(p + 8 * ndim, offset, 8 * (size_t)ndim);
        p += 16 * ndim;
    }
    if (s->n_params) memcpy(p, s->params, 8 * (size_t)s->n_params);
    p += 8 * s->n_params;
    if (name_len) memcpy(p, name, name_len);
    p += name_len;
    if (meta_len) memcpy(p, meta, meta_len);
    p += meta_len;
    memset(p, 0, (size_t)(f + hlen - p));
    if (payload) memcpy(f + hlen, data, payload);
    ot_ring_commit(&s->ring, slot);
    return OT_OK;
}

static field_count *field_entry(ot_sim *s, const char *name) {
    for (int i = 0; i < s->n_fields; i++)
        if (strcmp(s->fields[i].name, name) == 0) return &s->fields[i];
    if (s->n_fields == s->cap_fields) {
        int cap = s->cap_fields ? 2 * s->cap_fields : 4;
        field_count *v = realloc(s->fields, (size_t)cap * sizeof *v);
        if (!v) return NULL;
        s->fields = v;
        s->cap_fields = cap;
    }
    field_count *e = &s->fields[s->n_fields++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    return e;
}

static int check_field(ot_sim *s, const char *field, size_t *len) {
    if (!field) return ot__fail(s, OT_ERR_ARG, "field name is NULL");
    *len = strlen(field);
    if (*len == 0 || *len > MAX_NAME)
        return ot__fail(s, OT_ERR_ARG, "field name '%s' has %zu bytes: use 1..%d", field, *len, MAX_NAME);
    return OT_OK;
}

int ot_send_piece(ot_sim *s, int64_t step, const char *field, ot_dtype dtype, int ndim,
                  const uint64_t *shape, const uint64_t *gshape, const uint64_t *offset,
                  const void *data, const char *meta, size_t meta_len) {
    if (!s) return OT_ERR_ARG;
    size_t len;
    int rc = check_field(s, field, &len);
    if (rc) return rc;
    rc = put_frame(s, KIND_DATA, step, field, len, (int)dtype, ndim, shape, gshape, offset, data,
                   meta, meta_len);
    if (rc) return rc;
    pthread_mutex_lock(&s->counts_lock);
    field_count *e = field_entry(s, field);
    if (e) {
        if (!e->sent || e->last_step != step) {
            e->steps++;
            e->cur_pieces = 0;
        }
        e->sent = 1;
        e->last_step = step;
        if (++e->cur_pieces > e->max_pieces) e->max_pieces = e->cur_pieces;
    }
    pthread_mutex_unlock(&s->counts_lock);
    atomic_fetch_add(&s->sent, 1);
    ot__progress(s, 0);
    return e ? OT_OK : ot__fail(s, OT_ERR_NOMEM, "no memory to count field '%s'", field);
}

int ot_send(ot_sim *s, int64_t step, const char *field, ot_dtype dtype, int ndim,
            const uint64_t *shape, const void *data) {
    return ot_send_piece(s, step, field, dtype, ndim, shape, NULL, NULL, data, NULL, 0);
}

int ot_announce(ot_sim *s, const char *field, int64_t steps, int64_t pieces) {
    if (!s) return OT_ERR_ARG;
    size_t len;
    int rc = check_field(s, field, &len);
    if (rc) return rc;
    if (steps < 0 || pieces < 1)
        return ot__fail(s, OT_ERR_ARG, "ot_announce('%s', %lld, %lld): need steps >= 0, pieces >= 1",
                    field, (long long)steps, (long long)pieces);
    pthread_mutex_lock(&s->counts_lock);
    field_count *e = field_entry(s, field);
    if (e) {
        e->announced = 1;
        e->ann_steps = steps;
        e->ann_pieces = pieces;
        s->any_announced = 1;
    }
    pthread_mutex_unlock(&s->counts_lock);
    return e ? OT_OK : ot__fail(s, OT_ERR_NOMEM, "no memory for field '%s'", field);
}

static int release(ot_sim *s, int rc) {
    ot__progress(s, 1);
    free_sim(s);
    return rc;
}

int ot_finalize(ot_sim *s) {
    if (!s) return OT_ERR_ARG;
    int n = 0;
    size_t meta_len = 0;
    int64_t *rows = malloc(sizeof(int64_t) * 2 * (size_t)(s->n_fields ? s->n_fields : 1));
    char *meta = malloc((size_t)(s->n_fields ? s->n_fields : 1) * (MAX_NAME + 1));
    if (!rows || !meta) {
        free(rows);
        free(meta);
        fprintf(stderr, "ot_finalize: out of memory; no SIM_END sent\n");
        return release(s, OT_ERR_NOMEM);
    }
    int64_t total = 0;
    for (int i = 0; i < s->n_fields; i++) {
        field_count *e = &s->fields[i];
        if (s->any_announced ? !e->announced : !e->sent) continue;
        int64_t st = s->any_announced ? e->ann_steps : e->steps;
        int64_t pc = s->any_announced ? e->ann_pieces : e->max_pieces;
        rows[2 * n] = st;
        rows[2 * n + 1] = pc;
        total += st * pc;
        if (n) meta[meta_len++] = '\0';
        size_t l = strlen(e->name);
        memcpy(meta + meta_len, e->name, l);
        meta_len += l;
        n++;
    }
    int rc = OT_OK;
    if (meta_len > MAX_META) {
        rc = ot__fail(s, OT_ERR_ARG, "SIM_END names %d fields in %zu bytes: at most %d", n, meta_len,
                  MAX_META);
    } else {
        uint64_t shape[2] = {(uint64_t)n, 2};
        rc = put_frame(s, KIND_SIM_END, total, "end", 3, OT_INT64, 2, shape, NULL, NULL, rows,
                       meta, meta_len);
    }
    free(rows);
    free(meta);
    if (rc) {
        fprintf(stderr, "ot_finalize: SIM_END not sent: %s\n", s->err);
    } else if (s->progress_fd >= 0 && pwrite(s->progress_fd, "E", 1, 20) != 1) {
        fprintf(stderr, "ot_finalize: cannot mark the progress file: %s\n", strerror(errno));
    }
    return release(s, rc);
}

int ot_fail(ot_sim *s, const char *reason) {
    if (!s) return OT_ERR_ARG;
    char why[MAX_NAME + 1];
    snprintf(why, sizeof why, "%s", reason && reason[0] ? reason : "-");
    size_t len = strlen(why), i = len;
    while (i && ((unsigned char)why[i - 1] & 0xC0) == 0x80) i--; /* the last character's start */
    if (i) {
        unsigned char lead = (unsigned char)why[i - 1];
        size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
        if (i - 1 + need > len) len = i - 1; /* cut inside a character: drop it */
    }
    why[len] = 0;
    uint64_t shape[1] = {0};
    int64_t sent = (int64_t)atomic_load(&s->sent);
    int rc = put_frame(s, KIND_SIM_FAILED, sent, why, len, OT_FLOAT32, 1, shape, NULL, NULL, NULL,
                       NULL, 0);
    if (rc) fprintf(stderr, "ot_fail: SIM_FAILED not sent: %s\n", s->err);
    return release(s, rc);
}

int ot_close(ot_sim *s) {
    if (!s) return OT_ERR_ARG;
    return release(s, OT_OK);
}
