"""Engines behind the one interface in `base.py`, listed in `registry.py`; each engine module imports its engine
library only when a replica creates it."""
