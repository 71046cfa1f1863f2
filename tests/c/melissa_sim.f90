! The Fortran twin of tests/c/melissa_sim.c, written against Melissa's documented Fortran API
! only (include "mpif.h" + include "melissa_api.f90"; NUL-terminated field names):
!     melissa_sim_f OUTDIR NSTEPS P0 P1
! "temperature": 5 + 3 * rank doubles per rank (melissa_send); "pressure": 4 + rank doubles
! (melissa_send_with_metadata, {"step": k}). Each rank appends what it sent to
! OUTDIR/FIELD-P0-rRANK.bin (raw float64), the output the test compares the trainer's with.
program melissa_sim_f
    implicit none
    include "mpif.h"
    include "melissa_api.f90"
    character(len=4096) :: outdir, arg, p0s
    character(len=*), parameter :: ft = "temperature"//char(0), fp = "pressure"//char(0)
    character(len=64) :: meta
    integer :: ierr, rank, nsteps, nt, np, k, i
    double precision :: p0, p1
    double precision, allocatable :: t(:), p(:)

    call MPI_Init(ierr)
    call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
    call get_command_argument(1, outdir)
    call get_command_argument(2, arg)
    read (arg, *) nsteps
    call get_command_argument(3, p0s)
    read (p0s, *) p0
    call get_command_argument(4, arg)
    read (arg, *) p1
    nt = 5 + 3 * rank
    np = 4 + rank
    allocate (t(nt), p(np))
    do i = 1, nt
        t(i) = p0 + 0.01d0 * (i - 1) + 0.1d0 * rank
    end do
    do i = 1, np
        p(i) = p1 * i - rank
    end do
    call melissa_init_f(ft, nt, MPI_COMM_WORLD)
    call melissa_init_f(fp, np, MPI_COMM_WORLD)
    open (10, file=trim(outdir)//"/temperature-"//trim(p0s)//"-r"//itoa(rank)//".bin", &
          access="stream", form="unformatted", status="replace")
    open (11, file=trim(outdir)//"/pressure-"//trim(p0s)//"-r"//itoa(rank)//".bin", &
          access="stream", form="unformatted", status="replace")
    do k = 0, nsteps - 1
        t = 0.9d0 * t + sin(p1 * t + k) / 3.0d0
        do i = 1, np
            p(i) = p(i) * 1.0001d0 + exp(-0.1d0 * k) * p0 / (i + 1)
        end do
        call melissa_send(ft, t)
        write (meta, '(a, i0, a)') '{"step": ', k, '}'
        call melissa_send_with_metadata(fp, p, trim(meta)//char(0))
        write (10) t
        write (11) p
    end do
    close (10)
    close (11)
    call melissa_finalize()
    call MPI_Finalize(ierr)
contains
    function itoa(n) result(s)
        integer, intent(in) :: n
        character(len=:), allocatable :: s
        character(len=16) :: b
        write (b, '(i0)') n
        s = trim(b)
    end function itoa
end program melissa_sim_f
