"""standin_host: how the stand-in's extension modules (standin_*.py) reach the stand-in itself.

standin.py imports them once its route table and helpers exist; each calls host_globals() at
import time to get standin.py's globals (route, Response, the host names...), whether standin.py
runs as __main__ or was imported.
"""
import sys


def host_globals(module):
    """The globals of the standin module importing `module` (its name, for the error)."""
    f = sys._getframe(1)
    while f is not None:
        g = f.f_globals
        if "ROUTES" in g and "Response" in g and str(g.get("__file__", "")).endswith("standin.py"):
            return g
        f = f.f_back
    raise ImportError("%s must be imported by tests/upstream/standin.py" % module)
