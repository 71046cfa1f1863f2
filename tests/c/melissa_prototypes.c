/* Compile test: Melissa's documented client API prototypes, declared here first (transcribed from
 * Melissa's public API documentation), then our header. C requires every later declaration of a
 * function to be compatible with the earlier one: any difference in a return type or a parameter
 * type between the documentation and clients/melissa/melissa_api.h fails this build.
 * The address checks make the linker resolve every symbol from our library. */
#include <mpi.h>

void melissa_init(const char *field_name, const int local_vect_size, MPI_Comm comm);
void melissa_init_f(const char *field_name, int *local_vect_size, MPI_Fint *comm_fortran);
void melissa_send(const char *field_name, const double *send_vect);
void melissa_send_with_metadata(const char *field_name, const double *send_vect,
                                const char *metadata_json);
void melissa_finalize(void);
#ifdef OT_MISMATCH /* the test's control: a wrong prototype must fail the build */
void melissa_send(const char *field_name, const float *send_vect);
#endif

#include <melissa_api.h>

#include <stdio.h>

int main(void) {
    void (*init)(const char *, int, MPI_Comm) = melissa_init;
    void (*init_f)(const char *, int *, MPI_Fint *) = melissa_init_f;
    void (*snd)(const char *, const double *) = melissa_send;
    void (*snd_meta)(const char *, const double *, const char *) = melissa_send_with_metadata;
    void (*fin)(void) = melissa_finalize;
    printf("%d\n", init != NULL && init_f != NULL && snd != NULL && snd_meta != NULL && fin != NULL);
    return 0;
}
