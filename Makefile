# The two set-up commands of the README: `make demo` and `make test`. Both install what they need.
PY ?= python3
PIP_INSTALL = $(PY) -m pip install -q --no-warn-script-location

.PHONY: install deps demo test clean
install:
	$(PIP_INSTALL) "torch==2.13.0" -e ".[test,mpi]" mpich  # mpich wheel: the MPI of tests/test_mpi.py

demo: install
	$(PY) -m onlinetrain run examples/heat2d.toml

# Slurm daemons for tests/test_slurm.py (a real cluster the tests bring up): Debian packages, once.
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)
deps:
	@test -x /usr/sbin/slurmctld || command -v slurmctld >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  slurmctld slurmd slurm-client munge; }

test: install deps
	$(PY) -m pytest -q

clean:
	$(PY) -m onlinetrain clean
	rm -rf ot-study .pytest_cache
