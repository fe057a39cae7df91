"""``--method-arg`` values: parsed (``KEY=VALUE`` for every method of the command,
``METHOD:KEY=VALUE`` for one of them), then checked before any work: against the type each method's ``__init__``
declares (``dim: int`` refuses ``"abc"``, ``3.5`` and ``true``), then by the method's own
``check_arguments`` (ranges and choices), so that a wrong value stops the command in one line
(exit 2) instead of failing after other evaluations ran."""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from tbps_bench.errors import BenchError


@dataclass(frozen=True)
class MethodArguments:
    """The ``--method-arg`` values of one command: those for every method it runs, and those scoped to
    one of them (``nafs:text_encoder=/models/bert``), which win over the shared ones for that method."""

    shared: dict[str, Any] = field(default_factory=dict)
    scoped: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_method(self, name: str) -> dict[str, Any]:
        return {**self.shared, **self.scoped.get(name, {})}


def parse_method_args(pairs: list[str], methods: list[str]) -> MethodArguments:
    """``KEY=VALUE`` or ``METHOD:KEY=VALUE`` (values parsed as JSON when they are JSON, else kept as
    text); a scope must name one of the command's ``methods``."""
    shared: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        target, sep, value = pair.partition("=")
        scope, colon, key = target.rpartition(":")
        if not sep or not key or (colon and not scope):
            raise BenchError(f"--method-arg {pair!r}: expected KEY=VALUE, or METHOD:KEY=VALUE for one method")
        if colon and scope not in methods:
            raise BenchError(
                f"--method-arg {pair!r} is for method '{scope}', which this command does not run "
                f"(it runs {', '.join(methods)})"
            )
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        (scoped.setdefault(scope, {}) if colon else shared)[key] = parsed
    return MethodArguments(shared, scoped)


def accepted_arguments(factory: Any) -> set[str]:
    """The ``--method-arg`` names a method takes: the named parameters of its ``__init__`` chain (or of
    a factory function). The base ``Method``'s catch-all is not an argument of any method."""
    names = set()
    for function in _init_functions(factory):
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                names.add(parameter.name)
    return names - {"self", "device", "checkpoint"}


def _init_functions(factory: Any) -> list[Any]:
    from tbps_bench.methods import Method

    if not isinstance(factory, type):
        return [factory]
    return [c.__dict__["__init__"] for c in factory.__mro__ if "__init__" in c.__dict__ and c not in (Method, object)]


def _hints(function: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is simply not checked
        return {}


def _fits(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` (parsed from JSON) fits ``hint``; None when the hint is not one we check."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return None
    if origin in (Union, types.UnionType):
        verdicts = [_fits(value, branch) for branch in typing.get_args(hint)]
        return None if None in verdicts and not any(verdicts) else any(v for v in verdicts if v is not None)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) and typing.get_args(hint):
        if not isinstance(value, list):
            return False
        element = typing.get_args(hint)[0]
        return all(_fits(item, element) is not False for item in value)
    return None


def _described(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_described(branch) for branch in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    return names.get(hint, str(hint).replace("typing.", ""))


def check_method_argument_values(name: str, factory: Any, arguments: Mapping[str, Any]) -> None:
    """One line for the first ``--method-arg`` whose value the method cannot take."""
    for function in _init_functions(factory):
        hints = _hints(function)
        for parameter in inspect.signature(function).parameters.values():
            if parameter.name in arguments and parameter.name in hints:
                value, hint = arguments[parameter.name], hints[parameter.name]
                if _fits(value, hint) is False:
                    raise BenchError(
                        f"method '{name}' argument '{parameter.name}' must be {_described(hint)}; got {value!r}"
                    )
    check = getattr(factory, "check_arguments", None)
    if callable(check):
        check(dict(arguments))


def at_least(name: str, value: Any, minimum: int) -> None:
    """A whole number >= ``minimum`` (for ``check_arguments``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BenchError(f"{name} must be an integer >= {minimum}; got {value!r}")
