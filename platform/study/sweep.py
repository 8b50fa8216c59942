"""The sweep's rules: which keys may vary, and that every swept value validates.

    check_sweep(study)                                  # called by platform.study.load.load_study
    trial_cfg = apply_overrides(study, {"loss.params.gamma": 1.0})   # for platform.study.expand

Whether a swept key exists, and what values it takes, is the study's key space
(``platform.study.keys.KeySpace``): for each variant, the key space of the config
with the variant applied, so a variant that switches the detector or a loss
can set the new component's params. Every failure is a ConfigError naming the
sweep's own key (``sweep.grid.<key>[i]``, ``sweep.variants[j].<key>``).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Tuple

from detectors.registry import ConfigError, Param, ParamError, show, suggest
from platform.study.checks import validate
from platform.study.keys import KeySpace, check_sweepable, dotted, is_component_name, set_key
from platform.study.spec import Study

LABEL = "label"  # optional name of a variant in trial keys, e.g. "baseline" instead of its overrides


def overrides_of(variant: Mapping[str, Any]) -> Dict[str, Any]:
    """A variant's dotted-key overrides (everything but its label)."""
    return {k: v for k, v in variant.items() if k != LABEL}


PLURAL = {"integer": "integers", "number": "numbers", "boolean": "booleans (true/false)", "string": "strings"}


def plural(param: Param) -> str:
    """What a list of the key's values is called in messages: "numbers", "values among 'a', 'b'"."""
    if param.choices:
        return "values among " + ", ".join(repr(c) for c in param.choices)
    return PLURAL.get(param.kind, "values")


def apply_overrides(study: Study, overrides: Mapping[str, Any]) -> Study:
    """A new, re-validated Study with ``{"dotted.key": value}`` applied; raises ConfigError."""
    raw = study.model_dump()
    for key, value in sorted(overrides.items(), key=lambda kv: not is_component_name(kv[0])):  # names first
        set_key(raw, key, value)
    new = validate(raw)
    new._source = study._source
    return new


# --------------------------------------------------------------------------- checks

def _check_key(spaces: List[KeySpace], key: str, loc: Tuple) -> Param:
    """What ``key`` takes; raises unless it exists in at least one base config's key space."""
    try:
        check_sweepable(key)
    except ConfigError as e:
        raise ConfigError(loc, e.msg) from None
    for space in spaces:
        try:
            return space.lookup(key)
        except ConfigError as e:
            if not e.unknown_key:
                raise ConfigError(loc, e.msg) from None
    raise ConfigError(loc, f"no such key in the study config{suggest(key, spaces[0].keys())}")


def _attribute(e: ConfigError, loc_of: Mapping[str, Tuple], where: Tuple) -> ConfigError:
    """Pin a validation error of substituted values on the swept key that caused it."""
    for key, loc in loc_of.items():
        if tuple(key.split(".")) == e.loc:
            return ConfigError(loc, e.msg)
    return ConfigError(where, f"{dotted(e.loc)}: {e.msg}")


def _check_scalar(value: Any, loc: Tuple) -> None:
    if not (value is None or isinstance(value, (bool, int, float, str))):
        raise ConfigError(loc, f"expected a single value (number, string, true/false or null), got {show(value)}")


def _switched(study: Study, variant: Mapping[str, Any], loc: Tuple) -> Study:
    """The base config with the variant's component switches (``loss.name: ce``...) applied,
    so a switch and the new component's params can go together in one variant."""
    names = {k: v for k, v in variant.items() if is_component_name(k)}
    if not names:
        return study
    try:
        return apply_overrides(study, names)
    except ConfigError:  # a switch valid only with the variant's other keys (quality + its loss)
        pass
    try:
        return apply_overrides(study, variant)
    except ConfigError as e:
        raise _attribute(e, {k: loc + (k,) for k in variant}, loc) from None


def check_sweep(study: Study) -> None:
    """Every swept key exists and every swept value validates: each variant on the base
    config, each grid value under every variant. Raises ConfigError. Combinations of
    several grid keys are validated by ``platform.study.expand.expand``."""
    bases = [_check_variant(study, j) for j in range(len(study.sweep.variants))]
    spaces = [KeySpace(base) for base in bases or [study]]
    for key in study.sweep.grid:
        _check_grid_key(study, key, bases, spaces)
    if study.sweep.tune is not None:
        for key in study.sweep.tune.space:
            _check_searched_key(study, key, spaces)


def _check_variant(study: Study, j: int) -> Study:
    """``sweep.variants[j]``: a label (optional) and dotted keys; the base config with it applied."""
    loc, variant = ("sweep", "variants", j), study.sweep.variants[j]
    label = variant.get(LABEL)
    if LABEL in variant and not (isinstance(label, str) and label.strip()):
        raise ConfigError(loc + (LABEL,), f"expected a non-empty string, got {show(label)}")
    variant = overrides_of(variant)
    if not variant:
        raise ConfigError(loc, "empty variant: give at least one dotted key")
    space = KeySpace(_switched(study, variant, loc))
    for key, value in variant.items():
        if key in study.sweep.grid:
            raise ConfigError(loc + (key,), "also swept in sweep.grid; put a key in one of them")
        _check_key([space], key, loc + (key,))
        _check_scalar(value, loc + (key,))
    try:
        return apply_overrides(study, variant)
    except ConfigError as e:
        raise _attribute(e, {k: loc + (k,) for k in variant}, loc) from None


def _check_grid_key(study: Study, key: str, bases: List[Study], spaces: List[KeySpace]) -> None:
    """``sweep.grid.<key>``: a key of some base config, and a list of distinct values each of
    which validates on every base (the variants, or the study itself when there are none)."""
    loc, values = ("sweep", "grid", key), study.sweep.grid[key]
    param = _check_key(spaces, key, loc)
    if not isinstance(values, list):
        raise ConfigError(loc, f"expected a list of {plural(param)}, got {show(values)}")
    if not values:
        raise ConfigError(loc, "empty list: give at least one value")
    seen = set()
    for i, value in enumerate(values):
        _check_scalar(value, loc + (i,))
        if json.dumps(value) in seen:
            raise ConfigError(loc + (i,), f"value {show(value)} is listed twice")
        seen.add(json.dumps(value))
        for j, base in enumerate(bases or [study]):
            try:
                apply_overrides(base, {key: value})
            except ConfigError as e:
                err = _attribute(e, {key: loc + (i,)}, loc + (i,))
                raise ConfigError(err.loc, err.msg + (f" (with sweep.variants[{j}])" if bases else "")) from None


def _check_searched_key(study: Study, key: str, spaces: List[KeySpace]) -> None:
    """``sweep.tune.space.<key>``: a number or integer key of the study, not also swept, whose
    range's ends are values the key takes (integers for an integer key)."""
    loc = ("sweep", "tune", "space", key)
    if key.startswith(("dataset.", "detector.backbone.")):  # made once before the search, not per sample
        raise ConfigError(loc, "the dataset and the backbone's pretraining are made once for the whole "
                               "search; they can be swept, not searched")
    param = _check_key(spaces, key, loc)
    if param.kind not in ("number", "integer") and not _takes_numbers(param):
        raise ConfigError(loc, f"only numbers and integers can be searched; this key takes {param.describe()}")
    swept = [f"sweep.variants[{j}]" for j, v in enumerate(study.sweep.variants) if key in v]
    if key in study.sweep.grid:
        swept.insert(0, "sweep.grid")
    if swept:
        raise ConfigError(loc, f"also set by {swept[0]}; a key is either searched or swept")
    rng = study.sweep.tune.space[key]
    for end in ("low", "high"):
        value = getattr(rng, end)
        if param.kind == "integer":
            if not float(value).is_integer():
                raise ConfigError(loc + (end,), f"this key takes integers, got {show(value)}")
            value = int(value)
        try:
            param.check(value)
        except ParamError as e:
            raise ConfigError(loc + (end,), e.msg) from None
    if not rng.low < rng.high:
        raise ConfigError(loc + ("high",), f"must be above low ({show(rng.low)}), got {show(rng.high)}")
    if rng.log and rng.low <= 0:
        raise ConfigError(loc + ("low",), f"a log range needs low > 0, got {show(rng.low)}")


def _takes_numbers(param: Param) -> bool:
    """Whether a key of several forms (focal's alpha: a number, a list or a name) takes a plain number."""
    try:
        param.check(0.5)
    except ParamError as e:
        return not e.expected  # a range violation still means numbers are what it takes
    return True
