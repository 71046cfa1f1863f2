! Melissa's Fortran client API on onlinetrain: the interfaces of the C functions of
! melissa_api.h, for a solver instrumented for Melissa. Written from Melissa's public API
! documentation; not Melissa's code. Use it as Melissa documents (in the specification part):
!
!     include "mpif.h"
!     include "melissa_api.f90"
!     ...
!     character(len=*), parameter :: field = "temperature"//char(0)   ! NUL-terminated
!     call melissa_init_f(field, n_local, MPI_COMM_WORLD)
!     do k = 1, nsteps
!         call melissa_send(field, u)          ! u: real(8), any rank, n_local elements
!     end do
!     call melissa_finalize()
!
! Link: mpif90 sim.f90 $(python -m onlinetrain.clientflags --melissa --fortran --cflags --libs)
! Semantics: clients/melissa/melissa_api.h and docs/from-melissa.md.
interface
    subroutine melissa_init_f(field_name, local_vect_size, comm_fortran) &
            bind(c, name="melissa_init_f")
        use, intrinsic :: iso_c_binding, only: c_char, c_int
        character(kind=c_char), dimension(*), intent(in) :: field_name
        integer(c_int), intent(in) :: local_vect_size
        integer(c_int), intent(in) :: comm_fortran
    end subroutine melissa_init_f

    subroutine melissa_send(field_name, send_vect) bind(c, name="melissa_send")
        use, intrinsic :: iso_c_binding, only: c_char, c_double
        character(kind=c_char), dimension(*), intent(in) :: field_name
        real(c_double), dimension(*), intent(in) :: send_vect
    end subroutine melissa_send

    subroutine melissa_send_with_metadata(field_name, send_vect, metadata_json) &
            bind(c, name="melissa_send_with_metadata")
        use, intrinsic :: iso_c_binding, only: c_char, c_double
        character(kind=c_char), dimension(*), intent(in) :: field_name
        real(c_double), dimension(*), intent(in) :: send_vect
        character(kind=c_char), dimension(*), intent(in) :: metadata_json
    end subroutine melissa_send_with_metadata

    subroutine melissa_finalize() bind(c, name="melissa_finalize")
    end subroutine melissa_finalize
end interface
