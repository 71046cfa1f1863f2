"""The C client (c/) and its Fortran module (fortran/), shipped as sources: installed as the
package data of `onlinetrain_clients`, compiled on first use by `python -m onlinetrain.clientflags`
(see docs/clients.md). No Python code here."""
