/* Melissa's client API (melissa_api.h) on the onlinetrain C client (ot_client.h).
 *
 * One static context per process: the ot_sim connection, opened by the first melissa_init from
 * the OT_* environment, and the registry of fields (name, communicator, this rank's offset and
 * size in the field, the field's total size, the sends so far). Each send is one piece of a 1-D
 * field: global shape {total}, offset {sum of the sizes of the lower ranks}. Compiled with the
 * user's MPI compiler wrapper (MPI_Comm is the MPI library's own type).
 */
#define _POSIX_C_SOURCE 200809L
#include "melissa_api.h"
#include "ot_client.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_FIELDS 256

typedef struct {
    char name[256];
    MPI_Comm comm;           /* a duplicate of the solver's communicator */
    int rank, size;          /* in comm */
    long long local, offset, total;
    int pieces;              /* ranks of comm with local > 0 */
    int64_t sends;           /* time steps sent by this rank */
} mfield;

static struct {
    ot_sim *sim;
    mfield fields[MAX_FIELDS];
    int n_fields;
    int finalized;
} ctx;

/* Print "FN: message" as one write (ranks' lines never interleave), close the connection and
 * abort every rank. `quiet`: a collective error every rank found; only rank 0 of `comm` says it.
 * The pause before MPI_Abort lets mpiexec forward the line before it tears the job down. */
static void die_(int quiet, MPI_Comm comm, const char *fn, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static void die_(int quiet, MPI_Comm comm, const char *fn, const char *fmt, ...) {
    char line[1024];
    int n = snprintf(line, sizeof line, "%s: ", fn);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    strcat(line, "\n");
    if (!quiet && write(2, line, strlen(line)) < 0) { /* nothing more to do */
    }
    if (ctx.sim) {
        ot_close(ctx.sim);
        ctx.sim = NULL;
    }
    int up = 0, down = 0, size = 1;
    MPI_Initialized(&up);
    MPI_Finalized(&down);
    if (up && !down) {
        if (comm == MPI_COMM_NULL) comm = MPI_COMM_WORLD;
        MPI_Comm_size(comm, &size);
        if (size > 1) nanosleep(&(struct timespec){0, 500000000L}, NULL);
        MPI_Abort(comm, 1);
    }
    exit(1);
}
#define die(comm, fn, ...) die_(0, comm, fn, __VA_ARGS__)

static mfield *find(const char *name) {
    for (int i = 0; i < ctx.n_fields; i++)
        if (strcmp(ctx.fields[i].name, name) == 0) return &ctx.fields[i];
    return NULL;
}

static int field_name_ok(const char *fn, const char *name) {
    if (!name) die(MPI_COMM_WORLD, fn, "field_name is NULL: give the field's name");
    size_t n = strnlen(name, 256);
    if (n == 0 || n > 255)
        die(MPI_COMM_WORLD, fn, "field name '%.255s' has %s bytes: use 1..255 (NUL-terminated; "
            "in Fortran trim(name)//char(0))", name, n ? "more than 255" : "0");
    return 1;
}

void melissa_init(const char *field_name, const int local_vect_size, MPI_Comm comm) {
    static const char *fn = "melissa_init";
    field_name_ok(fn, field_name);
    int up = 0;
    MPI_Initialized(&up);
    if (!up) die(MPI_COMM_WORLD, fn, "field '%s': MPI is not initialized: call MPI_Init first",
                 field_name);
    if (ctx.finalized)
        die(comm, fn, "field '%s': melissa_finalize was already called", field_name);
    if (find(field_name))
        die(comm, fn, "field '%s' is already registered: call melissa_init once per field",
            field_name);
    if (ctx.n_fields == MAX_FIELDS)
        die(comm, fn, "field '%s': too many fields: at most %d", field_name, MAX_FIELDS);
    if (local_vect_size < 0)
        die(comm, fn, "field '%s': local_vect_size = %d: give the number of doubles this rank "
            "sends (>= 0)", field_name, local_vect_size);
    mfield *f = &ctx.fields[ctx.n_fields];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", field_name);
    MPI_Comm_dup(comm, &f->comm); /* our collectives never mix with the solver's */
    comm = f->comm;
    MPI_Comm_rank(comm, &f->rank);
    MPI_Comm_size(comm, &f->size);
    long long mine = local_vect_size, below = 0, total = 0;
    int has = local_vect_size > 0, pieces = 0;
    MPI_Exscan(&mine, &below, 1, MPI_LONG_LONG, MPI_SUM, comm);
    if (f->rank == 0) below = 0; /* MPI_Exscan leaves rank 0's result undefined */
    MPI_Allreduce(&mine, &total, 1, MPI_LONG_LONG, MPI_SUM, comm);
    MPI_Allreduce(&has, &pieces, 1, MPI_INT, MPI_SUM, comm);
    f->local = mine;
    f->offset = below;
    f->total = total;
    f->pieces = pieces;
    if (!ctx.sim && ot_init_env(&ctx.sim) != OT_OK) /* the message is on stderr already */
        die(comm, fn, "field '%s': cannot connect to the trainer (see above)", field_name);
    ctx.n_fields++;
}

void melissa_init_f(const char *field_name, int *local_vect_size, MPI_Fint *comm_fortran) {
    if (!local_vect_size || !comm_fortran)
        die(MPI_COMM_WORLD, "melissa_init_f", "field '%.255s': local_vect_size or comm is NULL",
            field_name ? field_name : "(null)");
    melissa_init(field_name, *local_vect_size, MPI_Comm_f2c(*comm_fortran));
}

static void msend(const char *fn, const char *field_name, const double *v, const char *meta) {
    field_name_ok(fn, field_name);
    mfield *f = find(field_name);
    if (!f)
        die(MPI_COMM_WORLD, fn, "field '%s' was not registered: call melissa_init(\"%s\", "
            "local_vect_size, comm) first", field_name, field_name);
    if (ctx.finalized || !ctx.sim)
        die(f->comm, fn, "field '%s': melissa_finalize was already called", field_name);
    int64_t step = f->sends++;
    if (f->local == 0) return; /* this rank holds no part of the field */
    if (!v) die(f->comm, fn, "field '%s': send_vect is NULL", field_name);
    uint64_t shape = (uint64_t)f->local, global = (uint64_t)f->total, off = (uint64_t)f->offset;
    size_t meta_len = meta ? strlen(meta) : 0;
    int rc = ot_send_piece(ctx.sim, step, field_name, OT_FLOAT64, 1, &shape, &global, &off, v,
                           meta_len ? meta : NULL, meta_len);
    if (rc != OT_OK) die(f->comm, fn, "field '%s': %s", field_name, ot_errmsg(ctx.sim));
}

void melissa_send(const char *field_name, const double *send_vect) {
    msend("melissa_send", field_name, send_vect, NULL);
}

void melissa_send_with_metadata(const char *field_name, const double *send_vect,
                                const char *metadata_json) {
    msend("melissa_send_with_metadata", field_name, send_vect, metadata_json);
}

void melissa_finalize(void) {
    static const char *fn = "melissa_finalize";
    if (ctx.finalized) return;
    ctx.finalized = 1;
    if (!ctx.sim) return; /* no field was registered: nothing was sent */
    for (int i = 0; i < ctx.n_fields; i++) {
        mfield *f = &ctx.fields[i];
        long long mine = f->sends, lo = 0, hi = 0;
        MPI_Allreduce(&mine, &lo, 1, MPI_LONG_LONG, MPI_MIN, f->comm);
        MPI_Allreduce(&mine, &hi, 1, MPI_LONG_LONG, MPI_MAX, f->comm);
        if (lo != hi) /* every rank found it: rank 0 says it */
            die_(f->rank != 0, f->comm, fn, "field '%s' was sent between %lld and %lld times by "
                 "the ranks: every rank calls melissa_send once per time step", f->name, lo, hi);
        MPI_Barrier(f->comm); /* every rank's last piece is in the ring */
    }
    int lead = ctx.n_fields > 0 && ctx.fields[0].rank == 0;
    MPI_Comm abort_comm = ctx.n_fields > 0 ? ctx.fields[0].comm : MPI_COMM_WORLD;
    int rc = OT_OK;
    if (lead) {
        for (int i = 0; i < ctx.n_fields && rc == OT_OK; i++)
            if (ctx.fields[i].pieces > 0) /* a field of size 0 has nothing to wait for */
                rc = ot_announce(ctx.sim, ctx.fields[i].name, ctx.fields[i].sends,
                                 ctx.fields[i].pieces);
        if (rc == OT_OK) {
            rc = ot_finalize(ctx.sim); /* SIM_END with the counts; frees the handle */
            ctx.sim = NULL;
        }
    } else {
        ot_close(ctx.sim);
        ctx.sim = NULL;
    }
    if (rc != OT_OK) die(abort_comm, fn, "cannot end the simulation: %s",
                         ctx.sim ? ot_errmsg(ctx.sim) : ot_strerror(rc));
    for (int i = 0; i < ctx.n_fields; i++) MPI_Comm_free(&ctx.fields[i].comm);
}
