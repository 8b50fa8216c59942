"""The driver package shadows the stdlib ``platform``; everything that uses the stdlib API must keep working."""
import importlib
import os
import pickle
import subprocess
import sys

import platform

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_this_session_imports_the_repo_package():
    assert platform.__file__ == os.path.join(REPO_ROOT, "platform", "__init__.py")
    assert hasattr(platform, "__path__")  # a package: platform.study.spec etc. import
    assert importlib.import_module("platform.study.load").load_study


def test_stdlib_api_through_the_shim():
    u = os.uname()
    assert platform.system() == u.sysname
    assert platform.machine() == u.machine
    assert platform.release() == u.release
    assert platform.python_version() == "%d.%d.%d" % sys.version_info[:3]
    assert platform.python_version_tuple()[:2] == tuple(str(x) for x in sys.version_info[:2])
    assert platform.python_implementation() == sys.implementation.name.replace("cpython", "CPython")
    uname = platform.uname()
    assert (uname.system, uname.node, uname.machine) == (u.sysname, u.nodename, u.machine)
    assert uname.processor is not None
    assert platform.system() in platform.platform()
    # Private helpers some libraries reach for.
    for name in ("_syscmd_ver", "_sys_version", "_platform", "_node", "_comparable_version"):
        assert callable(getattr(platform, name)), name
    assert platform.libc_ver()[0] in ("glibc", "musl", "")


def test_stdlib_objects_pickle_as_the_stdlib_module():
    # A worker that unpickles this sees the real stdlib module under the same name.
    uname = platform.uname()
    assert type(uname).__module__ == "platform"
    assert pickle.loads(pickle.dumps(uname)) == uname


def _run(code_or_args, timeout=120):
    return subprocess.run([sys.executable, *code_or_args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_torch_imports_next_to_the_package_in_a_fresh_interpreter():
    # From the repo root, ``import platform`` finds the package before the stdlib.
    proc = _run(["-c", "import platform.study.spec, torch; import platform; "
                       "print(platform.__file__); print(platform.system(), torch.zeros(2).sum().item())"])
    assert proc.returncode == 0, proc.stderr
    path, facts = proc.stdout.strip().splitlines()[-2:]
    assert path == os.path.join(REPO_ROOT, "platform", "__init__.py")
    assert facts == f"{os.uname().sysname} 0.0"


def test_run_help_from_the_repo_root():
    proc = _run(["-m", "platform.run", "--help"])
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m platform.run" in proc.stdout
    for flag in ("--dry-run", "--force", "--max-concurrent", "--address", "STUDY"):
        assert flag in proc.stdout
