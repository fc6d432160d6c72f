"""Which CPython's asyncio ferroloop is imitating: version flags, and keyword
arguments that newer versions added.

asyncio's methods gain keyword arguments from version to version
(`create_connection(all_errors=)` in 3.12, `create_server(keep_alive=)` in
3.13, ...). ferroloop implements the newest signature once; on an older
Python, passing one of the newer arguments raises the `TypeError` that
asyncio raises there, so code written against ferroloop behaves the same on
asyncio's loop.
"""

from __future__ import annotations

import functools
import inspect
import sys
from asyncio import coroutines
from collections.abc import Callable
from typing import Any, TypeVar

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)

F = TypeVar("F", bound=Callable[..., Any])

#: 3.11's `asyncio.iscoroutinefunction` recognises a wrapper by this marker.
_COROUTINE_MARKER = getattr(coroutines, "_is_coroutine", None)


def _mark_coroutine_function(function: Callable[..., Any]) -> None:
    """Make a plain function that returns a coroutine pass for a coroutine
    function: for `inspect` from 3.12, for `asyncio` alone before."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        mark(function)
    elif _COROUTINE_MARKER is not None:
        function._is_coroutine = _COROUTINE_MARKER  # type: ignore[attr-defined]


_POSITIONAL_KINDS = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
)


def _too_many_positional(method: Callable[..., Any], most: int, given: int) -> str:
    """The message Python gives for a call with too many positional arguments."""
    arguments = "argument" if most == 1 else "arguments"
    verb = "was" if given == 1 else "were"
    return f"{method.__qualname__}() takes {most} positional {arguments} but {given} {verb} given"


def keywords_since(version: tuple[int, int], *names: str) -> Callable[[F], F]:
    """Decorate a method whose keyword arguments `names` appeared in `version`.

    From `version` on the method is returned unchanged. Before it, a call
    passing any of `names` raises `TypeError` at call time, as calling
    asyncio's coroutine method with an unknown keyword does, and the
    method's signature no longer lists them.
    """

    def decorate(method: F) -> F:
        if sys.version_info >= version:
            return method
        unknown = frozenset(names)
        signature = inspect.signature(method)
        older = [p for p in signature.parameters.values() if p.name not in unknown]
        # A positional argument for a parameter the version lacks is one too many.
        most_positional = None
        if not any(p.kind is p.VAR_POSITIONAL for p in older):
            most_positional = sum(p.kind in _POSITIONAL_KINDS for p in older)

        @functools.wraps(method)
        def older_signature(*args: Any, **kwargs: Any) -> Any:
            if kwargs and not unknown.isdisjoint(kwargs):
                name = next(n for n in kwargs if n in unknown)
                raise TypeError(
                    f"{method.__qualname__}() got an unexpected keyword argument {name!r}"
                )
            if most_positional is not None and len(args) > most_positional:
                raise TypeError(_too_many_positional(method, most_positional, len(args)))
            return method(*args, **kwargs)

        older_signature.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=older
        )
        if inspect.iscoroutinefunction(method):
            _mark_coroutine_function(older_signature)
        return older_signature  # type: ignore[return-value]

    return decorate
