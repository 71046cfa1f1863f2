/* onlinetrain C client: the OT_* environment, the launcher's heartbeat file, status and error
 * messages, accessors. API: ot_client.h; protocol: docs/wire-format.md. */
#define _GNU_SOURCE
#include "ot_sim.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int ot__fail(ot_sim *s, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return status;
}

const char *ot_strerror(int status) {
    switch (status) {
    case OT_OK: return "ok";
    case OT_ERR_ARG: return "bad argument";
    case OT_ERR_ENV: return "bad or missing OT_* environment variable";
    case OT_ERR_CHANNEL: return "channel not found or not a ring";
    case OT_ERR_CONSUMER_GONE: return "the consumer (trainer) is gone";
    case OT_ERR_TOO_BIG: return "frame larger than the ring";
    case OT_ERR_SYS: return "system call failed";
    case OT_ERR_NOMEM: return "out of memory";
    case OT_ERR_TIMEOUT: return "ring stayed full for the put timeout";
    default: return "unknown status";
    }
}

const char *ot_errmsg(const ot_sim *s) { return s ? s->err : "no handle (NULL)"; }
int64_t ot_sim_id(const ot_sim *s) { return s ? s->sim_id : -1; }

int ot_params(const ot_sim *s, const double **params, uint32_t *n) {
    if (!s || !params || !n) return OT_ERR_ARG;
    *params = s->params;
    *n = s->n_params;
    return OT_OK;
}

int ot_set_put_timeout(ot_sim *s, double seconds) {
    if (!s) return OT_ERR_ARG;
    s->ring.put_timeout = seconds;
    return OT_OK;
}

void ot__progress(ot_sim *s, int force) {
    uint64_t n = atomic_fetch_add(&s->beats, 1) + 1;
    if (s->progress_fd < 0) return;
    double now = ot_monotonic();
    if (!force && now - atomic_load(&s->last_progress) < 0.05) return;
    atomic_store(&s->last_progress, now);
    char buf[21];
    snprintf(buf, sizeof buf, "%20llu", (unsigned long long)n);
    if (pwrite(s->progress_fd, buf, 20, 0) != 20) { /* the launcher may time us out; go on */
    }
}

int ot_heartbeat(ot_sim *s) {
    if (!s) return OT_ERR_ARG;
    ot__progress(s, 0);
    return OT_OK;
}

/* OT_PARAMS: a JSON list of numbers. */
static int parse_params(const char *txt, double **out, uint32_t *n) {
    const char *p = txt;
    while (*p == ' ' || *p == '\t' || *p == '\n') p++;
    if (*p++ != '[') return -1;
    size_t cap = 8, k = 0;
    double *v = malloc(cap * sizeof *v);
    if (!v) return -1;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n') p++;
        if (*p == ']' && k == 0) { p++; break; }
        char *end;
        errno = 0;
        double x = strtod(p, &end);
        if (end == p || errno == ERANGE || k >= MAX_PARAMS) { free(v); return -1; }
        if (k == cap) {
            double *w = realloc(v, (cap *= 2) * sizeof *v);
            if (!w) { free(v); return -1; }
            v = w;
        }
        v[k++] = x;
        p = end;
        while (*p == ' ' || *p == '\t' || *p == '\n') p++;
        if (*p == ',') { p++; continue; }
        if (*p == ']') { p++; break; }
        free(v);
        return -1;
    }
    while (*p == ' ' || *p == '\t' || *p == '\n') p++;
    if (*p) { free(v); return -1; }
    *out = v;
    *n = (uint32_t)k;
    return 0;
}

int ot_init_env(ot_sim **out) {
    if (!out) return OT_ERR_ARG;
    *out = NULL;
    const char *ch = getenv("OT_CHANNEL"), *sid = getenv("OT_SIM_ID"), *par = getenv("OT_PARAMS");
    const char *to = getenv("OT_CONNECT_TIMEOUT");
    const char *miss = !ch ? "OT_CHANNEL" : !sid ? "OT_SIM_ID" : !par ? "OT_PARAMS" : NULL;
    if (miss) {
        fprintf(stderr, "ot_init_env: %s is not set: run under `ot simulate` / `ot run`, or call "
                "ot_init with explicit values\n", miss);
        return OT_ERR_ENV;
    }
    char *end;
    errno = 0;
    long long id = strtoll(sid, &end, 10);
    if (end == sid || *end || errno) {
        fprintf(stderr, "ot_init_env: OT_SIM_ID=%s is not an integer\n", sid);
        return OT_ERR_ENV;
    }
    double timeout = 30.0;
    if (to && *to) {
        timeout = strtod(to, &end);
        if (end == to || *end) {
            fprintf(stderr, "ot_init_env: OT_CONNECT_TIMEOUT=%s is not a number of seconds\n", to);
            return OT_ERR_ENV;
        }
    }
    double *params = NULL;
    uint32_t n = 0;
    if (parse_params(par, &params, &n) != 0) {
        fprintf(stderr, "ot_init_env: OT_PARAMS=%s is not a JSON list of at most %d numbers\n",
                par, MAX_PARAMS);
        return OT_ERR_ENV;
    }
    int rc = ot_init(out, ch, (int64_t)id, params, n, timeout, getenv("OT_PROGRESS"));
    free(params);
    return rc;
}

