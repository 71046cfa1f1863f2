/* Misuses of Melissa's API that must end the program with one clear line (tests/test_melissa_api.py):
 *     melissa_misuse unregistered | twice | uneven | negative
 */
#include <string.h>

#include <mpi.h>
#include <melissa_api.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    double v[4] = {1, 2, 3, 4};
    const char *what = argc > 1 ? argv[1] : "";
    if (strcmp(what, "negative") == 0) melissa_init("u", -3, MPI_COMM_WORLD);
    melissa_init("u", 4, MPI_COMM_WORLD);
    if (strcmp(what, "unregistered") == 0) melissa_send("velocity", v);
    if (strcmp(what, "twice") == 0) melissa_init("u", 4, MPI_COMM_WORLD);
    melissa_send("u", v);
    if (strcmp(what, "uneven") == 0 && rank == 1) melissa_send("u", v);
    melissa_finalize();
    MPI_Finalize();
    return 0;
}
