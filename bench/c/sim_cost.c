/* bench/attach.py's C producer: SIMS simulations one after the other, each ot_init (attach to
 * shm://NAME), STEPS sends of a CELLS-value float32 field "T", ot_finalize; prints the mean wall
 * time per simulation in ms.
 *     sim_cost shm://NAME SIMS STEPS CELLS */
#define _POSIX_C_SOURCE 200809L
#include "ot_client.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    int sims = atoi(argv[2]), steps = atoi(argv[3]);
    uint64_t cells = strtoull(argv[4], NULL, 10);
    float *a = calloc(cells, sizeof(float));
    double params[2] = {1.0, 2.0};
    double t0 = now();
    for (int s = 0; s < sims; s++) {
        ot_sim *h;
        if (ot_init(&h, argv[1], s, params, 2, 30.0, NULL) != OT_OK) return 3;
        for (int k = 0; k < steps; k++)
            if (ot_send(h, k, "T", OT_FLOAT32, 1, &cells, a) != OT_OK) {
                fprintf(stderr, "sim_cost: %s\n", ot_errmsg(h));
                return 5;
            }
        if (ot_finalize(h) != OT_OK) return 6;
    }
    printf("%.6f\n", (now() - t0) / sims * 1e3);
    free(a);
    return 0;
}
