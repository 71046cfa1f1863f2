/* bench/feed.py's C producer (the C client, as a solver would use it): attach to shm://NAME,
 * send FILL frames at once, print "filled", wait for a line on stdin, then send RATE frames/s
 * (paced, 1 ms ticks) for SECONDS or until SIGTERM; print the frames sent and exit.
 * Frames are SIDE x SIDE float32 of field "T", STEPS per simulation (one ot_init, ot_finalize:
 * SIM_END with the counts, frees the handle), 5 parameters.
 *     feed_producer NAME SIDE RATE FILL SECONDS STEPS */
#define _POSIX_C_SOURCE 200809L
#include "ot_client.h"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct { const char *name; uint64_t cells, steps, sent; float *a; ot_sim *s; } prod;

static int send_one(prod *p) {
    uint64_t sid = p->sent / p->steps, k = p->sent % p->steps;
    if (k == 0) {
        double params[5] = {300.0, 350.0, 250.0, 400.0, 200.0};
        if (ot_init(&p->s, p->name, (int64_t)sid, params, 5, 30.0, NULL) != OT_OK) return 3;
    }
    if (ot_send(p->s, (int64_t)k, "T", OT_FLOAT32, 1, &p->cells, p->a) != OT_OK) {
        fprintf(stderr, "feed_producer: %s\n", ot_errmsg(p->s));
        return 5;
    }
    p->sent++;
    if (k == p->steps - 1) {
        int rc = ot_finalize(p->s); /* frees the handle, also on error */
        p->s = NULL;
        if (rc != OT_OK) return 6;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 7) return 2;
    signal(SIGTERM, on_term);
    uint64_t side = strtoull(argv[2], NULL, 10), fill = strtoull(argv[4], NULL, 10);
    double rate = atof(argv[3]), seconds = atof(argv[5]);
    prod p = {argv[1], side * side, strtoull(argv[6], NULL, 10), 0, NULL, NULL};
    p.a = malloc(p.cells * sizeof(float));
    for (uint64_t i = 0; i < p.cells; i++) p.a[i] = 250.0f + (float)(i % 7);
    int rc = 0;
    while (!rc && p.sent < fill) rc = send_one(&p);
    printf("filled\n");
    fflush(stdout);
    char line[16];
    if (!rc && !fgets(line, sizeof line, stdin)) rc = 4;
    double t0 = now();
    uint64_t base = p.sent;
    struct timespec tick = {0, 1000000};
    while (!rc && !stop && rate > 0 && now() - t0 < seconds) {
        uint64_t due = base + (uint64_t)((now() - t0) * rate);
        while (!rc && p.sent < due) rc = send_one(&p);
        nanosleep(&tick, NULL);
    }
    printf("%llu\n", (unsigned long long)p.sent);
    fflush(stdout);
    if (p.s) ot_close(p.s);
    free(p.a);
    return rc;
}
