# The two set-up commands of the README: `make demo` and `make test`. Both install what they need
# into a project virtual environment (.venv) made with the system python3: never a system-wide pip
# (PEP 668), never --break-system-packages.
PY ?= python3
VENV ?= .venv
VPY = $(VENV)/bin/python
PIP_INSTALL = $(VPY) -m pip install -q --no-warn-script-location
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL = $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: install venv deps demo test clean

# A stock Debian python3 may lack ensurepip (the python3-venv package): install it when missing.
$(VPY):
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || { $(SUDO) apt-get update -qq && \
	  $(APT_INSTALL) python3-venv; }
	@$(PY) -m venv $(VENV) 2>/dev/null || { $(SUDO) apt-get update -qq && \
	  $(APT_INSTALL) python3-venv "python3.$$($(PY) -c 'import sys; print(sys.version_info[1])')-venv" && \
	  rm -rf $(VENV) && $(PY) -m venv $(VENV); }

venv: $(VPY)

install: $(VPY)
	$(PIP_INSTALL) "torch==2.13.0" -e ".[test,mpi,plot,tensorboard]" mpich  # mpich wheel: the MPI of tests/test_mpi.py

demo: install
	$(VPY) -m onlinetrain run examples/heat2d.toml

# Debian packages the tests need (a real Slurm the tests bring up; C and Fortran compilers and an
# MPI with mpicc/mpif90/mpiexec for the C/Fortran clients and their MPI examples), once.
deps:
	@test -x /usr/sbin/slurmctld || command -v slurmctld >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(APT_INSTALL) slurmctld slurmd slurm-client munge; }
# ot report's browser test: Playwright drives Debian's chromium (its own download is not reachable)
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && $(APT_INSTALL) chromium; }
	@m=; for t in cc gfortran mpicc mpif90 mpiexec pkg-config; do command -v $$t >/dev/null || m=1; done; \
	  test -z "$$m" || { $(SUDO) apt-get update -qq && $(APT_INSTALL) gcc gfortran libmpich-dev mpich pkg-config libc6-dev; }

test: install deps
	$(VPY) -m pytest -q

clean:
	$(VPY) -m onlinetrain clean
	rm -rf ot-study .pytest_cache
