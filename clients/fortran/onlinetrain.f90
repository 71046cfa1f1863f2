! onlinetrain Fortran 2008 module over the C client (clients/c/ot_client.h), iso_c_binding only.
!
!   use onlinetrain
!   type(ot_sim) :: sim
!   real(c_double), allocatable :: p(:)
!   if (ot_init_env(sim) /= OT_OK) error stop "ot_init_env failed"   ! OT_* variables of ot simulate
!   rc = ot_params(sim, p)
!   do k = 1, steps
!      ... u(:, :) = next step ...
!      rc = ot_send(sim, k, "T", u)                         ! a whole field (real64/real32, rank 1-3)
!      rc = ot_send(sim, k, "T", u_local, global_shape=[n, n], offset=[0, row0])   ! a piece
!   end do
!   rc = ot_announce(sim, "T", steps, nranks)               ! one rank announces the totals
!   rc = ot_finalize(sim)                                   ! the others: rc = ot_close(sim)
!
! Axis order: Fortran is column-major, frames are C order, so every shape, global shape and offset
! is sent reversed: a Fortran array a(n1, n2) arrives as a numpy array of shape (n2, n1) whose
! element [j, i] is a(i, j). Offsets count the elements before the piece on each axis (0-based).
! Every function returns the C client's status (OT_OK = 0); ot_errmsg(sim) says what went wrong.
module onlinetrain
  use, intrinsic :: iso_c_binding
  implicit none
  private

  integer, parameter, public :: OT_OK = 0, OT_ERR_ARG = 1, OT_ERR_ENV = 2, OT_ERR_CHANNEL = 3, &
       OT_ERR_CONSUMER_GONE = 4, OT_ERR_TOO_BIG = 5, OT_ERR_SYS = 6, OT_ERR_NOMEM = 7, &
       OT_ERR_TIMEOUT = 8
  integer(c_int), parameter, public :: OT_FLOAT32 = 1, OT_FLOAT64 = 2, OT_INT32 = 3, &
       OT_INT64 = 4, OT_UINT8 = 5, OT_FLOAT16 = 6, OT_INT16 = 7, OT_UINT16 = 8

  type, public :: ot_sim
     type(c_ptr) :: h = c_null_ptr
  end type ot_sim

  public :: ot_init_env, ot_init, ot_params, ot_sim_id, ot_send, ot_send_ptr, ot_heartbeat, &
       ot_announce, ot_finalize, ot_fail, ot_close, ot_errmsg

  interface ot_send
     module procedure send_r8_1, send_r8_2, send_r8_3, send_r4_1, send_r4_2, send_r4_3
  end interface ot_send

  interface
     integer(c_int) function c_init_env(out) bind(C, name="ot_init_env")
       import :: c_int, c_ptr
       type(c_ptr), intent(out) :: out
     end function c_init_env
     integer(c_int) function c_init(out, channel, sim_id, params, n_params, timeout, progress) &
          bind(C, name="ot_init")
       import :: c_int, c_ptr, c_char, c_int64_t, c_double, c_int32_t
       type(c_ptr), intent(out) :: out
       character(kind=c_char), intent(in) :: channel(*)
       integer(c_int64_t), value :: sim_id
       real(c_double), intent(in) :: params(*)
       integer(c_int32_t), value :: n_params
       real(c_double), value :: timeout
       type(c_ptr), value :: progress
     end function c_init
     integer(c_int64_t) function c_sim_id(h) bind(C, name="ot_sim_id")
       import :: c_int64_t, c_ptr
       type(c_ptr), value :: h
     end function c_sim_id
     integer(c_int) function c_params(h, params, n) bind(C, name="ot_params")
       import :: c_int, c_ptr, c_int32_t
       type(c_ptr), value :: h
       type(c_ptr), intent(out) :: params
       integer(c_int32_t), intent(out) :: n
     end function c_params
     integer(c_int) function c_send_piece(h, step, field, dtype, ndim, shape, gshape, offset, &
          data, meta, meta_len) bind(C, name="ot_send_piece")
       import :: c_int, c_ptr, c_char, c_int64_t, c_size_t
       type(c_ptr), value :: h
       integer(c_int64_t), value :: step
       character(kind=c_char), intent(in) :: field(*)
       integer(c_int), value :: dtype, ndim
       integer(c_int64_t), intent(in) :: shape(*)
       type(c_ptr), value :: gshape, offset, data, meta
       integer(c_size_t), value :: meta_len
     end function c_send_piece
     integer(c_int) function c_heartbeat(h) bind(C, name="ot_heartbeat")
       import :: c_int, c_ptr
       type(c_ptr), value :: h
     end function c_heartbeat
     integer(c_int) function c_announce(h, field, steps, pieces) bind(C, name="ot_announce")
       import :: c_int, c_ptr, c_char, c_int64_t
       type(c_ptr), value :: h
       character(kind=c_char), intent(in) :: field(*)
       integer(c_int64_t), value :: steps, pieces
     end function c_announce
     integer(c_int) function c_finalize(h) bind(C, name="ot_finalize")
       import :: c_int, c_ptr
       type(c_ptr), value :: h
     end function c_finalize
     integer(c_int) function c_fail(h, reason) bind(C, name="ot_fail")
       import :: c_int, c_ptr, c_char
       type(c_ptr), value :: h
       character(kind=c_char), intent(in) :: reason(*)
     end function c_fail
     integer(c_int) function c_close(h) bind(C, name="ot_close")
       import :: c_int, c_ptr
       type(c_ptr), value :: h
     end function c_close
     type(c_ptr) function c_errmsg(h) bind(C, name="ot_errmsg")
       import :: c_ptr
       type(c_ptr), value :: h
     end function c_errmsg
     integer(c_size_t) function c_strlen(s) bind(C, name="strlen")
       import :: c_size_t, c_ptr
       type(c_ptr), value :: s
     end function c_strlen
  end interface

contains

  integer function ot_init_env(sim) result(rc)
    type(ot_sim), intent(out) :: sim
    rc = c_init_env(sim%h)
  end function ot_init_env

  integer function ot_init(sim, channel, sim_id, params, timeout) result(rc)
    type(ot_sim), intent(out) :: sim
    character(*), intent(in) :: channel
    integer(c_int64_t), intent(in) :: sim_id
    real(c_double), intent(in) :: params(:)
    real(c_double), intent(in) :: timeout
    real(c_double) :: p(max(1, size(params)))
    p(1:size(params)) = params
    rc = c_init(sim%h, channel // c_null_char, sim_id, p, int(size(params), c_int32_t), timeout, &
                c_null_ptr)
  end function ot_init

  integer function ot_params(sim, params) result(rc)
    type(ot_sim), intent(in) :: sim
    real(c_double), allocatable, intent(out) :: params(:)
    type(c_ptr) :: p
    integer(c_int32_t) :: n
    real(c_double), pointer :: v(:)
    n = 0
    rc = c_params(sim%h, p, n)
    if (rc /= OT_OK) n = 0
    allocate(params(n))
    if (rc == OT_OK .and. n > 0) then
       call c_f_pointer(p, v, [n])
       params = v
    end if
  end function ot_params

  integer(c_int64_t) function ot_sim_id(sim)
    type(ot_sim), intent(in) :: sim
    ot_sim_id = c_sim_id(sim%h)
  end function ot_sim_id

  ! Any contiguous data at `data` (c_loc of a target array): `fshape` in Fortran order.
  integer function ot_send_ptr(sim, step, field, dtype, fshape, data, global_shape, offset, meta) &
       result(rc)
    type(ot_sim), intent(in) :: sim
    integer(c_int64_t), intent(in) :: step
    character(*), intent(in) :: field
    integer(c_int), intent(in) :: dtype
    integer(c_int64_t), intent(in) :: fshape(:)
    type(c_ptr), intent(in) :: data
    integer(c_int64_t), intent(in), optional :: global_shape(:), offset(:)
    character(*), intent(in), optional :: meta
    rc = send_raw(sim, step, field, dtype, fshape, data, global_shape, offset, meta)
  end function ot_send_ptr

  integer function send_raw(sim, step, field, dtype, fshape, data, global_shape, offset, meta) &
       result(rc)
    type(ot_sim), intent(in) :: sim
    integer(c_int64_t), intent(in) :: step
    character(*), intent(in) :: field
    integer(c_int), intent(in) :: dtype
    integer(c_int64_t), intent(in) :: fshape(:)
    type(c_ptr), intent(in) :: data
    integer(c_int64_t), intent(in), optional :: global_shape(:), offset(:)
    character(*), intent(in), optional :: meta
    integer(c_int64_t), target :: shp(8), gs(8), off(8)
    character(kind=c_char), allocatable, target :: m(:)
    type(c_ptr) :: pg, po, pm
    integer(c_size_t) :: ml
    integer :: n, i
    n = size(fshape)
    if (n > 8) then
       rc = OT_ERR_ARG
       return
    end if
    shp(1:n) = fshape(n:1:-1)
    pg = c_null_ptr
    po = c_null_ptr
    if (present(global_shape) .and. present(offset)) then
       if (size(global_shape) /= n .or. size(offset) /= n) then
          rc = OT_ERR_ARG
          return
       end if
       gs(1:n) = global_shape(n:1:-1)
       off(1:n) = offset(n:1:-1)
       pg = c_loc(gs)
       po = c_loc(off)
    end if
    pm = c_null_ptr
    ml = 0
    if (present(meta)) then
       ml = len(meta)
       allocate(m(max(1, len(meta))))
       do i = 1, int(ml)
          m(i) = meta(i:i)
       end do
       pm = c_loc(m)
    end if
    rc = c_send_piece(sim%h, step, field // c_null_char, dtype, int(n, c_int), shp, pg, po, &
                      data, pm, ml)
  end function send_raw

  integer function send_r8_1(sim, step, field, a, global_shape, offset, meta) result(rc)
    type(ot_sim), intent(in) :: sim
    integer, intent(in) :: step
    character(*), intent(in) :: field
    real(c_double), intent(in), target, contiguous :: a(:)
    integer, intent(in), optional :: global_shape(1), offset(1)
    character(*), intent(in), optional :: meta
    if (present(global_shape) .and. present(offset)) then
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT64, int(shape(a), c_int64_t), &
                     c_loc(a), int(global_shape, c_int64_t), int(offset, c_int64_t), meta)
    else
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT64, int(shape(a), c_int64_t), &
                     c_loc(a), meta=meta)
    end if
  end function send_r8_1
  integer function send_r8_2(sim, step, field, a, global_shape, offset, meta) result(rc)
    type(ot_sim), intent(in) :: sim
    integer, intent(in) :: step
    character(*), intent(in) :: field
    real(c_double), intent(in), target, contiguous :: a(:,:)
    integer, intent(in), optional :: global_shape(2), offset(2)
    character(*), intent(in), optional :: meta
    if (present(global_shape) .and. present(offset)) then
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT64, int(shape(a), c_int64_t), &
                     c_loc(a), int(global_shape, c_int64_t), int(offset, c_int64_t), meta)
    else
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT64, int(shape(a), c_int64_t), &
                     c_loc(a), meta=meta)
    end if
  end function send_r8_2
  integer function send_r8_3(sim, step, field, a, global_shape, offset, meta) result(rc)
    type(ot_sim), intent(in) :: sim
    integer, intent(in) :: step
    character(*), intent(in) :: field
    real(c_double), intent(in), target, contiguous :: a(:,:,:)
    integer, intent(in), optional :: global_shape(3), offset(3)
    character(*), intent(in), optional :: meta
    if (present(global_shape) .and. present(offset)) then
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT64, int(shape(a), c_int64_t), &
                     c_loc(a), int(global_shape, c_int64_t), int(offset, c_int64_t), meta)
    else
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT64, int(shape(a), c_int64_t), &
                     c_loc(a), meta=meta)
    end if
  end function send_r8_3
  integer function send_r4_1(sim, step, field, a, global_shape, offset, meta) result(rc)
    type(ot_sim), intent(in) :: sim
    integer, intent(in) :: step
    character(*), intent(in) :: field
    real(c_float), intent(in), target, contiguous :: a(:)
    integer, intent(in), optional :: global_shape(1), offset(1)
    character(*), intent(in), optional :: meta
    if (present(global_shape) .and. present(offset)) then
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT32, int(shape(a), c_int64_t), &
                     c_loc(a), int(global_shape, c_int64_t), int(offset, c_int64_t), meta)
    else
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT32, int(shape(a), c_int64_t), &
                     c_loc(a), meta=meta)
    end if
  end function send_r4_1
  integer function send_r4_2(sim, step, field, a, global_shape, offset, meta) result(rc)
    type(ot_sim), intent(in) :: sim
    integer, intent(in) :: step
    character(*), intent(in) :: field
    real(c_float), intent(in), target, contiguous :: a(:,:)
    integer, intent(in), optional :: global_shape(2), offset(2)
    character(*), intent(in), optional :: meta
    if (present(global_shape) .and. present(offset)) then
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT32, int(shape(a), c_int64_t), &
                     c_loc(a), int(global_shape, c_int64_t), int(offset, c_int64_t), meta)
    else
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT32, int(shape(a), c_int64_t), &
                     c_loc(a), meta=meta)
    end if
  end function send_r4_2
  integer function send_r4_3(sim, step, field, a, global_shape, offset, meta) result(rc)
    type(ot_sim), intent(in) :: sim
    integer, intent(in) :: step
    character(*), intent(in) :: field
    real(c_float), intent(in), target, contiguous :: a(:,:,:)
    integer, intent(in), optional :: global_shape(3), offset(3)
    character(*), intent(in), optional :: meta
    if (present(global_shape) .and. present(offset)) then
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT32, int(shape(a), c_int64_t), &
                     c_loc(a), int(global_shape, c_int64_t), int(offset, c_int64_t), meta)
    else
       rc = send_raw(sim, int(step, c_int64_t), field, OT_FLOAT32, int(shape(a), c_int64_t), &
                     c_loc(a), meta=meta)
    end if
  end function send_r4_3

  integer function ot_heartbeat(sim) result(rc)
    type(ot_sim), intent(in) :: sim
    rc = c_heartbeat(sim%h)
  end function ot_heartbeat

  integer function ot_announce(sim, field, steps, pieces) result(rc)
    type(ot_sim), intent(in) :: sim
    character(*), intent(in) :: field
    integer, intent(in) :: steps, pieces
    rc = c_announce(sim%h, field // c_null_char, int(steps, c_int64_t), int(pieces, c_int64_t))
  end function ot_announce

  integer function ot_finalize(sim) result(rc)
    type(ot_sim), intent(inout) :: sim
    rc = c_finalize(sim%h)
    sim%h = c_null_ptr
  end function ot_finalize

  integer function ot_fail(sim, reason) result(rc)
    type(ot_sim), intent(inout) :: sim
    character(*), intent(in) :: reason
    rc = c_fail(sim%h, reason // c_null_char)
    sim%h = c_null_ptr
  end function ot_fail

  integer function ot_close(sim) result(rc)
    type(ot_sim), intent(inout) :: sim
    rc = c_close(sim%h)
    sim%h = c_null_ptr
  end function ot_close

  function ot_errmsg(sim) result(msg)
    type(ot_sim), intent(in) :: sim
    character(:), allocatable :: msg
    type(c_ptr) :: p
    character(kind=c_char), pointer :: s(:)
    integer :: i, n
    p = c_errmsg(sim%h)
    n = int(c_strlen(p))
    call c_f_pointer(p, s, [n])
    allocate(character(n) :: msg)
    do i = 1, n
       msg(i:i) = s(i)
    end do
  end function ot_errmsg
end module onlinetrain
