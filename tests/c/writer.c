/* Test writer for tests/test_client_c.py: sends `frames` frames of field "x" whose length varies
 * with the step (so that a small ring wraps), value i + step at element i, then SIM_END.
 *   writer FRAMES [MODE]   MODE: "pieces" also sends field "P" as two pieces with metadata,
 *                          and an int32 field "I"; "sleep:S:B" sleeps S seconds in 0.1 s naps,
 *                          calling ot_heartbeat each nap when B is 1, then sends one frame. */
#define _POSIX_C_SOURCE 200809L
#include "ot_client.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int check(ot_sim *s, int rc) {
    if (rc != OT_OK) {
        fprintf(stderr, "writer: %s: %s\n", ot_strerror(rc), ot_errmsg(s));
        exit(1);
    }
    return rc;
}

int main(int argc, char **argv) {
    ot_sim *s;
    int rc = ot_init_env(&s);
    if (rc != OT_OK) return 10 + rc;
    int frames = argc > 1 ? atoi(argv[1]) : 10;
    const char *mode = argc > 2 ? argv[2] : "";
    if (strncmp(mode, "sleep:", 6) == 0) {
        double secs = atof(mode + 6);
        int beat = atoi(strrchr(mode, ':') + 1);
        struct timespec nap = {0, 100000000L};
        for (double t = 0; t < secs; t += 0.1) {
            nanosleep(&nap, NULL);
            if (beat) check(s, ot_heartbeat(s));
        }
    }
    float *buf = malloc(sizeof(float) * 5000);
    for (int k = 0; k < frames; k++) {
        uint64_t len = (uint64_t)(k * 7919) % 5000 + 1;
        for (uint64_t i = 0; i < len; i++) buf[i] = (float)(i + k);
        check(s, ot_send(s, k, "x", OT_FLOAT32, 1, &len, buf));
        if (strcmp(mode, "pieces") == 0) {
            double piece[6];
            uint64_t shape[2] = {2, 3}, global[2] = {4, 3};
            for (int r = 0; r < 2; r++) {
                uint64_t offset[2] = {(uint64_t)(2 * r), 0};
                for (int i = 0; i < 6; i++) piece[i] = 100.0 * k + 6 * r + i;
                char meta[64];
                int m = snprintf(meta, sizeof meta, "{\"rank\": %d}", r);
                check(s, ot_send_piece(s, k, "P", OT_FLOAT64, 2, shape, global, offset, piece,
                                       meta, (size_t)m));
            }
            int32_t iv[3] = {k, -k, 7};
            uint64_t three = 3;
            check(s, ot_send(s, k, "I", OT_INT32, 1, &three, iv));
        }
    }
    free(buf);
    return ot_finalize(s) == OT_OK ? 0 : 1;
}
