"""Compile and link flags for the C and Fortran clients, building the library on first use.

    cc  mysim.c   $(python -m onlinetrain.clientflags --cflags --libs) -o mysim
    mpicc heat.c  $(python -m onlinetrain.clientflags --cflags --libs) -o heat
    mpif90 heat.f90 $(python -m onlinetrain.clientflags --fortran --cflags --libs) -o heatf
    mpicc melissa_sim.c $(python -m onlinetrain.clientflags --melissa --cflags --libs) -o sim

`--melissa` adds Melissa's client API (melissa_api.h, melissa_api.f90, libmelissa_api: clients/
melissa), built with the MPI compiler wrapper ($MPICC or mpicc; or --mpicc) since MPI_Comm is the
MPI library's type; a solver instrumented for Melissa builds against it unchanged.

The sources ship with onlinetrain (clients/c: ot_client.h and its .c files; clients/fortran:
onlinetrain.f90). The first call compiles them with the user's compilers ($CC or cc, $FC or
gfortran; or --cc/--fc) into a static library in a cache directory ($OT_CLIENT_CACHE, else
$XDG_CACHE_HOME/onlinetrain, else ~/.cache/onlinetrain), one per source version and compiler, and
prints the flags; later calls only print them. Concurrent first calls (many ranks) build once.

    cflags, libs = flags(fortran=True)          # lists of arguments, for subprocess argv
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from filelock import FileLock

from .errors import OTError

C_SOURCES = ("ot_ring.c", "ot_env.c", "ot_client.c")
C_HEADERS = ("ot_client.h", "ot_ring.h", "ot_sim.h")
F_SOURCE = "onlinetrain.f90"
M_SOURCES = ("melissa_api.c", "melissa_api.h", "melissa_api.f90")


class ClientBuildError(OTError, RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


def sources() -> Path:
    """The clients/ directory: beside the package in a source checkout or editable install, else
    the packaged copy (onlinetrain_clients)."""
    here = Path(__file__).resolve().parent.parent / "clients"
    if (here / "c" / "ot_client.h").exists():
        return here
    try:
        import onlinetrain_clients  # noqa: PLC0415  (the wheel's copy of clients/)
        return Path(onlinetrain_clients.__file__).resolve().parent
    except ImportError:
        raise ClientBuildError(f"the client sources are missing ({here} not found): reinstall "
                               f"onlinetrain", str(here)) from None


def cache_root() -> Path:
    if os.environ.get("OT_CLIENT_CACHE"):
        return Path(os.environ["OT_CLIENT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onlinetrain"


def _compiler(cmd: str, what: str, fix: str) -> list[str]:
    argv = cmd.split()
    if not argv or shutil.which(argv[0]) is None:
        raise ClientBuildError(f"{what} {cmd!r} not found: {fix}", cmd)
    return argv


def _identity(argv: list[str]) -> bytes:
    """What makes two compilers' outputs differ: the resolved path and the version banner."""
    try:
        out = subprocess.run(argv + ["--version"], capture_output=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = b""
    return (shutil.which(argv[0]) or argv[0]).encode() + b"\0" + out.split(b"\n")[0]


def _run(argv: list[str], cwd: Path) -> None:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ClientBuildError(f"building the onlinetrain client failed: {' '.join(argv)}\n"
                               f"{r.stderr.strip()[-2000:]}", argv)


def build(fortran: bool = False, cc: str | None = None, fc: str | None = None,
          melissa: bool = False, mpicc: str | None = None) -> Path:
    """Build (once) and return the directory holding include/ and lib/ (and fortran/ modules;
    with `melissa`, melissa_api.h / .f90 in include/ and lib/libmelissa_api.a)."""
    src = sources()
    cc_argv = _compiler(cc or os.environ.get("CC") or "cc", "C compiler",
                        "install one (Debian: apt-get install gcc) or pass --cc / set CC")
    h = hashlib.sha256(_identity(cc_argv))
    for name in C_SOURCES + C_HEADERS:
        h.update((src / "c" / name).read_bytes())
    fc_argv = None
    if fortran:
        fc_argv = _compiler(fc or os.environ.get("FC") or "gfortran", "Fortran compiler",
                            "install one (Debian: apt-get install gfortran) or pass --fc / set FC")
        h.update(_identity(fc_argv))
        h.update((src / "fortran" / F_SOURCE).read_bytes())
    mpicc_argv = None
    if melissa:
        mpicc_argv = _compiler(mpicc or os.environ.get("MPICC") or "mpicc", "MPI C compiler",
                               "install an MPI (Debian: apt-get install libmpich-dev mpich) or "
                               "pass --mpicc / set MPICC to your MPI's compiler wrapper")
        h.update(_identity(mpicc_argv))
        for name in M_SOURCES:
            h.update((src / "melissa" / name).read_bytes())
    out = cache_root() / f"client-v2-{h.hexdigest()[:16]}"
    lib = out / "lib" / "libotclient.a"
    flib = out / "lib" / "libotclient_f.a"
    mlib = out / "lib" / "libmelissa_api.a"

    def whole() -> bool:
        return lib.exists() and (not fortran or flib.exists()) and (not melissa or mlib.exists())
    if whole():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if whole():
            return out
        tmp = out / "build"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name in C_SOURCES + C_HEADERS:
            shutil.copy(src / "c" / name, tmp / name)
        objs = []
        for name in C_SOURCES:
            obj = name[:-2] + ".o"
            _run(cc_argv + ["-std=c11", "-O2", "-fPIC", "-c", name, "-o", obj], tmp)
            objs.append(obj)
        (out / "include").mkdir(exist_ok=True)
        (out / "lib").mkdir(exist_ok=True)
        shutil.copy(tmp / "ot_client.h", out / "include" / "ot_client.h")
        if fortran:
            (out / "fortran").mkdir(exist_ok=True)
            shutil.copy(src / "fortran" / F_SOURCE, tmp / F_SOURCE)
            banner = _identity(fc_argv).decode(errors="replace")
            mod_flag = "-J" if "GNU Fortran" in banner or "gfortran" in banner else \
                "-module-dir" if "flang" in banner.lower() else "-module"  # ifx / nvfortran
            _run(fc_argv + ["-O2", "-fPIC", "-c", F_SOURCE, "-o", "onlinetrain_f.o", mod_flag,
                            str(out / "fortran")], tmp)
            _run(["ar", "rcs", "libotclient_f.a.tmp", "onlinetrain_f.o"], tmp)
            os.replace(tmp / "libotclient_f.a.tmp", flib)
        if melissa:
            for name in M_SOURCES:
                shutil.copy(src / "melissa" / name, tmp / name)
            _run(mpicc_argv + ["-std=c11", "-O2", "-fPIC", "-c", "melissa_api.c", "-o",
                               "melissa_api.o"], tmp)
            _run(["ar", "rcs", "libmelissa_api.a.tmp", "melissa_api.o"], tmp)
            for name in ("melissa_api.h", "melissa_api.f90"):
                shutil.copy(tmp / name, out / "include" / name)
            os.replace(tmp / "libmelissa_api.a.tmp", mlib)
        _run(["ar", "rcs", "libotclient.a.tmp"] + objs, tmp)
        os.replace(tmp / "libotclient.a.tmp", lib)  # last: its presence means the build is whole
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def flags(fortran: bool = False, cc: str | None = None, fc: str | None = None,
          melissa: bool = False, mpicc: str | None = None) -> tuple[list[str], list[str]]:
    """(compile flags, link flags) for a program using the client; builds on first use."""
    d = build(fortran, cc, fc, melissa, mpicc)
    cflags = [f"-I{d / 'include'}"] + ([f"-I{d / 'fortran'}"] if fortran else [])
    libs = [f"-L{d / 'lib'}"] + (["-lotclient_f"] if fortran else []) + \
        (["-lmelissa_api"] if melissa else []) + ["-lotclient", "-lpthread"]
    return cflags, libs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m onlinetrain.clientflags",
                                 description="Print the compile/link flags of the onlinetrain C "
                                             "(and Fortran) client, building it on first use.")
    ap.add_argument("--cflags", action="store_true", help="compile flags (-I...)")
    ap.add_argument("--libs", action="store_true", help="link flags (-L... -lotclient -lpthread)")
    ap.add_argument("--fortran", action="store_true", help="also the Fortran module (use onlinetrain)")
    ap.add_argument("--cc", help="C compiler for the library (default $CC or cc)")
    ap.add_argument("--fc", help="Fortran compiler for the module (default $FC or gfortran)")
    ap.add_argument("--melissa", action="store_true",
                    help="also Melissa's client API (melissa_api.h, melissa_api.f90)")
    ap.add_argument("--mpicc", help="MPI C compiler for --melissa (default $MPICC or mpicc)")
    ap.add_argument("--dir", action="store_true", help="print the build directory only")
    a = ap.parse_args(argv)
    try:
        if a.dir:
            print(build(a.fortran, a.cc, a.fc, a.melissa, a.mpicc))
            return 0
        cflags, libs = flags(a.fortran, a.cc, a.fc, a.melissa, a.mpicc)
    except OTError as e:
        print(f"onlinetrain.clientflags: {e}", file=sys.stderr)
        return 1
    print(" ".join((cflags if a.cflags or not a.libs else []) + (libs if a.libs else [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
