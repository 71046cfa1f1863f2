! Test writer for tests/test_client_c.py: the Fortran module's whole-field send (real32, rank 2,
! with metadata), its axis order, ot_params, a refused call's message, and finalize.
program fwriter
  use, intrinsic :: iso_c_binding, only: c_float, c_double
  use onlinetrain
  implicit none
  type(ot_sim) :: sim
  real(c_double), allocatable :: p(:)
  real(c_float) :: a(3, 2)
  integer :: i, j, rc
  if (ot_init_env(sim) /= OT_OK) stop 2
  rc = ot_params(sim, p)
  do j = 1, 2
     do i = 1, 3
        a(i, j) = real(10 * i + j + p(1), c_float)
     end do
  end do
  rc = ot_send(sim, 1, "A", a, meta='{"k": 1}')
  if (rc /= OT_OK) stop 3
  rc = ot_send(sim, 2, "", a)              ! an empty field name is refused, with a message
  if (rc /= OT_ERR_ARG) stop 4
  write (*, '(a)') ot_errmsg(sim)
  rc = ot_finalize(sim)
  if (rc /= OT_OK) stop 5
end program fwriter
