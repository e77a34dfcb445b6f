"""Typed ``--set`` options: one ``Param`` per option, one parser and one error style for all.

Adapters, protocols and metrics each declare their options as ``Param`` tables where they are
defined (``Adapter.params``, ``plan.protocol.OVERRIDABLE``, ``metrics.METRIC_OPTIONS``); `run`,
`export`, `manifest` and `metrics` parse ``--set KEY=VALUE`` through ``parse_sets`` and
``parse_options`` here, so an option's type is written once and every error reads the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from varbench.core.registry import suggest
from varbench.errors import UsageError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"not one of {'/'.join(_TRUE + _FALSE)}")


_PARSERS = {int: int, float: float, str: str, bool: _parse_bool}
TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean"}


@dataclass(frozen=True)
class Param:
    """One typed option; ``sweep=True`` makes it a comma-separated list (a sweep axis)."""

    name: str
    type: type
    default: Any = None
    help: str = ""
    sweep: bool = False
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in _PARSERS:
            raise TypeError(f"option {self.name}: type must be one of int, float, str, bool")
        if self.sweep and not isinstance(self.default, (list, tuple)):
            object.__setattr__(self, "default", (self.default,))  # a scalar sweep default = 1 point
        elif self.sweep:
            object.__setattr__(self, "default", tuple(self.default))

    @property
    def kind(self) -> str:
        """The expected type in words, as every error names it."""
        name = TYPE_NAMES[self.type]
        return f"comma-separated list of {name}s" if self.sweep else name

    def parse(self, text: str, origin: str = "--set") -> Any:
        """Parse a ``--set`` value; sweep axes take comma-separated lists."""
        parser = _PARSERS[self.type]
        try:
            if self.sweep:
                values = tuple(parser(v) for v in text.split(",") if v.strip() != "")
                if not values:
                    raise ValueError("empty list")
            else:
                values = (parser(text),)
        except (ValueError, KeyError) as exc:
            raise UsageError(
                f"{origin} {self.name}={text!r}: expected {self.kind} ({exc})."
                + (f" {self.help}" if self.help else "")
            ) from None
        for v in values:
            self._check_choice(v, origin)
        return values if self.sweep else values[0]

    def coerce(self, value: Any, origin: str) -> Any:
        """Coerce a value from a data file (TOML, run.json) to this option's type."""
        if isinstance(value, str):
            return self.parse(value, origin)
        try:
            if self.sweep:
                values = value if isinstance(value, (list, tuple)) else [value]
                return tuple(self._exact(v) for v in values)
            return self._exact(value) if value is not None else None
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{origin}: {self.name}={value!r}: expected {self.kind}") from exc

    def _exact(self, value: Any) -> Any:
        if self.type is int and (isinstance(value, bool) or float(value) != int(value)):
            raise ValueError(f"{value!r} is not an integer")
        if self.type is bool and not isinstance(value, bool):
            raise ValueError(f"{value!r} is not a boolean")
        return self.type(value)

    def _check_choice(self, value: Any, origin: str) -> None:
        if self.choices is not None and value not in self.choices:
            raise UsageError(
                f"{origin} {self.name}={value!r}: choose one of {', '.join(map(str, self.choices))}"
            )


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x,y"]`` -> ``{"a": "1", "b": "x,y"}``; malformed items are a usage error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected KEY=VALUE (e.g. --set guidance=1,4)")
        out[key.strip()] = value.strip()
    return out


def by_name(params: Iterable[Param]) -> dict[str, Param]:
    """A table of options keyed by name (names must be unique)."""
    out: dict[str, Param] = {}
    for p in params:
        if p.name in out:
            raise ValueError(f"option {p.name!r} declared twice")
        out[p.name] = p
    return out


def parse_options(
    raw: Mapping[str, Any], params: Sequence[Param] | Mapping[str, Param], what: str,
    origin: str = "--set",
) -> dict[str, Any]:  # fmt: skip
    """Typed values of ``raw`` (strings from ``--set`` or values from a file) by ``params``.

    Unknown keys are a usage error that lists what ``what`` (e.g. "metrics") takes.
    """
    table = params if isinstance(params, Mapping) else by_name(params)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in table:
            raise UsageError(
                f"{origin} {key}=…: unknown option.{suggest(key, list(table))} "
                f"{what} take: {describe(table.values())}."
            )
        out[key] = table[key].coerce(value, origin)
    return out


def describe(params: Iterable[Param]) -> str:
    """``name (type)`` for each option, for error messages and `varbench list`."""
    return ", ".join(f"{p.name} ({p.kind})" for p in params) or "(none)"
