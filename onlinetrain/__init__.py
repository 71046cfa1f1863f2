"""onlinetrain: online training of neural surrogates from running simulations.

Commands: `ot sample | ot simulate --to shm://NAME` feeds `ot train --from shm://NAME`;
`ot run CONFIG.toml` does all of it on one machine. See README.md.
"""
__version__ = "0.1.0"
