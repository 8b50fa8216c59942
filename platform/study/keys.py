"""A study's key space: every dotted key it can set, and what that key takes.

    space = KeySpace(study)
    space.lookup("train.batch_size").describe()    # "an integer in [1, 1024]"
    space.lookup("loss.params.gamma")              # the loss's declared Param (name, default, hint)
    set_key(raw, "train.lr", 0.01)                 # the one walk of a dotted key into a plain study dict

A key is a ``detectors.registry.Param``: its type hint carries its range
(``Interval``) and its choices (``Literal``). The keys come from two sources.
The study schema (``platform.study.spec``), walked once, field by field: every
single value is a key, its pydantic ``Field`` bounds read as an ``Interval``.
And what only the worker package knows, for the open mappings of the schema:
``detector.*``, ``loss.*`` and ``losses.<role>.*`` from the chosen
components' declarations (``detectors.build.component_keys``, the only
reader of them), ``train.loss_weights.*`` from the detector's loss names,
``dataset.synthetic.*`` from the generator's settings. The sweep's checks
(``platform.study.sweep``), every override of a trial (``set_key``, for
``platform.study.expand``) and validation's list of known keys (``fields_at``) read it.
"""
from __future__ import annotations

import copy
import functools
import typing
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from detectors.registry import ConfigError, Interval, Param
from platform.study.spec import Study

SWEEPABLE = ("dataset", "detector", "loss", "losses", "train", "eval")
NoneType = type(None)


def dotted(loc: Tuple) -> str:
    """('sweep', 'seeds', 0) -> 'sweep.seeds[0]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def is_component_name(key: str) -> bool:
    """Whether a dotted key names a component: ``detector.name``, ``loss.name``, ``losses.<role>.name``."""
    parts = key.split(".")
    return parts[-1] == "name" and (parts[:-1] in (["detector"], ["loss"])
                                    or (len(parts) == 3 and parts[0] == "losses"))


def check_sweepable(key: str) -> None:
    """Only keys inside the sections that decide a trial's result may vary (not its name, output...)."""
    parts = key.split(".")
    if parts[0] not in SWEEPABLE or len(parts) < 2:
        raise ConfigError(tuple(parts), f"cannot sweep '{key}': only keys under {', '.join(SWEEPABLE)} can vary")


# --------------------------------------------------------------------------- the schema

class _Schema(typing.NamedTuple):
    params: Dict[str, Param]            # every single value the schema fixes, by dotted key
    fields: Dict[str, Tuple[str, ...]]  # section -> the names it takes ("*": any list index or mapping key)
    values: Dict[str, Any]              # open mapping -> the hint of its values (train.loss_weights...)


def _interval(metadata: Iterable[Any]) -> Optional[Interval]:
    """pydantic's bounds (``Field(ge=1)``, annotated_types ``Ge``...) as one Interval."""
    flat = [x for m in metadata for x in (m.metadata if isinstance(m, FieldInfo) else [m])]
    bounds = {b: getattr(m, b) for m in flat for b in ("ge", "gt", "le", "lt") if getattr(m, b, None) is not None}
    return Interval(**bounds) if bounds else None


def _hint(annotation: Any, metadata: Iterable[Any] = ()) -> Any:
    """A field's annotation as a registry hint: its bounds on its number, as an ``Interval``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        return _hint(base, [*metadata, *meta])
    if origin is Union:
        return Union[tuple(a if a is NoneType else _hint(a, metadata) for a in typing.get_args(annotation))]
    if origin is list:
        return List[_hint(typing.get_args(annotation)[0])]
    interval = _interval(metadata)
    return typing.Annotated[annotation, interval] if interval else annotation


def _inside(annotation: Any) -> Tuple[Any, str]:
    """(what a field holds, "" | "list" | "dict"), under Optional: ``Optional[List[X]]`` -> (X, "list")."""
    if typing.get_origin(annotation) is Union:
        arms = [a for a in typing.get_args(annotation) if a is not NoneType]
        annotation = arms[0] if len(arms) == 1 else annotation
    origin = typing.get_origin(annotation)
    if origin in (list, dict):
        return typing.get_args(annotation)[-1], origin.__name__
    return annotation, ""


def _is_model(x: Any) -> bool:
    return isinstance(x, type) and issubclass(x, BaseModel)


@functools.lru_cache(maxsize=None)
def _schema() -> _Schema:
    """The Study model walked once; items of lists and mappings of sections (``train.phases``,
    ``losses``) are listed under ``*`` but are no keys: a sweep cannot name one."""
    schema = _Schema({}, {}, {})

    def walk(model: type, prefix: str, keyed: bool) -> None:
        schema.fields[prefix] = tuple(model.model_fields)
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}" if prefix else name
            inner, container = _inside(field.annotation)
            if container:
                schema.fields[key] = ("*",)
                if _is_model(inner):
                    walk(inner, f"{key}.*", False)
                elif container == "dict":
                    schema.values[key] = _hint(inner)
            elif _is_model(inner):
                walk(inner, key, keyed)
            elif keyed:
                default = None if field.is_required() else field.get_default(call_default_factory=True)
                schema.params[key] = Param(name, default, _hint(field.annotation, field.metadata))

    walk(Study, "", True)
    return schema


def fields_at(loc: Tuple) -> Tuple[str, ...]:
    """The names the schema takes at ``loc`` (a key path; ints index lists), in the models' order;
    () where the schema does not say (a component's params)."""
    fields, key = _schema().fields, ""
    for part in loc:
        exact = f"{key}.{part}" if key else str(part)
        key = exact if exact in fields else f"{key}.*"
    return tuple(f for f in fields.get(key, ()) if f != "*")


def synthetic_settings() -> Dict[str, Param]:
    """The generator's settings, typed by their defaults (a list: of integers); their ranges
    are the generator's own check (``detectors.data.synthetic.resolve_params``)."""
    from detectors.data.synthetic import DEFAULTS

    def hint(default: Any) -> Any:
        if isinstance(default, list):
            return List[int] if all(isinstance(x, int) and not isinstance(x, bool) for x in default) else List[Any]
        return type(default) if isinstance(default, (bool, int, float, str)) else Any

    return {k: Param(k, v, hint(v)) for k, v in DEFAULTS.items()}


def synthetic_defaults() -> Dict[str, Any]:
    """The generator's settings and their defaults."""
    return {k: p.default for k, p in synthetic_settings().items()}


# --------------------------------------------------------------------------- one study's keys

class KeySpace:
    """Every dotted key of one study: the schema's, and those of its components and generator."""

    def __init__(self, study: Study) -> None:
        from detectors.build import component_keys, default_loss_weights, weight_names

        schema = _schema()
        det = study.detector.name
        self.params: Dict[str, Param] = dict(schema.params)
        self.params.update(component_keys(det, study.loss.model_dump() if study.loss else None,
                                          {r: s.model_dump() for r, s in study.losses.items()}))
        weights = default_loss_weights(det)
        for name in weight_names(det):
            self.params[f"train.loss_weights.{name}"] = Param(name, weights.get(name, 1.0),
                                                               schema.values["train.loss_weights"])
        self.params.update({f"dataset.synthetic.{k}": p for k, p in synthetic_settings().items()})
        self.sections = {k for k in schema.fields if k and "*" not in k}
        self.sections |= {key.rsplit(".", i)[0] for key in self.params for i in range(1, key.count(".") + 1)}

    def lookup(self, key: str) -> Param:
        """What ``key`` takes; raises ConfigError (``unknown_key`` where the study has no such key)."""
        if key in self.params:
            return self.params[key]
        if key in self.sections:
            raise ConfigError(tuple(key.split(".")), "a section, not a single value: name a key inside it")
        raise ConfigError(tuple(key.split(".")), "no such key", unknown_key=True)

    def keys(self, sections: Iterable[str] = SWEEPABLE) -> List[str]:
        """The single-value keys under ``sections`` (for "did you mean" hints)."""
        return [k for k in self.params if k.split(".")[0] in sections]


# --------------------------------------------------------------------------- the raw dict

def set_key(raw: dict, key: str, value: Any) -> None:
    """Set a dotted key of a plain study dict (a Study's ``model_dump``) in place.

    A loss role the dict leaves to its default gets the default's name and params
    first (``losses.box.params.beta`` with no ``losses.box``); a component whose
    name changes starts from empty params, since the old component's params
    (focal's gamma, say) mean nothing to the new one (ce): set names before params.
    Raises ConfigError for a key that cannot vary or that has no section to go in.
    """
    check_sweepable(key)
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if parts[0] == "losses" and i == 1 and node.get(part) is None:
            node[part] = _role_default(raw, part)
        if not isinstance(node.get(part), dict):
            raise ConfigError(tuple(parts[: i + 1]), "no such section", unknown_key=True)
        node = node[part]
    if is_component_name(key) and isinstance(value, str) and value != node.get("name"):
        node["params"] = {}
    node[parts[-1]] = copy.deepcopy(value)


def _role_default(raw: Mapping[str, Any], role: str) -> dict:
    """The loss a role gets when the study names none (for sweeping ``losses.<role>.params.*``)."""
    from detectors.build import resolve_losses

    try:
        spec = resolve_losses(raw["detector"]["name"], None, {}).get(role)
    except KeyError:  # an unknown detector or role: validation words it
        spec = None
    return {"name": spec["name"], "params": dict(spec["params"])} if spec else {"params": {}}
