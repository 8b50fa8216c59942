"""User-facing wording of study-file problems: the internal error form and the
translation of pydantic's validation errors into one-line messages."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from detectors.registry import ConfigError, show, suggest  # noqa: F401 (one wording of values and hints for both packages)


_EXPECTED = {"int_type": "integer", "int_from_float": "integer", "float_type": "number", "finite_number": "number",
             "bool_type": "boolean", "string_type": "string", "list_type": "list", "dict_type": "mapping",
             "model_type": "mapping", "model_attributes_type": "mapping"}
SINGULAR = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
             "list": "a list", "mapping": "a mapping (key: value)", "json": "a plain YAML value"}
PLURAL = {"integer": "integers", "number": "numbers", "boolean": "booleans (true/false)", "string": "strings"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_CTX_KEY = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def _fields_at(root: Any, loc: Tuple) -> Optional[List[str]]:
    model: Any = root
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _unwrap(model.model_fields[part].annotation)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(ann: Any) -> Any:
    if get_origin(ann) is Union:
        args = [a for a in get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else ann
    return ann


def translate(err: ValidationError, root: Any) -> ConfigError:
    """The first pydantic error as a ConfigError with a user-facing message; ``root``
    is the top-level model, for listing the keys known where an unknown one was found."""
    e = err.errors(include_url=False)[0]
    loc, typ, ctx, got = tuple(e["loc"]), e["type"], e.get("ctx") or {}, show(e.get("input"))
    if typ == "extra_forbidden":
        known = _fields_at(root, loc[:-1]) or []
        return ConfigError(loc, f"unknown key{suggest(loc[-1], known)} (known: {', '.join(known)})",
                             unknown_key=True)
    if typ == "missing":
        return ConfigError(loc, "required key is missing")
    if typ in _EXPECTED:
        kind = _EXPECTED[typ]
        return ConfigError(loc, f"expected {SINGULAR[kind]}, got {got}", expected=kind)
    if typ == "literal_error":
        return ConfigError(loc, f"expected {ctx['expected']}, got {got}", expected=ctx["expected"])
    if typ in _BOUNDS:
        bound = ctx[_CTX_KEY[typ]]  # pydantic gives a float field's bound as a float: "> 0", not "> 0.0"
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return ConfigError(loc, f"must be {_BOUNDS[typ]} {bound}, got {got}")
    if typ == "too_short":
        return ConfigError(loc, "must not be empty")
    if typ == "string_pattern_mismatch":
        return ConfigError(loc, f"must match {ctx['pattern']} (lower-case letters, digits, _ and -), got {got}")
    msg = e["msg"].removeprefix("Value error, ")
    return ConfigError(loc, msg if typ == "value_error" else f"{msg}, got {got}")
