"""The sweep's rules: which keys may vary, and that every swept value validates.

    check_sweep(study)      # called by platform.study.load_study; raises ConfigError

Whether a dotted key exists, and what values it takes, is read from the
study's pydantic models and from the components' declarations
(``detectors.build``), by walking them: ``detector.params.*`` are the chosen
detector's parameters, ``loss.params.*`` / ``losses.<role>.params.*`` the
chosen losses', ``train.loss_weights.*`` the detector's loss names,
``dataset.synthetic.*`` the generator's settings.
"""
from __future__ import annotations

import json
import typing
from typing import Any, Dict, Iterable, List, Literal, Mapping, Tuple, Union

from pydantic import BaseModel

from detectors.registry import ConfigError
from platform.messages import PLURAL, show, suggest
from platform.spec import (SWEEPABLE, Study, apply_overrides, dotted, is_component_name, is_scalar,
                           synthetic_defaults)

LABEL = "label"  # optional name of a variant in trial keys, e.g. "baseline" instead of its overrides


def overrides_of(variant: Mapping[str, Any]) -> Dict[str, Any]:
    """A variant's dotted-key overrides (everything but its label)."""
    return {k: v for k, v in variant.items() if k != LABEL}


# --------------------------------------------------------------------------- the key space

def _plural_of_hint(hint: Any) -> str:
    """What a list of values of this type is called in messages: "numbers", "values among 'a', 'b'"."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is Union else [hint]
    if len(args) != 1:
        return "values"
    hint = args[0]
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is Literal:
        return "values among " + ", ".join(repr(c) for c in typing.get_args(hint))
    kind = {int: "integer", float: "number", bool: "boolean", str: "string"}.get(hint)
    return PLURAL.get(kind, "values")


def _unknown(key: str) -> ConfigError:
    return ConfigError(tuple(key.split(".")), "no such key", unknown_key=True)


def _component_param(study: Study, parts: List[str], key: str) -> str:
    from detectors.build import loss_roles, primary_role, resolve_losses
    from detectors.models import MODELS

    section = parts[0]
    if section == "detector":
        params = MODELS.parameters(study.detector.name)
    else:
        role = primary_role(study.detector.name) if section == "loss" else parts[1]
        roles = loss_roles(study.detector.name)
        given = study.loss.model_dump() if study.loss else None
        spec = resolve_losses(study.detector.name, given, {r: s.model_dump() for r, s in study.losses.items()})
        if role not in roles or role not in spec:
            raise _unknown(key)
        params = roles[role].registry.parameters(spec[role]["name"])
    name = parts[-1]
    if name not in params:
        raise _unknown(key)
    return _plural_of_hint(params[name].hint)


def lookup(study: Study, key: str) -> str:
    """What a list of ``key``'s values is called ("numbers"...); raises ConfigError
    (``unknown_key``) if the study config has no such key."""
    parts = key.split(".")
    if parts[0] == "losses":
        if len(parts) == 3 and parts[2] == "name":
            from detectors.build import loss_roles

            if parts[1] not in loss_roles(study.detector.name):
                raise _unknown(key)
            return "loss names"
        if len(parts) == 4 and parts[2] == "params":
            return _component_param(study, parts, key)
        raise _unknown(key)
    if parts[:2] in (["detector", "params"], ["loss", "params"]) and len(parts) == 3:
        return _component_param(study, parts, key)
    if parts[:2] == ["train", "loss_weights"] and len(parts) == 3:
        from detectors.build import weight_names

        if parts[2] not in weight_names(study.detector.name):
            raise _unknown(key)
        return PLURAL["number"]
    if parts[:2] == ["dataset", "synthetic"] and len(parts) == 3:
        defaults = synthetic_defaults()
        if parts[2] not in defaults:
            raise _unknown(key)
        return "values"
    model: Any = Study
    for i, part in enumerate(parts):
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        if part not in fields:
            raise _unknown(key)
        hint = fields[part].annotation
        inner = ([a for a in typing.get_args(hint) if a is not type(None)]
                 if typing.get_origin(hint) is Union else [hint])
        model = inner[0] if len(inner) == 1 else hint
        if i == len(parts) - 1:
            if isinstance(model, type) and issubclass(model, BaseModel) or typing.get_origin(model) in (dict, list):
                raise ConfigError(tuple(parts), "a section, not a single value: name a key inside it")
            return _plural_of_hint(hint)
    raise _unknown(key)


def leaf_keys(study: Study) -> List[str]:
    """Every dotted key a sweep could name (for "did you mean" hints)."""
    from detectors.build import loss_roles, primary_role, resolve_losses, weight_names
    from detectors.models import MODELS

    def walk(prefix: str, node: Any) -> Iterable[str]:
        if not isinstance(node, dict):
            return [prefix]
        return [k for key, v in node.items() for k in walk(f"{prefix}.{key}", v)]

    data = study.model_dump(include=set(SWEEPABLE) - {"losses"})
    keys = [k for section in data for k in walk(section, data[section])]
    keys += [f"detector.params.{p}" for p in MODELS.parameters(study.detector.name)]
    given = study.loss.model_dump() if study.loss else None
    spec = resolve_losses(study.detector.name, given, {r: s.model_dump() for r, s in study.losses.items()})
    roles, primary = loss_roles(study.detector.name), primary_role(study.detector.name)
    for role, loss in spec.items():
        prefix = "loss" if role == primary else f"losses.{role}"
        keys += [f"{prefix}.params.{p}" for p in roles[role].registry.parameters(loss["name"])]
    keys += [f"losses.{r}.name" for r in roles]
    keys += [f"train.loss_weights.{n}" for n in weight_names(study.detector.name)]
    return keys + [f"dataset.synthetic.{p}" for p in synthetic_defaults()]


# --------------------------------------------------------------------------- checks

def _check_key(bases: List[Study], key: str, loc: Tuple) -> str:
    """What ``key``'s values are called; raises unless it exists in at least one base config."""
    parts = key.split(".")
    if parts[0] not in SWEEPABLE or len(parts) < 2:
        raise ConfigError(loc, f"cannot sweep '{key}': only keys under {', '.join(SWEEPABLE)} can vary")
    for base in bases:
        try:
            return lookup(base, key)
        except ConfigError as e:
            if not e.unknown_key:
                raise ConfigError(loc, e.msg) from None
    raise ConfigError(loc, f"no such key in the study config{suggest(key, leaf_keys(bases[0]))}")


def _attribute(e: ConfigError, loc_of: Mapping[str, Tuple], where: Tuple) -> ConfigError:
    """Pin a validation error of substituted values on the swept key that caused it."""
    for key, loc in loc_of.items():
        if tuple(key.split(".")) == e.loc:
            return ConfigError(loc, e.msg)
    return ConfigError(where, f"{dotted(e.loc)}: {e.msg}")


def _check_scalar(value: Any, loc: Tuple) -> None:
    if not is_scalar(value):
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
    several grid keys are validated by ``platform.expand.expand``."""
    grid, variants = study.sweep.grid, study.sweep.variants
    bases = []
    for j, variant in enumerate(variants):
        loc = ("sweep", "variants", j)
        label = variant.get(LABEL)
        if LABEL in variant and not (isinstance(label, str) and label.strip()):
            raise ConfigError(loc + (LABEL,), f"expected a non-empty string, got {show(label)}")
        variant = overrides_of(variant)
        if not variant:
            raise ConfigError(loc, "empty variant: give at least one dotted key")
        switched = _switched(study, variant, loc)
        for key, value in variant.items():
            if key in grid:
                raise ConfigError(loc + (key,), "also swept in sweep.grid; put a key in one of them")
            _check_key([switched], key, loc + (key,))
            _check_scalar(value, loc + (key,))
        try:
            bases.append(apply_overrides(study, variant))
        except ConfigError as e:
            raise _attribute(e, {k: loc + (k,) for k in variant}, loc) from None
    for key, values in grid.items():
        loc = ("sweep", "grid", key)
        plural = _check_key(bases or [study], key, loc)
        if not isinstance(values, list):
            raise ConfigError(loc, f"expected a list of {plural}, got {show(values)}")
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
