/* Melissa's client API, implemented on the onlinetrain C client: a solver instrumented for
 * Melissa compiles against this header and links against this library with no source change,
 * and streams to an onlinetrain trainer (`ot run`, `ot simulate`, `ot slurm`).
 *
 * Written from Melissa's public API documentation (the prototypes below are the documented ones;
 * the documentation gives no return value: every function returns void). Not Melissa's code.
 *
 *     #include <melissa_api.h>
 *     melissa_init("temperature", n_local, MPI_COMM_WORLD);   // once per field, collective
 *     melissa_init("pressure", n_local, MPI_COMM_WORLD);
 *     for (step...) {
 *         melissa_send("temperature", t_local);               // one time step of that field
 *         melissa_send_with_metadata("pressure", p_local, "{\"t\": 0.25}");
 *     }
 *     melissa_finalize();                                     // collective, before MPI_Finalize
 *
 * Build: mpicc mysim.c $(python -m onlinetrain.clientflags --melissa --cflags --libs)
 *        mpif90 mysim.f90 $(python -m onlinetrain.clientflags --melissa --cflags --libs)
 *        (Fortran: `include "mpif.h"` then `include "melissa_api.f90"`, as with Melissa.)
 *
 * Semantics (docs/from-melissa.md):
 * - Connection: the first melissa_init connects this process to the channel named by the
 *   environment `ot run` / `ot simulate` / `ot slurm` set for the program (OT_CHANNEL, OT_SIM_ID,
 *   OT_PARAMS; see ot_client.h). The simulation's parameters reach the program the Melissa way,
 *   as command-line arguments: write them in `solver.argv` as "{p0}", "{p1}", ...
 * - Each melissa_init registers one field: `local_vect_size` doubles on this rank. The field is
 *   the concatenation of every rank's vector in rank order of `comm` (a 1-D field of the sum of the
 *   sizes); each send is one piece of it. A rank with size 0 sends nothing for that field.
 * - Time steps are counted per field: the k-th send of a field (from 0) is time step k.
 * - `metadata_json` (at most 16384 bytes) travels with the piece and reaches the adapter.
 * - melissa_finalize waits for every rank of each field's communicator; then rank 0 of the
 *   first field's communicator sends SIM_END announcing each field's count of steps and pieces.
 *   Every rank must send each field the same number of times.
 * - A single static context per process holds the connection and the fields (Melissa's API has
 *   no handle): one simulation per process, fields registered in the same order on every rank.
 * - Errors (a field sent before melissa_init, the trainer gone, ...) print one line naming the
 *   value and the fix on stderr and abort the program (MPI_Abort): the launcher counts the
 *   simulation as crashed and restarts it (simulate.max_restarts).
 */
#ifndef MELISSA_API_H
#define MELISSA_API_H

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

void melissa_init(const char *field_name, const int local_vect_size, MPI_Comm comm);

/* Fortran: arguments by reference, the communicator as a Fortran handle (converted with
 * MPI_Comm_f2c); `field_name` must be NUL-terminated (trim(name)//char(0)), as with Melissa. */
void melissa_init_f(const char *field_name, int *local_vect_size, MPI_Fint *comm_fortran);

void melissa_send(const char *field_name, const double *send_vect);

void melissa_send_with_metadata(const char *field_name, const double *send_vect,
                                const char *metadata_json);

void melissa_finalize(void);

#ifdef __cplusplus
}
#endif
#endif /* MELISSA_API_H */
