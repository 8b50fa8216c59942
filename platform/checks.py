"""Checks of what a study names outside itself, before anything starts: the dataset
(the generator's settings, or the COCO files), the output directories and the store URL.

Each failure is a :class:`platform.messages.ConfigError` naming the key.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

from detectors.registry import ConfigError, ParamError, check_value
from platform.messages import show, suggest

COCO_KEYS = ("train_images", "train_annotations", "val_images", "val_annotations")


def check_output(study) -> None:
    """The output and cache directories can be created (or are directories), and the store
    URL parses: otherwise the run would fail after Ray started, with a traceback."""
    dirs = [(("output", "runs_dir"), study.output.runs_dir), (("output", "reports_dir"), study.output.reports_dir),
            (("dataset", "cache_dir"), study.dataset.cache_dir)]
    for loc, path in dirs:
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            what = "is" if existing == path else f"cannot be created: {existing} is"
            raise ConfigError(loc, f"{path} {what} a file, not a directory")
        if existing != path and not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(loc, f"{path} cannot be created: no write permission in {existing}")
    url = study.tracking.store_url
    if url and not url.startswith("sqlite:///"):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        loc = ("tracking", "store_url")
        try:
            make_url(url).get_dialect()
        except (ArgumentError, NoSuchModuleError):
            raise ConfigError(loc, f"not a database URL SQLAlchemy knows (e.g. sqlite:////abs/path/results.db "
                                f"or postgresql://user@host/db), got {show(url)}") from None
        except ImportError as e:
            raise ConfigError(loc, f"the database driver is not installed ({e.name or e})") from None


def synthetic_defaults() -> Dict[str, Any]:
    """The synthetic generator's settings and their defaults."""
    from detectors.data.synthetic import DEFAULTS

    return dict(DEFAULTS)


def _hint_of(default: Any) -> Any:
    """A generator setting's type, from its default (a list default: a list of integers)."""
    if isinstance(default, list):
        return List[int] if all(isinstance(x, int) and not isinstance(x, bool) for x in default) else List[Any]
    return type(default) if isinstance(default, (bool, int, float, str)) else Any


def check_dataset(ds) -> None:
    """The dataset section: synthetic generator settings known, typed and in range; COCO paths exist."""
    if ds.kind == "synthetic":
        for key in COCO_KEYS:
            if getattr(ds, key) is not None:
                raise ConfigError(("dataset", key), "only used with kind 'coco'")
        defaults = synthetic_defaults()
        out = {}
        for key, value in ds.synthetic.items():
            loc = ("dataset", "synthetic", key)
            if key not in defaults:
                raise ConfigError(loc, f"unknown generator setting{suggest(key, defaults)} "
                                    f"(known: {', '.join(sorted(defaults))})", unknown_key=True)
            try:
                out[key] = check_value(_hint_of(defaults[key]), value)
            except ParamError as e:
                raise ConfigError(loc, e.msg, expected=e.expected) from None
        ds.synthetic = out
        _check_generator_values(out)
        return
    if ds.synthetic:
        raise ConfigError(("dataset", "synthetic"), "only used with kind 'synthetic'")
    for key in COCO_KEYS:
        path = getattr(ds, key)
        if path is None:
            raise ConfigError(("dataset", key), "required for kind 'coco'")
        want_dir = key.endswith("images")
        if not (os.path.isdir(path) if want_dir else os.path.isfile(path)):
            raise ConfigError(("dataset", key), f"no such {'directory' if want_dir else 'file'}: {path}")


def _check_generator_values(params: Dict[str, Any]) -> None:
    """The generator's own range checks (``resolve_params``), pinned on the key they name."""
    try:
        from detectors.data.synthetic import resolve_params
    except ImportError:
        return
    try:
        resolve_params(params)
    except ValueError as e:
        msg = str(e).removeprefix("synthetic: ")
        named = [k for k in params if f"'{k}'" in msg]
        raise ConfigError(("dataset", "synthetic") + tuple(named[:1]), msg) from None
