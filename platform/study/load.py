"""Loading a study file: read it, validate it, check its sweep.

    study = load_study("studies/focal_gamma_sweep.yaml")   # a platform.study.spec.Study, or StudyError

The whole path, in order: the file itself (here: everything that can be wrong
with the file rather than its keys is one line: missing, a directory, a pipe or
device (open() would block), too large, not UTF-8, a control character, YAML
syntax, duplicate keys, a value YAML cannot read, nesting or aliases that expand
past any study's size, a top level that is not a mapping), then the schema and
what only the worker package knows (``platform.study.checks.validate``), then the
sweep (``platform.study.sweep.check_sweep``). Those raise
``detectors.registry.ConfigError`` with a key path; here it becomes the user's
:class:`StudyError`, ``<file>: <dotted.key.path>: <message>``.
"""
from __future__ import annotations

import os
import re
import stat
from typing import Any, Union

import yaml

from detectors.registry import ConfigError, show
from platform.study.checks import validate
from platform.study.keys import dotted
from platform.study.spec import Study
from platform.study.sweep import check_sweep


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


class StudyError(Exception):
    """A study file problem; ``str(err)`` is ``<file>: <key.path>: <message>``, one line."""

    def __init__(self, file: str, path: str, message: str) -> None:
        self.file, self.path, self.message = str(file), path, message
        text = f"{self.file}: {path}: {message}" if path else f"{self.file}: {message}"
        super().__init__(" ".join(text.split("\n")))


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


# A study file is a few KiB of YAML. Past these limits it is something else (a data
# file given by mistake, an alias bomb) and reading on would only take time and memory.
MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 100_000     # after expanding YAML aliases
MAX_DEPTH = 64


def _where(text: str, offset: int) -> str:
    """'line L, column C' of a character offset."""
    line = text.count("\n", 0, offset)
    return f"line {line + 1}, column {offset - (text.rfind(chr(10), 0, offset) + 1) + 1}"


def _read_text(source: str) -> str:
    """The file's text: a regular, readable, not too large, UTF-8 file (a BOM is allowed)."""
    try:
        info = os.stat(source)
        if stat.S_ISDIR(info.st_mode):
            raise StudyError(source, "", "is a directory, not a study file")
        if not stat.S_ISREG(info.st_mode):  # a pipe or a device would block or never end
            raise StudyError(source, "", "not a regular file; give a study file (YAML)")
        if info.st_size > MAX_FILE_BYTES:
            raise StudyError(source, "", f"{info.st_size} bytes: too large for a study file (at most "
                             f"{MAX_FILE_BYTES} bytes)")
        with open(source, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise StudyError(source, "", (e.strerror or str(e)).lower()) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        before = data[:e.start].decode("utf-8", "replace")
        where = _where(before, len(before))
        raise StudyError(source, where, f"not UTF-8 text (byte 0x{data[e.start]:02x}); a study file is "
                         "YAML saved as UTF-8") from None


def _check_size(raw: Any, source: str) -> None:
    """At most MAX_VALUES values and MAX_DEPTH levels, counted with aliases expanded."""
    count, stack = 0, [(raw, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise StudyError(source, "", f"more than {MAX_VALUES} values (YAML aliases expanded): "
                             "not a study file")
        if depth > MAX_DEPTH:
            raise StudyError(source, "", f"nested more than {MAX_DEPTH} levels deep: not a study file")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)


def read_yaml(source: str) -> dict:
    """The study file as a plain dict; every problem with the file itself is a StudyError."""
    text = _read_text(source)
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "yaml"
        raise StudyError(source, where, e.problem or str(e)) from None
    except yaml.reader.ReaderError as e:  # a control character (NUL, ...) in the text
        raise StudyError(source, _where(text, e.position), f"unacceptable character #x{e.character:04x}: "
                         f"{e.reason}") from None
    except yaml.YAMLError as e:
        raise StudyError(source, "yaml", str(e)) from None
    except RecursionError:
        raise StudyError(source, "", "nested too deeply: not a study file") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise StudyError(source, "", f"a value YAML cannot read: {str(e).splitlines()[0]}") from None
    _check_size(raw, source)
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else show(raw)
        raise StudyError(source, "", f"top level must be a mapping of keys (name:, dataset:, ...), got {got}")
    return raw
