"""Name -> lazily imported object registries for adapters, encoders and metrics.

Targets are ``"module:attr"`` strings so heavy models import only when used; adapters also come
from the ``varbench.adapters`` entry-point group, which is how third parties plug in.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar

from varbench.errors import UsageError

T = TypeVar("T")

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ADAPTER_ENTRY_POINT_GROUP = "varbench.adapters"

log = logging.getLogger(__name__)


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return a ' Did you mean …?' hint for a misspelt name, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def check_name(name: str, kind: str) -> str:
    """Names become file names and cache keys, so keep them to [a-z0-9_]."""
    if not NAME_RE.match(name):
        raise ValueError(f"invalid {kind} name {name!r}: use lowercase letters, digits and '_'")
    return name


def load_target(target: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute."""
    module_name, sep, attr = target.partition(":")
    if not sep or not attr:
        raise ValueError(f"target {target!r} must look like 'package.module:Attr'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class Registry(Generic[T]):
    """A typed name -> target registry with lazy loading and did-you-mean errors."""

    kind: str
    base: type | None = None
    entry_point_group: str | None = None
    _targets: dict[str, str | T] = field(default_factory=dict)
    _loaded: dict[str, T] = field(default_factory=dict)
    _entry_points_read: bool = False

    def register(self, name: str, target: str | T | None = None) -> Callable[[T], T] | None:
        """Register ``target`` (an object or a lazy ``module:attr`` string); a decorator if None."""
        check_name(name, self.kind)

        def add(obj: T) -> T:
            existing = self._targets.get(name)
            if existing is not None and existing is not obj and existing != obj:
                raise ValueError(f"{self.kind} {name!r} is already registered as {existing!r}")
            self._targets[name] = obj
            return obj

        if target is None:
            return add
        add(target)  # type: ignore[arg-type]
        return None

    def _read_entry_points(self, again: bool = False) -> None:
        """Add the entry points of the group; ``again`` re-scans (a plugin installed since)."""
        if (self._entry_points_read and not again) or not self.entry_point_group:
            return
        self._entry_points_read = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            if ep.name not in self._targets and NAME_RE.match(ep.name):
                self._targets[ep.name] = ep.value
            elif self._targets.get(ep.name) not in (None, ep.value) and not again:
                log.warning(
                    "two %ss are named %r: %s is used, %s is not; rename one (entry point group "
                    "%s)", self.kind, ep.name, self._targets[ep.name], ep.value,
                    self.entry_point_group,
                )  # fmt: skip

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._read_entry_points()
        return sorted(self._targets)

    def target(self, name: str) -> str | T:
        """The registered target without importing it."""
        self._read_entry_points()
        if name not in self._targets:
            self._read_entry_points(again=True)
        if name not in self._targets:
            raise UsageError(
                f"unknown {self.kind} {name!r}.{suggest(name, self.names())} "
                f"Known: {', '.join(self.names()) or '(none)'}. "
                f"See `varbench list {self.kind}s`."
            )
        return self._targets[name]

    def get(self, name: str) -> T:
        """Resolve ``name``, importing its module on first use and checking its type."""
        if name in self._loaded:
            return self._loaded[name]
        target = self.target(name)
        obj = load_target(target) if isinstance(target, str) else target
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise TypeError(f"{self.kind} {name!r} -> {obj!r} is not a subclass of {self.base}")
        self._loaded[name] = obj
        return obj

    def __contains__(self, name: object) -> bool:
        self._read_entry_points()
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
