"""The C client (c/), its Fortran module (fortran/) and Melissa's client API on top of it
(melissa/), shipped as sources: installed as the package data of `onlinetrain_clients`, compiled on
first use by `python -m onlinetrain.clientflags` (see docs/clients.md). No Python code here."""
