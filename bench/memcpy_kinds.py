"""Why the ring cannot reach 0.8 of bench/transport.py's `memcpy` at 8 MB: memory kinds.

    flock /tmp/ot-bench.lock python bench/memcpy_kinds.py [--quick]

One core copies 8 MB frames round a 64 MiB destination, like bench/transport.py's memcpy baseline,
into (a) numpy's own private buffer and (b) a populated /dev/shm mapping like the ring's. It does so
in two child processes: one as usual, one with transparent huge pages disabled for itself
(prctl PR_SET_THP_DISABLE). numpy madvises huge pages for large buffers, so (a) gets 2 MiB pages
where THP is `madvise` or `always`; tmpfs does not (its own setting, shmem_enabled, is `never` by
default), so (b) and every shared-memory transport copy into 4 KiB pages. The last line is JSON:
private/shm with and without THP (the ring's ceiling against `memcpy` is private/shm's inverse).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import subprocess
import sys
import tempfile
import time

SIZE, SPAN = 8 << 20, 64 << 20
PR_SET_THP_DISABLE = 41


def _rate(dst, src, n):
    import numpy as np  # noqa: PLC0415
    t0 = time.perf_counter()
    for i in range(n):
        o = (i % (SPAN // SIZE)) * SIZE
        np.copyto(dst[o:o + SIZE], src)
    return n * SIZE / (time.perf_counter() - t0) / 1e9


def child(thp: bool, reps: int) -> dict:
    if not thp and ctypes.CDLL(None).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_THP_DISABLE) failed")
    import numpy as np  # noqa: PLC0415 (after prctl: numpy's first buffers too)
    src = np.ones(SIZE, np.uint8)
    private = np.ones(SPAN, np.uint8)
    fd, path = tempfile.mkstemp(prefix="ot-bench-memcpy-", dir="/dev/shm")
    try:
        os.posix_fallocate(fd, 0, SPAN)
        mm = mmap.mmap(fd, SPAN, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    finally:
        os.close(fd)
        os.unlink(path)
    shm = np.frombuffer(mm, np.uint8)
    shm[:] = 1
    res = {"private": [], "shm": []}
    for _ in range(reps):  # interleaved, so a burst of load elsewhere hits both alike
        res["private"].append(_rate(private, src, 32))
        res["shm"].append(_rate(shm, src, 32))
    with open("/proc/self/smaps_rollup") as f:
        huge = int(f.read().split("AnonHugePages:")[1].split()[0])
    del shm
    mm.close()
    return {"thp": thp, "anon_huge_kb": huge,
            **{k: {"best": max(v), "median": sorted(v)[len(v) // 2]} for k, v in res.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", choices=["thp", "nothp"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    reps = 7 if args.quick else 15
    if args.child:
        print(json.dumps(child(args.child == "thp", reps)))
        return
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        thp_mode = f.read().strip()
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            shmem_mode = f.read().strip()
    except OSError:
        shmem_mode = "?"
    out = {}
    for kind in ("thp", "nothp"):
        p = subprocess.run([sys.executable, __file__, "--child", kind] + (["--quick"] if args.quick
                           else []), capture_output=True, text=True, check=True)
        out[kind] = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"THP: {thp_mode}; tmpfs: {shmem_mode}")
    print(f"{'process':14} {'AnonHuge kB':>12} {'private GB/s':>13} {'shm GB/s':>9}   (best / median)")
    for kind, r in out.items():
        print(f"{'THP ' + ('on' if r['thp'] else 'off'):14} {r['anon_huge_kb']:12d} "
              f"{r['private']['best']:6.2f}/{r['private']['median']:<6.2f} "
              f"{r['shm']['best']:5.2f}/{r['shm']['median']:.2f}")
    fig = {f"private_over_shm_{k}": round(r["private"]["median"] / r["shm"]["median"], 2)
           for k, r in out.items()}
    fig.update({f"anon_huge_kb_{k}": r["anon_huge_kb"] for k, r in out.items()})
    fig["thp"], fig["shmem_thp"] = thp_mode, shmem_mode
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
