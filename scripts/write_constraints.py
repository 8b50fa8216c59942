"""Write constraints.txt: the exact versions, in this environment, of everything detbench needs.

pyproject.toml says what detbench depends on (with ranges); constraints.txt records
which releases of those and of everything they pull in were installed when the
suite last passed, so that ``pip install -e ".[test]" -c constraints.txt`` gets
the same set again. Run it after ``python -m pip install -e ".[test,cluster]"``
(every extra installed, so every extra's closure is pinned):

    python scripts/write_constraints.py > constraints.txt

A constraint only caps what gets installed: a package listed here that a platform
does not need (or a marker excludes) is not installed there.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.requirements import Requirement

PROJECT = "detbench"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(project: str) -> dict:
    """Installed distribution name -> version for every requirement reachable from
    ``project`` with all its extras, markers evaluated as in this environment."""
    root = metadata.distribution(project)
    extras = root.metadata.get_all("Provides-Extra") or []
    todo = [(Requirement(r), set(extras)) for r in root.requires or []]
    seen: dict = {}
    while todo:
        req, active = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (active or {""})):
            continue
        name = canonical(req.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"write_constraints: {req.name} is required but not installed; install every extra first")
        seen[name] = dist.version
        todo += [(Requirement(r), set(req.extras)) for r in dist.requires or []]
    seen.pop(canonical(project), None)
    return seen


def main() -> None:
    pins = closure(PROJECT)
    print("# Exact versions detbench was last tested with; written by scripts/write_constraints.py")
    print("# (the dependencies themselves are in pyproject.toml). Install with:")
    print('#   python -m pip install -e ".[test]" -c constraints.txt')
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
