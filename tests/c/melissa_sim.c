/* A test solver written against Melissa's documented client API only (melissa_api.h): no
 * onlinetrain call. Two fields over MPI_COMM_WORLD with uneven rank sizes; the parameters come
 * as command-line arguments, as Melissa's launcher passes them.
 *
 *     melissa_sim OUTDIR NSTEPS P0 P1
 *
 * "temperature": 5 + 3 * rank doubles per rank, sent with melissa_send;
 * "pressure": 4 + rank doubles per rank, sent with melissa_send_with_metadata({"step": k}).
 * Each rank also appends what it sent to OUTDIR/FIELD-P0-rRANK.bin (raw float64, step after
 * step), the solver's own output the test compares the trainer's assembled fields with.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>
#include <melissa_api.h>

static FILE *out_file(const char *dir, const char *field, const char *p0, int rank) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s-%s-r%d.bin", dir, field, p0, rank);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    return f;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc != 5) {
        fprintf(stderr, "usage: melissa_sim OUTDIR NSTEPS P0 P1\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int nsteps = atoi(argv[2]);
    double p0 = strtod(argv[3], NULL), p1 = strtod(argv[4], NULL);
    int nt = 5 + 3 * rank, np_ = 4 + rank;
    double *t = malloc(nt * sizeof *t), *p = malloc(np_ * sizeof *p);
    for (int i = 0; i < nt; i++) t[i] = p0 + 0.01 * i + 0.1 * rank;
    for (int i = 0; i < np_; i++) p[i] = p1 * (i + 1) - rank;

    melissa_init("temperature", nt, MPI_COMM_WORLD);
    melissa_init("pressure", np_, MPI_COMM_WORLD);
    FILE *ft = out_file(argv[1], "temperature", argv[3], rank);
    FILE *fp = out_file(argv[1], "pressure", argv[3], rank);
    for (int k = 0; k < nsteps; k++) {
        for (int i = 0; i < nt; i++) t[i] = 0.9 * t[i] + sin(p1 * t[i] + k) / 3.0;
        for (int i = 0; i < np_; i++) p[i] = p[i] * 1.0001 + exp(-0.1 * k) * p0 / (i + 2);
        melissa_send("temperature", t);
        char meta[64];
        snprintf(meta, sizeof meta, "{\"step\": %d}", k);
        melissa_send_with_metadata("pressure", p, meta);
        fwrite(t, sizeof *t, nt, ft);
        fwrite(p, sizeof *p, np_, fp);
    }
    fclose(ft);
    fclose(fp);
    melissa_finalize();
    free(t);
    free(p);
    MPI_Finalize();
    return 0;
}
