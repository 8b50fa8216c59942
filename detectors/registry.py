"""One plain registry per kind of component: a dict, a decorator and ``build``.

Modelled on torchvision's ``torchvision/models/_api.py``: names map straight to
callables, nothing is imported by string, and unknown names fail with the list
of known ones so a study file typo is easy to fix.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Iterator


class Registry:
    """A name -> callable mapping for one kind of component (models, losses...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise KeyError(f"unknown {self.kind} '{name}' (known: {known})") from None

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def parameters(self, name: str) -> Dict[str, inspect.Parameter]:
        """Keyword parameters a registered callable accepts (used to validate study files)."""
        sig = inspect.signature(self.get(name))
        return {
            k: p
            for k, p in sig.parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty
        }

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list:
        return sorted(self._items)
