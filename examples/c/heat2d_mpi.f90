! heat2d in Fortran 2008 with MPI, streamed through the onlinetrain Fortran module: the same
! discretization as solvers/heat2d.py and heat2d_mpi.c (implicit Euler, 5-point stencil,
! matrix-free CG warm-started from the previous step, tolerance 1e-10, at most 10 n iterations).
! The n x n interior is stored as u(j, i) (j the column, fastest), so a rank's rows i form one
! contiguous block that the module sends as a C-order piece of shape (rows, n) at (row0, 0).
!
!   make -C examples/c heat2d_mpi_f
!   OT_CHANNEL=shm://demo OT_SIM_ID=0 OT_PARAMS='[100,200,300,400,500]' \
!       mpiexec -n 2 examples/c/heat2d_mpi_f 32 100
program heat2d_mpi_f
  use, intrinsic :: iso_c_binding, only: c_double
  use mpi
  use onlinetrain
  implicit none
  type(ot_sim) :: sim
  real(c_double), allocatable :: p(:), u(:, :), x(:, :), pp(:, :), r(:, :), b(:, :), ap(:, :)
  real(c_double), allocatable :: wall_rhs(:, :), zeros(:, :)
  real(c_double) :: h, dt, adt, rr, rr_new, bb, stop_at, a, walls(4), nowall(4)
  integer :: n, steps, rank, nranks, rows, row0, base, rem, step, it, ierr, rc
  character(32) :: arg

  call MPI_Init(ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
  call MPI_Comm_size(MPI_COMM_WORLD, nranks, ierr)
  n = 32
  steps = 100
  if (command_argument_count() >= 1) then
     call get_command_argument(1, arg)
     read (arg, *) n
  end if
  if (command_argument_count() >= 2) then
     call get_command_argument(2, arg)
     read (arg, *) steps
  end if
  if (n < 2 .or. steps < 1 .or. nranks > n) then
     if (rank == 0) write (0, *) "heat2d_mpi_f: need n >= 2, steps >= 1, at most n ranks"
     call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
  end if
  if (ot_init_env(sim) /= OT_OK) call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
  rc = ot_params(sim, p)
  if (size(p) /= 5) then
     rc = ot_fail(sim, "heat2d_mpi_f: takes 5 parameters (Tx1 Tx2 Ty1 Ty2 T_IC)")
     call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
  end if
  base = n / nranks
  rem = mod(n, nranks)
  rows = base
  if (rank < rem) rows = rows + 1
  row0 = rank * base + min(rank, rem)
  h = 10.0d0 / (n + 1)
  dt = 1.0d0 / steps
  adt = 1.0d0 * dt
  walls = p(1:4)
  nowall = 0
  ! columns 0 and rows + 1 of the second axis are halos
  allocate(u(n, 0:rows + 1), x(n, 0:rows + 1), pp(n, 0:rows + 1), zeros(n, 0:rows + 1))
  allocate(r(n, rows), b(n, rows), ap(n, rows), wall_rhs(n, rows))
  u = 0
  x = 0
  pp = 0
  zeros = 0
  u(:, 1:rows) = p(5)
  call laplacian(zeros, walls, wall_rhs)
  wall_rhs = wall_rhs * adt
  do step = 1, steps
     b = u(:, 1:rows) + wall_rhs
     x(:, 1:rows) = u(:, 1:rows)
     call laplacian(x, nowall, ap)
     r = b - (x(:, 1:rows) - adt * ap)
     pp(:, 1:rows) = r
     rr = dot(r, r)
     bb = dot(b, b)
     stop_at = 1.0d-10 * 1.0d-10 * max(bb, 1.0d-300)
     do it = 1, 10 * n
        if (rr <= stop_at) exit
        call laplacian(pp, nowall, ap)
        ap = pp(:, 1:rows) - adt * ap
        a = rr / dot(pp(:, 1:rows), ap)
        x(:, 1:rows) = x(:, 1:rows) + a * pp(:, 1:rows)
        r = r - a * ap
        rr_new = dot(r, r)
        pp(:, 1:rows) = pp(:, 1:rows) * (rr_new / rr) + r
        rr = rr_new
     end do
     u(:, 1:rows) = x(:, 1:rows)
     rc = ot_send(sim, step, "T", u(:, 1:rows), global_shape=[n, n], offset=[0, row0])
     if (rc /= OT_OK) then
        write (0, *) "heat2d_mpi_f: ", ot_errmsg(sim)
        rc = ot_fail(sim, ot_errmsg(sim))
        call MPI_Abort(MPI_COMM_WORLD, 1, ierr)
     end if
  end do
  call MPI_Barrier(MPI_COMM_WORLD, ierr)  ! every rank's last piece is in the ring before SIM_END
  if (rank == 0) then
     rc = ot_announce(sim, "T", steps, nranks)
     rc = ot_finalize(sim)
  else
     rc = ot_close(sim)
  end if
  call MPI_Finalize(ierr)
  if (rc /= OT_OK) stop 1

contains

  subroutine halo(v)
    real(c_double), intent(inout) :: v(n, 0:rows + 1)
    integer :: up, down
    up = MPI_PROC_NULL
    down = MPI_PROC_NULL
    if (rank > 0) up = rank - 1
    if (rank < nranks - 1) down = rank + 1
    call MPI_Sendrecv(v(:, 1), n, MPI_DOUBLE_PRECISION, up, 0, v(:, rows + 1), n, &
                      MPI_DOUBLE_PRECISION, down, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE, ierr)
    call MPI_Sendrecv(v(:, rows), n, MPI_DOUBLE_PRECISION, down, 1, v(:, 0), n, &
                      MPI_DOUBLE_PRECISION, up, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE, ierr)
  end subroutine halo

  ! out = (up + down + left + right - 4 v) / h^2, numpy's order of operations
  subroutine laplacian(v, w, out)
    real(c_double), intent(inout) :: v(n, 0:rows + 1)
    real(c_double), intent(in) :: w(4)
    real(c_double), intent(out) :: out(n, rows)
    real(c_double) :: up, down, left, right
    integer :: i, j, gi
    call halo(v)
    do i = 1, rows
       gi = row0 + i - 1
       do j = 1, n
          if (gi == 0) then
             up = w(1)
          else
             up = v(j, i - 1)
          end if
          if (gi == n - 1) then
             down = w(2)
          else
             down = v(j, i + 1)
          end if
          if (j == 1) then
             left = w(3)
          else
             left = v(j - 1, i)
          end if
          if (j == n) then
             right = w(4)
          else
             right = v(j + 1, i)
          end if
          out(j, i) = (up + down + left + right - 4.0d0 * v(j, i)) / (h * h)
       end do
    end do
  end subroutine laplacian

  real(c_double) function dot(s, t)
    real(c_double), intent(in) :: s(:, :), t(:, :)
    real(c_double) :: loc
    loc = sum(s * t)
    call MPI_Allreduce(loc, dot, 1, MPI_DOUBLE_PRECISION, MPI_SUM, MPI_COMM_WORLD, ierr)
  end function dot
end program heat2d_mpi_f
