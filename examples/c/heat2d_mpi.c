/* heat2d in C with MPI, streamed through the onlinetrain C client: the same discretization as
 * solvers/heat2d.py (implicit Euler, 5-point stencil, matrix-free conjugate gradient warm-started
 * from the previous step, tolerance 1e-10, at most 10 n iterations), its n x n interior rows
 * split over the ranks. Each rank sends its rows of every step as a piece of field "T" (float64);
 * rank 0 announces (steps, ranks) in SIM_END.
 *
 *     make -C examples/c                   # builds heat2d_mpi with mpicc and the client's flags
 *     OT_CHANNEL=shm://demo OT_SIM_ID=0 OT_PARAMS='[100,200,300,400,500]' \
 *         mpiexec -n 2 examples/c/heat2d_mpi 32 100        # n steps (defaults 32 100)
 *
 * Under `ot run`: [solver] kind = "program", argv = ["mpiexec", "-n", "2", "examples/c/heat2d_mpi",
 * "32", "100"] (see heat2d-mpi.toml).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ot_client.h"

typedef struct {
    int n, rows, row0, rank, size; /* this rank owns global rows row0 .. row0 + rows - 1 */
    double h, walls[4];            /* Tx1 (row -1), Tx2 (row n), Ty1 (column -1), Ty2 (column n) */
} grid;

/* Rows 0 and rows + 1 of `x` (n columns each) are halos: fill them from the neighbours. */
static void halo(const grid *g, double *x) {
    int n = g->n, up = g->rank - 1, down = g->rank + 1;
    MPI_Sendrecv(x + n, n, MPI_DOUBLE, up >= 0 ? up : MPI_PROC_NULL, 0,
                 x + (size_t)(g->rows + 1) * n, n, MPI_DOUBLE,
                 down < g->size ? down : MPI_PROC_NULL, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    MPI_Sendrecv(x + (size_t)g->rows * n, n, MPI_DOUBLE, down < g->size ? down : MPI_PROC_NULL, 1,
                 x, n, MPI_DOUBLE, up >= 0 ? up : MPI_PROC_NULL, 1, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
}

/* out = 5-point Laplacian of x (with halos) and walls `w`, in numpy's order of operations:
 * (up + down + left + right - 4 x) / h^2. */
static void laplacian(const grid *g, double *x, const double *w, double *out) {
    int n = g->n;
    halo(g, x);
    for (int i = 1; i <= g->rows; i++) {
        int gi = g->row0 + i - 1;
        for (int j = 0; j < n; j++) {
            double c = x[(size_t)i * n + j];
            double up = gi == 0 ? w[0] : x[(size_t)(i - 1) * n + j];
            double down = gi == n - 1 ? w[1] : x[(size_t)(i + 1) * n + j];
            double left = j == 0 ? w[2] : x[(size_t)i * n + j - 1];
            double right = j == n - 1 ? w[3] : x[(size_t)i * n + j + 1];
            out[(size_t)(i - 1) * n + j] = (up + down + left + right - 4.0 * c) / (g->h * g->h);
        }
    }
}

static double dot(const grid *g, const double *a, const double *b) {
    double s = 0.0, t;
    for (size_t k = 0; k < (size_t)g->rows * g->n; k++) s += a[k] * b[k];
    MPI_Allreduce(&s, &t, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return t;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    grid g;
    MPI_Comm_rank(MPI_COMM_WORLD, &g.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g.size);
    g.n = argc > 1 ? atoi(argv[1]) : 32;
    int steps = argc > 2 ? atoi(argv[2]) : 100;
    if (g.n < 2 || steps < 1 || g.size > g.n) {
        if (g.rank == 0) fprintf(stderr, "heat2d_mpi: need n >= 2 (got %d), steps >= 1 (got %d) "
                                 "and at most n ranks (got %d)\n", g.n, steps, g.size);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    ot_sim *sim;
    if (ot_init_env(&sim) != OT_OK) MPI_Abort(MPI_COMM_WORLD, 2); /* the reason is on stderr */
    const double *p;
    uint32_t np;
    ot_params(sim, &p, &np);
    if (np != 5) {
        fprintf(stderr, "heat2d_mpi: takes 5 parameters (Tx1 Tx2 Ty1 Ty2 T_IC), got %u\n", np);
        ot_fail(sim, "heat2d_mpi: wrong number of parameters");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    int n = g.n, base = n / g.size, rem = n % g.size;
    g.rows = base + (g.rank < rem);
    g.row0 = g.rank * base + (g.rank < rem ? g.rank : rem);
    const double length = 10.0, alpha = 1.0, t_end = 1.0, tol = 1e-10;
    g.h = length / (n + 1);
    double dt = t_end / steps, adt = alpha * dt, zero[4] = {0, 0, 0, 0};
    memcpy(g.walls, p, sizeof g.walls);
    size_t cells = (size_t)g.rows * n, halo_cells = (size_t)(g.rows + 2) * n;
    double *u = calloc(halo_cells, sizeof *u), *x = calloc(halo_cells, sizeof *x);
    double *pp = calloc(halo_cells, sizeof *pp), *r = malloc(cells * sizeof *r);
    double *b = malloc(cells * sizeof *b), *ap = malloc(cells * sizeof *ap);
    double *wall_rhs = malloc(cells * sizeof *wall_rhs), *zeros = calloc(halo_cells, sizeof *zeros);
    for (size_t k = 0; k < cells; k++) u[n + k] = p[4];
    laplacian(&g, zeros, g.walls, wall_rhs); /* laplacian(0, walls) * a dt */
    for (size_t k = 0; k < cells; k++) wall_rhs[k] *= adt;
    uint64_t shape[2] = {(uint64_t)g.rows, (uint64_t)n}, global[2] = {(uint64_t)n, (uint64_t)n};
    uint64_t offset[2] = {(uint64_t)g.row0, 0};
    for (int step = 1; step <= steps; step++) {
        /* solve (I - a dt L) x = u + wall_rhs by CG from x = u */
        for (size_t k = 0; k < cells; k++) {
            b[k] = u[n + k] + wall_rhs[k];
            x[n + k] = u[n + k];
        }
        laplacian(&g, x, zero, ap);
        for (size_t k = 0; k < cells; k++) {
            r[k] = b[k] - (x[n + k] - adt * ap[k]);
            pp[n + k] = r[k];
        }
        double rr = dot(&g, r, r), bb = dot(&g, b, b);
        double stop = tol * tol * (bb > 1e-300 ? bb : 1e-300);
        for (int it = 0; it < 10 * n && rr > stop; it++) {
            laplacian(&g, pp, zero, ap);
            for (size_t k = 0; k < cells; k++) ap[k] = pp[n + k] - adt * ap[k];
            double a = rr / dot(&g, pp + n, ap);
            for (size_t k = 0; k < cells; k++) {
                x[n + k] += a * pp[n + k];
                r[k] -= a * ap[k];
            }
            double rr_new = dot(&g, r, r);
            for (size_t k = 0; k < cells; k++) pp[n + k] = pp[n + k] * (rr_new / rr) + r[k];
            rr = rr_new;
        }
        memcpy(u + n, x + n, cells * sizeof *u);
        int rc = ot_send_piece(sim, step, "T", OT_FLOAT64, 2, shape, global, offset, u + n, NULL, 0);
        if (rc != OT_OK) {
            fprintf(stderr, "heat2d_mpi rank %d: %s\n", g.rank, ot_errmsg(sim));
            ot_fail(sim, ot_errmsg(sim));
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    MPI_Barrier(MPI_COMM_WORLD); /* every rank's last piece is in the ring before SIM_END */
    int rc = OT_OK;
    if (g.rank == 0) {
        ot_announce(sim, "T", steps, g.size);
        rc = ot_finalize(sim);
    } else {
        ot_close(sim);
    }
    free(u); free(x); free(pp); free(r); free(b); free(ap); free(wall_rhs); free(zeros);
    MPI_Finalize();
    return rc == OT_OK ? 0 : 1;
}
