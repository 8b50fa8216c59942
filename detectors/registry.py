"""One plain registry per kind of component, whose entries declare what they take.

Modelled on torchvision's ``torchvision/models/_api.py``: names map straight to
callables, nothing is imported by string, and unknown names fail with the list
of known ones so a study file typo is easy to fix.

Each entry also declares its study-facing parameters, so the driver can check a
study file without keeping its own lists: the keyword parameters of the
callable that have a default, typed by their real annotations (``typing``
hints, not annotation text). Ranges ride along in ``Annotated``::

    def build_x(num_classes: int, pos_iou: Annotated[float, Interval(gt=0, lt=1)] = 0.5): ...

An entry may override a parameter's study-facing type (``types=``, e.g. a loss
whose ``alpha`` also accepts ``"inverse_frequency"``), hide parameters that the
builder fills itself (the registry's ``injected`` names), check combinations
(``check=fn(params)`` raising ``ValueError``) and carry any other metadata
(``meta``), such as a detector's loss roles.
"""
from __future__ import annotations

import collections.abc
import difflib
import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Literal, Mapping, Optional, Tuple, Union

NoneType = type(None)
_SEQUENCES = (list, tuple, collections.abc.Sequence)  # typing.get_origin of List / Tuple / Sequence


@dataclass(frozen=True)
class Interval:
    """Bounds of a number, for ``Annotated[float, Interval(ge=0)]``."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    def violation(self, v: float) -> Optional[str]:
        ok = ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
              and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))
        return None if ok else f"must be {self}"

    def __str__(self) -> str:
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            return (f"in {'[' if self.ge is not None else '('}{_fmt(low)}, "
                    f"{_fmt(high)}{']' if self.le is not None else ')'}")
        parts = [f"{op} {_fmt(b)}" for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if b is not None]
        return " and ".join(parts)


def _fmt(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


# Short names for the ranges components use most.
NonNegative = typing.Annotated[float, Interval(ge=0)]
Positive = typing.Annotated[float, Interval(gt=0)]
Probability = typing.Annotated[float, Interval(ge=0, le=1)]
OpenUnit = typing.Annotated[float, Interval(gt=0, lt=1)]
PositiveInt = typing.Annotated[int, Interval(ge=1)]
NonNegativeInt = typing.Annotated[int, Interval(ge=0)]


class ConfigError(ValueError):
    """A problem at key path ``loc`` of a study or trial config (a tuple; ints index lists).

    The one error of config checks in both packages: ``detectors.build`` raises it
    for the components, the driver (``platform``) for everything else, and words
    it for the user as ``<file>: <dotted.key.path>: <message>``. ``unknown_key``:
    the key itself does not exist (a sweep then tries the next base config);
    ``expected``: the kind of value that was wanted, where that was the problem.
    """

    def __init__(self, loc: Tuple, msg: str, unknown_key: bool = False, expected: str = "") -> None:
        super().__init__(msg)
        self.loc, self.msg, self.unknown_key, self.expected = tuple(loc), msg, unknown_key, expected


class ParamError(ValueError):
    """A parameter value does not fit its declaration; ``expected`` names the kind (for list hints)."""

    def __init__(self, msg: str, expected: str = "") -> None:
        super().__init__(msg)
        self.msg, self.expected = msg, expected


def show(v: Any) -> str:
    """A value as a study file would write it (true, null, 'text'), cut at 60 characters."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    text = repr(v) if isinstance(v, (str, int, float, list, dict, tuple)) else type(v).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(word: str, choices) -> str:
    """"; did you mean 'x'?" for the closest of ``choices``, or ""."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Param:
    """One study-facing parameter: its name, default and type hint (with ``Interval`` bounds)."""

    name: str
    default: Any
    hint: Any = Any

    def describe(self) -> str:
        return describe(self.hint)

    @property
    def kind(self) -> str:
        """The plain kind of a single value: integer | number | boolean | string | choice | list | json."""
        return _kind(self.hint)

    @property
    def choices(self) -> Tuple[Any, ...]:
        """The values of a ``choice`` (its ``Literal``), else ()."""
        base, _ = _strip(self.hint)
        arms = [a for a in _arms(base) if a is not NoneType]
        base = _strip(arms[0])[0] if len(arms) == 1 else None
        return typing.get_args(base) if typing.get_origin(base) is Literal else ()

    def check(self, value: Any) -> Any:
        """The value normalised (ints become floats where a number is expected); raises ParamError."""
        return check_value(self.hint, value)


def _strip(hint: Any) -> Tuple[Any, Tuple[Interval, ...]]:
    if typing.get_origin(hint) is typing.Annotated:
        base, *meta = typing.get_args(hint)
        return base, tuple(m for m in meta if isinstance(m, Interval))
    return hint, ()


def _arms(hint: Any) -> Tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)


def _kind(hint: Any) -> str:
    base, _ = _strip(hint)
    arms = [a for a in _arms(base) if a is not NoneType]
    if len(arms) != 1:
        return "json"
    base, _ = _strip(arms[0])
    if typing.get_origin(base) is Literal:
        return "choice"
    if typing.get_origin(base) in _SEQUENCES:
        return "list"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(base, "json")


def describe(hint: Any) -> str:
    """``Optional[Annotated[float, Interval(gt=0)]]`` -> "a number > 0 or null"."""
    base, intervals = _strip(hint)
    arms = _arms(base)
    if len(arms) > 1:
        words = [describe(a) for a in arms if a is not NoneType]
        if NoneType in arms:
            words.append("null")
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
    origin = typing.get_origin(base)
    if origin is Literal:
        choices = [repr(c) if isinstance(c, str) else show(c) for c in typing.get_args(base)]
        return choices[0] if len(choices) == 1 else "one of " + ", ".join(choices)
    if origin in _SEQUENCES:
        inner = [a for a in typing.get_args(base) if a is not Ellipsis]
        return "a list of " + ({float: "numbers", int: "integers", str: "strings"}.get(_strip(inner[0])[0], "values")
                               if inner else "values")
    word = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(base, "a plain value")
    return word + "".join(f" {i}" for i in intervals)


def check_value(hint: Any, value: Any) -> Any:
    """``value`` checked against ``hint`` and normalised; raises ParamError naming what was expected."""
    base, intervals = _strip(hint)
    arms = _arms(base)
    if len(arms) > 1:
        if value is None and NoneType in arms:
            return None
        range_error = None
        for arm in arms:
            if arm is NoneType:
                continue
            try:
                out = check_value(arm, value)
            except ParamError as e:
                range_error = range_error or (e if e.expected == "range" else None)
                continue
            return _in_range(out, intervals)
        if range_error is not None:  # the right type, out of range: say so rather than list the types
            raise range_error
        raise ParamError(f"expected {describe(hint)}, got {show(value)}", _kind(hint))
    origin = typing.get_origin(base)
    if origin is Literal:
        choices = typing.get_args(base)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        raise ParamError(f"expected {describe(base)}, got {show(value)}", describe(base))
    if origin in _SEQUENCES:
        inner = [a for a in typing.get_args(base) if a is not Ellipsis] or [Any]
        if not isinstance(value, list) or not value:
            raise ParamError(f"expected {describe(base)} (non-empty), got {show(value)}", "list")
        return [check_value(inner[0], v) for v in value]
    ok = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: _is_number, str: lambda v: isinstance(v, str), Any: _is_plain}.get(base, _is_plain)
    if not ok(value):
        raise ParamError(f"expected {describe(base)}, got {show(value)}", _kind(base))
    _in_range(value, intervals)
    return float(value) if base is float else value


def _in_range(value: Any, intervals: Tuple[Interval, ...]) -> Any:
    for interval in intervals:
        problem = interval.violation(value) if _is_number(value) else None
        if problem:
            raise ParamError(f"{problem}, got {show(value)}", "range")
    return value


def _is_plain(v: Any) -> bool:
    if v is None or isinstance(v, (bool, str)) or _is_number(v):
        return True
    if isinstance(v, list):
        return all(_is_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_plain(x) for k, x in v.items())
    return False


@dataclass(frozen=True)
class Entry:
    """A registered callable and what it declares."""

    name: str
    fn: Callable[..., Any]
    params: Dict[str, Param]
    check: Optional[Callable[[Dict[str, Any]], None]] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    def check_params(self, params: Mapping[str, Any]) -> Dict[str, Any]:
        """Known names, typed and in range, then the entry's own combination check.

        Returns the normalised params; raises ``KeyError`` (unknown name, message
        lists the known ones) or ``ParamError`` with ``.key`` set to the culprit
        (``None`` when a combination is wrong).
        """
        out = {}
        for key, value in params.items():
            if key not in self.params:
                raise KeyError(key)
            try:
                out[key] = self.params[key].check(value)
            except ParamError as e:
                e.key = key  # type: ignore[attr-defined]
                raise
        if self.check is not None:
            merged = {k: p.default for k, p in self.params.items()}
            merged.update(out)
            try:
                self.check(merged)
            except ValueError as e:
                err = ParamError(str(e))
                err.key = next((k for k in out if f"'{k}'" in str(e) or k in str(e).split()), None)  # type: ignore
                raise err from None
        return out


class Registry:
    """A name -> callable mapping for one kind of component (models, losses...).

    ``injected``: keyword parameters the building code fills itself (never set
    from a study file), e.g. ``num_classes`` of a detector or ``reduction`` of a loss.
    """

    def __init__(self, kind: str, injected: Tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.injected = frozenset(injected)
        self._items: Dict[str, Entry] = {}

    def register(self, name: str, *, types: Optional[Mapping[str, Any]] = None,
                 check: Optional[Callable[[Dict[str, Any]], None]] = None,
                 hidden: Tuple[str, ...] = (), **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register ``fn`` under ``name``. ``types`` overrides study-facing hints; ``hidden``
        names more parameters the builder fills; ``meta`` is kept on the entry."""
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            params = declared_params(fn, self.injected | set(hidden), types or {})
            self._items[name] = Entry(name, fn, params, check, dict(meta))
            return fn

        return deco

    def entry(self, name: str) -> Entry:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise KeyError(f"unknown {self.kind} '{name}' (known: {known})") from None

    def get(self, name: str) -> Callable[..., Any]:
        return self.entry(name).fn

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def parameters(self, name: str) -> Dict[str, Param]:
        """Study-facing parameters of an entry (injected ones excluded)."""
        return self.entry(name).params

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list:
        return sorted(self._items)


def declared_params(fn: Callable[..., Any], exclude, types: Mapping[str, Any]) -> Dict[str, Param]:
    """Keyword parameters of ``fn`` that have a default, with their resolved type hints."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # a hint that cannot be resolved falls back to "any plain value"
        hints = {}
    out = {}
    for k, p in sig.parameters.items():
        if k in exclude or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is p.empty:
            continue
        hint = types.get(k, hints.get(k, Any))
        out[k] = Param(k, p.default, hint)
    unknown = set(types) - set(out)
    if unknown:
        raise KeyError(f"types given for parameters {sorted(unknown)} that {fn.__name__} does not take")
    return out
