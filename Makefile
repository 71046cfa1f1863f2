# The two set-up commands of the README: `make demo` and `make test`. Both install what they need.
PY ?= python3
PIP_INSTALL = $(PY) -m pip install -q --no-warn-script-location

.PHONY: install demo test clean
install:
	$(PIP_INSTALL) "torch==2.13.0" -e ".[test,mpi]" mpich  # mpich wheel: the MPI of tests/test_mpi.py

demo: install
	$(PY) -m onlinetrain run examples/heat2d.toml

test: install
	$(PY) -m pytest -q

clean:
	$(PY) -m onlinetrain clean
	rm -rf ot-study .pytest_cache
