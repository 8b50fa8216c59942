"""Loading a study file: read, validate the config, check the sweep.

    study = load_study("studies/focal_gamma_sweep.yaml")

The file itself is read by ``platform.studyfile``, the schema and component
checks live in ``platform.spec``, the sweep's rules in ``platform.sweep``; this
module only strings them together, so none of those imports its caller.
"""
from __future__ import annotations

import os
from typing import Union

from detectors.registry import ConfigError
from platform.spec import Study, StudyError, dotted, validate
from platform.studyfile import read_yaml
from platform.sweep import check_sweep

__all__ = ["load_study", "StudyError", "Study"]


def load_study(path: Union[str, os.PathLike]) -> Study:
    """Read, validate and resolve a study file. Creates nothing on disk.

    Relative paths (COCO files, output dirs) resolve against the current
    directory; tracking URIs default to SQLite files under ``runs_dir``.
    Raises :class:`StudyError`.
    """
    source = os.fspath(path)
    raw = read_yaml(source)
    try:
        study = validate(raw)
        check_sweep(study)
    except ConfigError as e:
        raise StudyError(source, dotted(e.loc), e.msg) from None
    study._source = source
    return study
