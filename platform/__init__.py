"""detbench's driver package, which also stands in for the stdlib ``platform`` module.

The package name clashes with the standard library: while ``python -m
platform.run`` (or a test session, see ``tests/conftest.py``) has this package
in ``sys.modules["platform"]``, every ``import platform`` in the process gets
it, torch, Ray and MLflow included. So this ``__init__`` loads the stdlib
module from its file and copies its whole namespace here (``system()``,
``machine()``, ``python_version()``, ``uname()``, private helpers such as
``_syscmd_ver``...). Keep this file free of driver code and heavy imports.

Two rules follow for the rest of the package:

* never add a submodule named like a stdlib ``platform`` attribute
  (``system``, ``node``, ``release``, ``version``, ``machine``, ``processor``,
  ``architecture``, ``uname``, ``platform``...): importing it would replace
  that function here;
* nothing defined under ``platform.*`` may be pickled to a Ray worker: workers
  import the real stdlib module first and cannot load this package.
"""
import importlib.machinery as _machinery
import importlib.util as _util
import os as _os
import sys as _sys
import sysconfig as _sysconfig

# Dunder names that describe *this* package; copying the stdlib's values would
# break submodule imports (``__path__``, ``__spec__``) or lie about the file.
_KEEP_OURS = frozenset({
    "__name__", "__path__", "__file__", "__spec__", "__loader__", "__package__",
    "__cached__", "__builtins__", "__doc__",
})


def _stdlib_platform_spec():
    path = _os.path.join(_sysconfig.get_paths()["stdlib"], "platform.py")
    if _os.path.isfile(path):
        # The module keeps the name "platform" (it is never put in sys.modules
        # under it), so pickled stdlib objects such as ``uname_result`` refer
        # to ``platform.uname_result``, which resolves here and in workers.
        return _util.spec_from_file_location("platform", path)
    # Unusual layouts (zipped stdlib): search sys.path without this checkout.
    ours = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    search = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != ours]
    spec = _machinery.PathFinder.find_spec("platform", search)
    if spec is None:
        raise ImportError("cannot find the standard library's platform module")
    return spec


def _load_stdlib_platform():
    spec = _stdlib_platform_spec()
    module = _util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_stdlib = _load_stdlib_platform()
globals().update({k: v for k, v in vars(_stdlib).items() if k not in _KEEP_OURS})
