"""Broken copies of the shipped studies: each is one line naming the file and the key, exit 2,
nothing written and no Ray started.

Every mutant is generated, deterministically, from ``studies/*.yaml`` (with ``output``
pointed at a temporary directory so "nothing written" can be checked): a wrong type at
every leaf and every section, out-of-range numbers at every numeric leaf (NaN, +-inf,
-1, 10^12 and the values just outside the range the key declares), unknown keys and
choices at every level, required keys removed, swept values broken the same ways (grid
values and variant values, checked against the key they sweep), repeated seeds and grid
values, and non-text bytes spliced into the file at seeded positions. A mutant is only
generated where it must be invalid: one that validates is a validation gap (or a bug
here), and fails the test with its description.

Almost all go through ``load_study`` in-process; a few go through ``python -m platform.run``
as a user runs it, which also checks the exit code, stderr, stdout and that ``ray`` was
never imported. A companion test checks that every number a study can set declares a
range with both ends, so the "out of range" mutants reach every key, including those of
components added later.
"""
from __future__ import annotations

import collections.abc
import copy
import errno
import glob
import math
import os
import random
import subprocess
import sys
import typing
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

import annotated_types
import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

import platform.study.load as study_module
from detectors.build import loss_roles, primary_role
from detectors.data.synthetic import DEFAULTS as GENERATOR_DEFAULTS
from detectors.data.synthetic import RANGES as GENERATOR_RANGES
from detectors.losses import BOX_LOSSES, CLS_LOSSES
from detectors.models import MODELS
from detectors.registry import ConfigError, Interval
from platform.study.keys import dotted, is_component_name
from platform.study.spec import Study
from platform.study.load import StudyError, load_study, read_yaml
from platform.study.sweep import apply_overrides

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDIES = sorted(glob.glob(os.path.join(REPO_ROOT, "studies", "*.yaml")))
TMP = "@TMP@"  # replaced by the mutant's directory when it is written
SEED = 12
HUGE_INT, HUGE_FLOAT = 10 ** 12, 1e12


# --------------------------------------------------------------------------- declarations

@dataclass(frozen=True)
class Decl:
    """What a key takes: ``kind`` in int | float | bool | str | choice | name | list | mapping | other,
    the range of a number (or of a list's numbers)."""

    kind: str
    interval: Optional[Interval] = None


def _interval(metadata) -> Optional[Interval]:
    """An Interval from pydantic's bounds (annotated_types ``Ge``...) or registry ``Interval``s."""
    bounds = {}
    for m in metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if isinstance(m, Interval) and getattr(m, attr) is not None:
                bounds[attr] = getattr(m, attr)
            elif isinstance(m, getattr(annotated_types, attr.capitalize())):
                bounds[attr] = getattr(m, attr)
    return Interval(**bounds) if bounds else None


def _flat(meta) -> list:
    return [x for m in meta for x in (m.metadata if isinstance(m, FieldInfo) else [m])]


def _decl_of_hint(hint: Any, metadata=()) -> Decl:
    """Decl of a pydantic annotation (with its field's metadata) or of a registry hint."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(hint)
        return _decl_of_hint(base, list(metadata) + _flat(meta))
    if origin is Union:
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(arms) == 1:
            return _decl_of_hint(arms[0], metadata)
        numeric = [d for d in (_decl_of_hint(a, metadata) for a in arms) if d.kind in ("int", "float")]
        return Decl("other", numeric[0].interval if numeric else None)  # alpha: its scalar's range
    if origin is typing.Literal:
        return Decl("choice")
    if origin in (list, tuple, collections.abc.Sequence):
        inner = typing.get_args(hint)
        return Decl("list", _decl_of_hint(inner[0]).interval if inner else None)
    if origin is dict or (isinstance(hint, type) and issubclass(hint, BaseModel)):
        return Decl("mapping")
    kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(hint, "other")
    return Decl(kind, _interval(metadata) if kind in ("int", "float") else None)


def _loss_params(study: Study, section: str, role: Optional[str]):
    det = study.detector.name
    role = role or primary_role(det)
    given = study.loss if section == "loss" else study.losses.get(role)
    name = given.name if given else loss_roles(det)[role].default
    return loss_roles(det)[role].registry.parameters(name)


def declaration(study: Study, parts: List[str]) -> Decl:
    """The declaration behind a dotted key of ``study`` (``parts`` split on dots)."""
    if parts[-1] == "name" and is_component_name(".".join(parts)):
        return Decl("name")
    if parts[:2] == ["detector", "params"]:
        return _decl_of_hint(MODELS.parameters(study.detector.name)[parts[2]].hint)
    if parts[:2] == ["loss", "params"]:
        return _decl_of_hint(_loss_params(study, "loss", None)[parts[2]].hint)
    if parts[0] == "losses" and parts[2] == "params":
        return _decl_of_hint(_loss_params(study, "losses", parts[1])[parts[3]].hint)
    if parts[:2] == ["dataset", "synthetic"]:
        default = GENERATOR_DEFAULTS[parts[2]]
        kind = "list" if isinstance(default, list) else "int" if isinstance(default, int) else "float"
        return Decl(kind, GENERATOR_RANGES[parts[2]])
    model: Any = Study
    for i, part in enumerate(parts):
        field = model.model_fields[part]
        if i == len(parts) - 1:
            return _decl_of_hint(field.annotation, field.metadata)
        if typing.get_origin(field.annotation) is dict:  # train.loss_weights.<name>, sweep.grid.<key>
            return _decl_of_hint(typing.get_args(field.annotation)[1])
        args = [a for a in typing.get_args(field.annotation) if a is not type(None)] or [field.annotation]
        model = args[0]
    raise KeyError(parts)


def outside(interval: Interval, kind: str) -> List[Any]:
    """Values just outside ``interval`` (both sides where bounded), and the absurd ones."""
    step = 1 if kind == "int" else None
    out = []
    if interval.ge is not None:
        out.append(interval.ge - (step or max(abs(interval.ge) * 1e-3, 1e-3)))
    if interval.gt is not None:
        out.append(interval.gt)
    if interval.le is not None:
        out.append(interval.le + (step or max(abs(interval.le) * 1e-3, 1e-3)))
    if interval.lt is not None:
        out.append(interval.lt)
    out += [-1, HUGE_INT if kind == "int" else HUGE_FLOAT]
    if kind == "int":
        out = [int(v) for v in out]
    return [v for v in dict.fromkeys(out) if interval.violation(v)]


# --------------------------------------------------------------------------- mutants

@dataclass
class Mutant:
    study: str                  # shipped file name
    category: str
    what: str                   # a description, for failure messages
    path: str                   # key path the error must name; "@line": a line and column
    raw: Optional[dict] = None  # the mutated study, or None: ``edit`` works on the base file's bytes
    edit: Optional[Callable[[bytes], bytes]] = None


def base_raw(source: str) -> dict:
    raw = read_yaml(source)
    raw["output"] = {"runs_dir": f"{TMP}/runs", "reports_dir": f"{TMP}/reports"}
    return raw


def render(raw: dict, directory: str) -> bytes:
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True).replace(TMP, directory).encode()


_DELETE = object()  # a value for _set: remove the key


def _set(raw: dict, loc: Tuple, value: Any) -> dict:
    out = copy.deepcopy(raw)
    node = out
    for part in loc[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[loc[-1]]
    else:
        node[loc[-1]] = value
    return out


def _leaves(node: Any, loc: Tuple = ()):
    """(loc, value) of every node below the top, sections included."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield loc + (key,), value
        yield from _leaves(value, loc + (key,))


def _context(study: Study, loc: Tuple) -> Tuple[Study, List[str], bool]:
    """(config the key lives in, its dotted parts, whether the leaf is one element of a list)."""
    if loc[:2] == ("sweep", "variants") and len(loc) == 4:
        variant = study.sweep.variants[loc[2]]
        names = {k: v for k, v in variant.items() if is_component_name(k)}
        try:
            base = apply_overrides(study, names) if names else study
        except ConfigError:  # a switch valid only with the variant's other keys
            base = apply_overrides(study, {k: v for k, v in variant.items() if k != "label"})
        return base, loc[3].split("."), False
    if loc[:2] == ("sweep", "grid") and len(loc) == 4:
        return study, loc[2].split("."), False
    if loc[:3] == ("sweep", "tune", "space") and len(loc) == 5 and loc[4] in ("low", "high"):
        return study, loc[3].split("."), False  # a searched range's ends take the key's own range
    if loc[:2] == ("sweep", "seeds"):
        return study, ["sweep", "seeds"], len(loc) == 3
    element = isinstance(loc[-1], int)
    parts = [str(p) for p in (loc[:-1] if element else loc)]
    return study, parts, element


def _wrong_types(value: Any, decl: Decl) -> List[Any]:
    if isinstance(value, bool):
        return ["yes", 1]
    if isinstance(value, (int, float)):
        out = ["x1", True, str(value)]
        return out + [value + 0.5] if decl.kind == "int" and isinstance(value, int) else out
    if isinstance(value, str):
        return [5, [value]]
    if isinstance(value, list):
        return [{"a": 1}, "x1"]
    if isinstance(value, dict):
        return [[1], 5]
    return []


def mutants_of(source: str) -> List[Mutant]:
    name = os.path.basename(source)
    raw = base_raw(source)
    study = load_study(source)
    rng = random.Random(f"{SEED}-{name}")
    out: List[Mutant] = []

    def add(category: str, loc: Tuple, value: Any, what: str = "") -> None:
        swept = loc[:1] == ("sweep",) and len(loc) >= 3 and loc[1] in ("grid", "variants")
        cat = "swept-value" if swept and category in ("type", "range", "choice") else category
        shown = "deleted" if value is _DELETE else repr(value)
        out.append(Mutant(name, cat, f"{dotted(loc)} = {shown} {what}".strip(), dotted(loc), _set(raw, loc, value)))

    for loc, value in _leaves(raw):
        if isinstance(value, dict):
            decl = Decl("mapping")
        elif loc[-1] == "label":
            decl = Decl("str")
        else:
            cfg, parts, element = _context(study, loc)
            decl = declaration(cfg, parts)
            if element and decl.kind == "list":
                decl = Decl("int" if isinstance(value, int) else "float", decl.interval)
        for bad in _wrong_types(value, decl):
            add("type", loc, bad)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for bad in [math.nan, math.inf, -math.inf]:
                add("range", loc, bad)
            assert decl.interval is not None, f"{name}: {dotted(loc)} declares no range"
            for bad in outside(decl.interval, "int" if isinstance(value, int) and decl.kind != "float" else "float"):
                add("range", loc, bad)
        if decl.kind in ("choice", "name"):
            add("choice", loc, "zz_no_such_choice")
        if loc == ("name",):
            add("choice", loc, "Not A Name!")
        if isinstance(value, dict):
            swept = loc[:2] in (("sweep", "grid"), ("sweep", "variants"))
            key = "train.zz_unknown" if swept else "zz_unknown"  # swept keys are dotted
            add("unknown-key", loc + (key,), [1] if loc == ("sweep", "grid") else 1)
            if loc[:2] == ("sweep", "variants"):
                add("unknown-key", loc + ("zz_unknown",), 1, "(not a dotted key)")
                add("sweep", loc, {}, "(empty variant)")
        if isinstance(value, list) and value and all(not isinstance(v, (dict, list)) for v in value):
            if loc[:2] == ("sweep", "grid") or loc == ("sweep", "seeds"):
                add("sweep", loc, [], "(empty list)")
                add("sweep", loc, value + [value[0]], "(a value twice)")
    out.append(Mutant(name, "unknown-key", "top-level zz_unknown", "zz_unknown", dict(raw, zz_unknown=1)))
    for section, model in (((), Study), (("dataset",), None), (("detector",), None), (("loss",), None)):
        node = raw
        for part in section:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        model = model or Study.model_fields[section[0]].annotation
        model = [a for a in typing.get_args(model) if a is not type(None)][0] if typing.get_origin(model) else model
        for key, field in model.model_fields.items():
            if field.is_required() and key in node:
                add("missing", section + (key,), _DELETE)
    # Non-text bytes at seeded positions of the file; a NUL; the whole file in UTF-16 or Latin-1.
    for _ in range(4):
        frac, byte = rng.random(), rng.choice([b"\xff", b"\xc3", b"\x80", b"\xfe\xff", b"\xed\xa0\x80"])
        out.append(Mutant(name, "bytes", f"{byte!r} at {frac:.2f} of the file", "@line",
                          edit=lambda d, f=frac, b=byte: d[:int(len(d) * f)] + b + d[int(len(d) * f):]))
    frac = rng.random()
    out.append(Mutant(name, "bytes", f"NUL at {frac:.2f} of the file", "@line",
                      edit=lambda d, f=frac: d[:int(len(d) * f)] + b"\x00" + d[int(len(d) * f):]))
    out.append(Mutant(name, "bytes", "saved as UTF-16", "@line", edit=lambda d: d.decode().encode("utf-16")))
    out.append(Mutant(name, "bytes", "a Latin-1 description", "@line",
                      edit=lambda d: d.replace(b"description: ", "description: Caf\u00e9 ".encode("latin-1"), 1)))
    garbage = bytes(rng.randrange(256) for _ in range(300)) + b"\xff"
    out.append(Mutant(name, "bytes", "300 random bytes", "@line", edit=lambda d, g=garbage: g))
    return out


def all_mutants() -> List[Mutant]:
    return [m for source in STUDIES for m in mutants_of(source)]


MUTANTS = all_mutants()
CATEGORIES = sorted({m.category for m in MUTANTS})


def _check_one(m: Mutant, directory: str) -> Optional[str]:
    """None if the mutant is rejected as it must be, else what went wrong."""
    data = render(m.raw, directory) if m.raw is not None else m.edit(render(base_raw(
        os.path.join(REPO_ROOT, "studies", m.study)), directory))
    source = os.path.join(directory, f"mutant-{m.study}")
    with open(source, "wb") as f:
        f.write(data)
    try:
        load_study(source)
        problem: Optional[str] = "passed validation"
    except StudyError as e:
        problem = _judge(m, e, source)
    except Exception as e:  # anything else would be a traceback for the user
        problem = f"raised {type(e).__name__}: {e}"
    leftovers = sorted(set(os.listdir(directory)) - {os.path.basename(source)})
    os.remove(source)
    return f"wrote {leftovers}" if leftovers else problem


def _judge(m: Mutant, e: StudyError, source: str) -> Optional[str]:
    text = str(e)
    if "\n" in text or not text.startswith(f"{source}: "):
        return f"not one line naming the file: {text!r}"
    if m.path == "@line":  # bytes that are not text: no key to name, so where they are
        ok = e.path.startswith("line ")
    else:  # the key itself, a key inside it (a list item) or the key it is inside (a setting's pair)
        ok = bool(e.path) and (e.path == m.path or m.path.startswith((e.path + ".", e.path + "["))
                               or e.path.startswith((m.path + ".", m.path + "[")))
    return None if ok else f"names {e.path!r}, not {m.path!r}: {text}"


def test_every_shipped_study_is_valid_as_written_here(tmp_path):
    for source in STUDIES:
        path = tmp_path / os.path.basename(source)
        path.write_bytes(render(base_raw(source), str(tmp_path)))
        study = load_study(str(path))
        assert study.output.runs_dir == str(tmp_path / "runs")
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(s) for s in STUDIES)


@pytest.mark.parametrize("category", CATEGORIES)
def test_mutants_are_one_line_errors_and_write_nothing(tmp_path, category):
    mutants = [m for m in MUTANTS if m.category == category]
    before = sorted(os.listdir(REPO_ROOT))
    failures = []
    for m in mutants:
        problem = _check_one(m, str(tmp_path))
        if problem:
            failures.append(f"{m.study}: {m.what}: {problem}")
    assert not failures, f"{len(failures)} of {len(mutants)} {category} mutants:\n" + "\n".join(failures[:40])
    assert os.listdir(tmp_path) == [] and sorted(os.listdir(REPO_ROOT)) == before


def test_mutant_counts():
    """Every category is exercised on every shipped study; the totals (printed with -s) go in reports."""
    counts = Counter(m.category for m in MUTANTS)
    per_study = Counter((m.study, m.category) for m in MUTANTS)
    shown = ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))
    print(f"\n{len(MUTANTS)} mutants of {len(STUDIES)} studies: {shown}")
    assert len(STUDIES) >= 4 and len(MUTANTS) >= 1000
    for source in STUDIES:
        for category in ("type", "range", "choice", "unknown-key", "missing", "bytes", "sweep", "swept-value"):
            assert per_study[(os.path.basename(source), category)] > 0, (source, category)


# --------------------------------------------------------------------------- the file itself

def _bomb(levels: int) -> str:
    """An alias bomb: 10 ** levels values from a few hundred bytes."""
    items = ["&a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "description: [" + ", ".join(items) + "]\n"


SMOKE = os.path.join(REPO_ROOT, "studies", "smoke.yaml")
FILE_CASES = [
    # (id, how to make it at PATH, key path, fragment)
    ("directory", lambda p: os.mkdir(p), "", "is a directory"),
    ("missing", lambda p: None, "", "no such file or directory"),
    ("empty", lambda p: Path(p).write_text(""), "", "got an empty file"),
    ("only-comments", lambda p: Path(p).write_text("# nothing here\n"), "", "got an empty file"),
    ("fifo", lambda p: os.mkfifo(p), "", "not a regular file"),  # opening it would block forever
    ("too-large", lambda p: Path(p).write_text("# padding\n" * 110_000), "", "too large for a study file"),
    ("alias-bomb", lambda p: Path(p).write_text("name: b\n" + _bomb(9)), "", "more than 100000 values"),
    ("deep-nesting", lambda p: Path(p).write_text("name: " + "[" * 5000 + "]" * 5000 + "\n"), "",
     "nested too deeply"),
    ("nested-lists", lambda p: Path(p).write_text("name: " + "[" * 80 + "]" * 80 + "\n"), "",
     "nested more than 64 levels"),
    ("huge-integer", lambda p: Path(p).write_text("name: t\ntrain: {epochs: " + "9" * 5000 + "}\n"), "",
     "a value YAML cannot read"),
    ("top-level-list", lambda p: Path(p).write_text("- 1\n- 2\n"), "", "top level must be a mapping"),
]


@pytest.mark.parametrize("make,path,fragment", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_file_problems_are_one_line(tmp_path, make, path, fragment):
    source = str(tmp_path / "study.yaml")
    make(source)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(StudyError) as info:
        load_study(source)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{source}: ") and info.value.path == path, text
    assert fragment in text, text
    assert sorted(os.listdir(tmp_path)) == before


def test_non_utf8_byte_is_located(tmp_path):
    source = tmp_path / "study.yaml"
    source.write_bytes("name: t\ndescription: caf\u00e9 ol\u00e9\n".encode("latin-1"))
    with pytest.raises(StudyError) as info:
        load_study(str(source))
    # 'description: caf' is 16 characters: the 0xe9 of 'caf\xe9' is column 17 of line 2.
    assert str(info.value) == (f"{source}: line 2, column 17: not UTF-8 text (byte 0xe9); "
                               "a study file is YAML saved as UTF-8")


def test_nul_character_is_located(tmp_path):
    source = tmp_path / "study.yaml"
    source.write_bytes(b"name: t\nde\x00scription: x\n")
    with pytest.raises(StudyError) as info:
        load_study(str(source))
    assert str(info.value) == (f"{source}: line 2, column 3: unacceptable character #x0000: "
                               "special characters are not allowed")


def test_utf8_with_bom_is_read(tmp_path):
    source = tmp_path / "smoke.yaml"
    source.write_bytes(b"\xef\xbb\xbf" + render(base_raw(SMOKE), str(tmp_path)))
    assert load_study(str(source)).name == "smoke"


def test_unreadable_file(tmp_path, monkeypatch):
    source = tmp_path / "study.yaml"
    source.write_bytes(render(base_raw(SMOKE), str(tmp_path)))
    os.chmod(source, 0)
    if os.access(source, os.R_OK):  # root reads anything: make open fail as it does for other users
        def denied(file, *args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), file)

        monkeypatch.setattr(study_module, "open", denied, raising=False)
    with pytest.raises(StudyError) as info:
        load_study(str(source))
    assert str(info.value) == f"{source}: permission denied"


# --------------------------------------------------------------------------- declared ranges

def _numbers(hint: Any, where: str, metadata=()):
    """(where, range or None) of every number a value of this type can hold."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(hint)
        yield from _numbers(base, where, list(metadata) + _flat(meta))
    elif origin in (Union, list, collections.abc.Sequence):
        for arm in typing.get_args(hint):
            yield from _numbers(arm, where, metadata)
    elif origin is dict:
        yield from _numbers(typing.get_args(hint)[1], f"{where}.*", metadata)
    elif isinstance(hint, type) and issubclass(hint, BaseModel):
        for key, field in hint.model_fields.items():
            yield from _numbers(field.annotation, f"{where}.{key}", field.metadata)
    elif hint in (int, float):
        yield where, _interval(metadata)


def test_every_number_a_study_sets_has_a_range_with_both_ends():
    """So that 'absurd' is an error for every key, including components registered later."""
    numbers = list(_numbers(Study, "study"))
    for registry in (MODELS, CLS_LOSSES, BOX_LOSSES):
        for name in registry:
            for key, param in registry.parameters(name).items():
                numbers += list(_numbers(param.hint, f"{registry.kind} '{name}'.{key}"))
    numbers += [(f"dataset.synthetic.{k}", GENERATOR_RANGES.get(k)) for k in GENERATOR_DEFAULTS]
    assert len(numbers) > 100, len(numbers)
    loose = [where for where, r in numbers if r is None
             or (r.ge is None and r.gt is None) or (r.le is None and r.lt is None)]
    assert not loose, f"numbers without a range with both ends: {loose}"


# --------------------------------------------------------------------------- the real CLI

HOOK = '''import atexit, os, sys
# Test hook (tests/platform/test_mutations.py): record whether this process imported ray.
atexit.register(lambda: open(os.environ["DETBENCH_TEST_MODULES"], "w").write(str("ray" in sys.modules)))
'''


def _cli_cases() -> List[Mutant]:
    """One mutant of each kind, failing at different stages of validation, and a study asking for
    more CPUs per trial than this machine has (the check ``platform.run`` adds for a local Ray)."""
    picks = [("smoke.yaml", "type"), ("focal_gamma_sweep.yaml", "swept-value"), ("gfl_ablation.yaml", "range"),
             ("loss_ablation.yaml", "unknown-key"), ("gfl_ablation.yaml", "bytes")]
    rng = random.Random(SEED)
    out = []
    for study, category in picks:
        pool = [m for m in MUTANTS if m.study == study and m.category == category]
        out.append(pool[rng.randrange(len(pool))])
    cpus = os.cpu_count() or 1
    out.append(Mutant("smoke.yaml", "resources", f"cpus_per_trial = {cpus + 1}", "resources.cpus_per_trial",
                      _set(base_raw(SMOKE), ("resources", "cpus_per_trial"), cpus + 1)))
    return out


def test_cli_exit_2_one_line_nothing_written_no_ray(tmp_path_factory):
    hook_dir = tmp_path_factory.mktemp("hook")
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    before = sorted(os.listdir(REPO_ROOT))

    def run(m: Mutant):
        directory = tmp_path_factory.mktemp("cli")
        data = render(m.raw, str(directory)) if m.raw is not None else m.edit(render(base_raw(
            os.path.join(REPO_ROOT, "studies", m.study)), str(directory)))
        source = directory / m.study
        source.write_bytes(data)
        marker = hook_dir / f"modules-{directory.name}"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook_dir)] + [p for p in [os.environ.get(
            "PYTHONPATH")] if p]), DETBENCH_TEST_MODULES=str(marker), PYTHONDONTWRITEBYTECODE="1",
                   RAY_TMPDIR=str(directory / "ray"))
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.run([sys.executable, "-m", "platform.run", str(source)], cwd=REPO_ROOT, env=env,
                              text=True, capture_output=True, timeout=120)
        return m, source, proc, marker.read_text(), sorted(os.listdir(directory))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(run, _cli_cases()))
    for m, source, proc, ray_imported, listing in results:
        where = f"{m.study}: {m.what}"
        assert proc.returncode == 2, (where, proc.returncode, proc.stderr)
        assert proc.stdout == "", (where, proc.stdout)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {source}: "), (where, proc.stderr)
        error = lines[0][len(f"error: {source}: "):]
        assert (error.startswith("line ") if m.path == "@line" else error.startswith(m.path.split("[")[0])), \
            (where, proc.stderr)
        assert ray_imported == "False", where
        assert listing == [m.study], (where, listing)  # no runs/, reports/, ray/ beside it
    cpus = os.cpu_count() or 1
    assert results[-1][2].stderr == (
        f"error: {results[-1][1]}: resources.cpus_per_trial: {cpus + 1} CPUs per trial, but this machine has "
        f"{cpus} (a local Ray gets them all); lower it, or pass --address to run on a cluster\n")
    assert sorted(os.listdir(REPO_ROOT)) == before
