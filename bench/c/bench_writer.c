/* bench/clients.py's C producer: attach to shm://NAME, print "ready", wait for a line on stdin,
 * send N frames of SIZE bytes (float32, field "T", 5 params) through the C client, then print the
 * seconds the send loop took.   bench_writer NAME SIZE N */
#define _POSIX_C_SOURCE 200809L
#include "ot_client.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    uint64_t size = strtoull(argv[2], NULL, 10), n = strtoull(argv[3], NULL, 10);
    double params[5] = {0, 1, 2, 3, 4};
    ot_sim *s;
    if (ot_init(&s, argv[1], 0, params, 5, 10.0, NULL) != OT_OK) return 3;
    uint64_t count = size / 4;
    float *a = malloc(size);
    for (uint64_t i = 0; i < count; i++) a[i] = 1.0f;
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 4;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint64_t k = 0; k < n; k++) {
        if (ot_send(s, (int64_t)k, "T", OT_FLOAT32, 1, &count, a) != OT_OK) {
            fprintf(stderr, "bench_writer: %s\n", ot_errmsg(s));
            return 5;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.9f\n", (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    fflush(stdout);
    ot_close(s);
    free(a);
    return 0;
}
