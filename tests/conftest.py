"""Make the repo's ``platform`` package importable in the test session.

pytest imports the stdlib ``platform`` module before any test loads, so
``import platform.study.spec`` would fail ("'platform' is not a package"). Here the
repo root goes first on sys.path and the cached stdlib module is dropped, so
the next ``import platform`` finds this repo's package. That package re-exports
the whole stdlib API (see platform/__init__.py), so code that already holds the
stdlib module, and code that imports ``platform`` later, both keep working.
"""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if REPO_ROOT in sys.path:
    sys.path.remove(REPO_ROOT)
sys.path.insert(0, REPO_ROOT)

_loaded = sys.modules.get("platform")
if _loaded is not None and not hasattr(_loaded, "__path__"):  # the stdlib module, not our package
    del sys.modules["platform"]

import platform  # noqa: E402

assert os.path.dirname(os.path.abspath(platform.__file__)) == os.path.join(REPO_ROOT, "platform"), (
    f"tests/conftest.py: 'import platform' found {platform.__file__}, not the repo's package")

# One torch thread in the test process. The cores here are shared: with torch's default of one thread
# per core, its threads wait on each other whenever another process holds a core (measured on 2 cores
# under load: test_dense.py's 30-step trainings took 24 s with 2 threads, 0.6 s with 1). A trial sets
# its own count anyway (run_trial: the trial's num_threads, 1 by default).
import torch  # noqa: E402

torch.set_num_threads(1)
