"""Name resolution that never blocks the loop.

`getaddrinfo` and `getnameinfo` behave exactly like their `socket` module
counterparts (same results, same exceptions) but never block the loop.
`getnameinfo` runs in the loop's default executor. `getaddrinfo` runs a lookup
that may reach the name service on the native resolver's threads (`_c_arguments`
says when; see src/dns.rs), or else in the default executor.

`getaddrinfo` has a fast path: when the call provably cannot reach the name
service switch (NSS: /etc/hosts, DNS, /etc/services, nscd, LDAP, ...) it calls
`socket.getaddrinfo` directly in the loop thread, saving the thread hop. Since
the fast path calls the very same function with the very same arguments, its
result (or exception) is identical by construction; the classification below
only decides *where* the call runs, so it must err on the side of the executor.

A call takes the fast path when all of these hold:

* the host is None, or an exact ``str``/``bytes`` holding an IPv4 literal in
  dotted-quad form or an IPv6 literal, optionally with a ``%zone`` suffix
  (checked with `socket.inet_pton`, which is what glibc's getaddrinfo uses to
  recognise numeric hosts; the zone is resolved with if_nametoindex, an ioctl,
  or parsed as a number). The empty string is *not* numeric: glibc looks ``''``
  up through NSS (it reads /etc/hosts and may query DNS).
* the port is None, an exact ``int`` in ``0..65535`` or an ASCII-digit
  ``str``/``bytes`` whose value is in that range. Other values go to the
  executor: service names need /etc/services, and glibc parses the port with
  ``strtoul`` into an ``int``, so e.g. ``-1`` or ``2**31`` come out negative and
  are then looked up as *service names* through NSS.
* the flags only use AI_PASSIVE, AI_CANONNAME, AI_NUMERICHOST, AI_NUMERICSERV,
  AI_V4MAPPED and AI_ALL. AI_ADDRCONFIG (netlink interface dump, and a round
  trip to nscd when it runs), AI_IDN (may load libidn2) and unknown bits go to
  the executor.

Family, socket type and protocol never trigger a lookup (glibc maps them with
internal tables), so they do not affect the choice.

A fast-path call completes without suspending the awaiting task, so unlike
asyncio's implementation it is not a point where the task can be cancelled.

Fast-path results are also memoised (`cached`): for a numeric host without a
zone, an exact ``int`` port and exact ``int`` family/type/proto/flags, glibc's
answer depends on the arguments alone, so the loop keeps the last few hundred
results and hands out a fresh list copy of one (the entries are immutable
tuples). The memo remembers which ``socket.getaddrinfo`` produced it and is
dropped when that attribute changes (tests patch it), and it is not used in
debug mode, where every call must be logged.

In debug mode (`loop.get_debug()`), every call is logged like asyncio does:
``Get address info ...`` at DEBUG before the call and ``Getting address info
... took ...ms: ...`` after it, at INFO when the call took at least
``loop.slow_callback_duration`` seconds and at DEBUG otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import sys
import time
from asyncio.log import logger
from collections.abc import Callable
from typing import Any

__all__ = ["getaddrinfo", "getnameinfo", "numeric_addrinfo", "resolve_address"]

#: One entry of a getaddrinfo result: (family, type, proto, canonname, sockaddr).
AddrInfo = tuple[Any, ...]

_FAST_FLAGS = (
    socket.AI_PASSIVE
    | socket.AI_CANONNAME
    | socket.AI_NUMERICHOST
    | socket.AI_NUMERICSERV
    | getattr(socket, "AI_V4MAPPED", 0)
    | getattr(socket, "AI_ALL", 0)
)
_MAX_PORT = 65535


def _is_numeric_host(host: object) -> bool:
    """True if `host` is None or an IP literal getaddrinfo parses without NSS."""
    if host is None:
        return True
    if type(host) is bytes:
        try:
            text = host.decode("ascii")
        except UnicodeDecodeError:
            return False
    elif type(host) is str:
        # socket.getaddrinfo IDNA-encodes str hosts; for ASCII that leaves the
        # text unchanged (or raises UnicodeError at once, e.g. an over-long zone).
        if not host.isascii():
            return False
        text = host
    else:
        return False
    if "\x00" in text:
        return False
    try:
        if ":" in text:
            # glibc splits an IPv6 literal at the first '%' and resolves the rest as
            # a scope id (interface name or number); a bad scope fails without a lookup.
            socket.inet_pton(socket.AF_INET6, text.partition("%")[0])
        else:
            # Dotted quad only: glibc's own numeric check is the laxer inet_aton
            # ("127.1" is numeric to it), so this never admits a name.
            socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        return False
    return True


def _is_numeric_port(port: object) -> bool:
    """True if `port` is None or a port number getaddrinfo parses without NSS."""
    if port is None:
        return True
    if type(port) is int:
        return 0 <= port <= _MAX_PORT
    if type(port) is bytes:
        digits = port
    elif type(port) is str:
        if not port.isascii():
            return False
        digits = port.encode("ascii")
    else:
        return False
    # Length cap: int() of a short digit string is cheap and cannot raise.
    return 0 < len(digits) <= 16 and digits.isdigit() and int(digits) <= _MAX_PORT


def _is_fast(host: object, port: object, flags: object) -> bool:
    """True if `socket.getaddrinfo(host, port, ..., flags)` cannot block on NSS."""
    return (
        type(flags) in (int, socket.AddressInfo)
        and not (int(flags) & ~_FAST_FLAGS)
        and _is_numeric_port(port)
        and _is_numeric_host(host)
    )


#: The protocol asyncio's connection methods give an IP literal's entry, by socket type.
_PROTO_OF_TYPE = {socket.SOCK_STREAM: socket.IPPROTO_TCP, socket.SOCK_DGRAM: socket.IPPROTO_UDP}
#: The families an IP literal is tried in, by the family asked for (else that one alone).
_LITERAL_FAMILIES = {socket.AF_UNSPEC: (socket.AF_INET, socket.AF_INET6)}


#: numeric_addrinfo's answers (immutable tuples), by its arguments: each
#: connection to an IP literal asks again. Equal keys get equal answers (an
#: int and an equal float port make the same address), except for flowinfo
#: and scope id, which go into the address as given: only exact ints are
#: memoised there. Cleared when full.
_literal_memo: dict[tuple[Any, ...], AddrInfo] = {}


def numeric_addrinfo(
    host: Any, port: Any, family: Any, type: Any, proto: Any, flowinfo: int = 0, scopeid: int = 0
) -> AddrInfo | None:
    """The one entry getaddrinfo would give for an IP address literal, made
    without calling it; None when `host` may need resolving.

    asyncio's connection methods (`create_connection`, `create_server`,
    `create_datagram_endpoint`, `sock_connect`) skip getaddrinfo this way, and
    that is observable: the port goes through `int()` (so 8080.0 and True are
    ports, and `float('inf')` raises OverflowError), and a port out of 0-65535
    reaches `connect`/`bind`, which raise OverflowError, where getaddrinfo
    would silently keep its low 16 bits. Flags are not looked at.
    """
    key = (host, port, family, type, proto, flowinfo, scopeid)
    if flowinfo.__class__ is not int or scopeid.__class__ is not int:
        return _literal_addrinfo(*key)
    try:
        hit = _literal_memo.get(key)
    except TypeError:  # an unhashable argument: asked each time
        return _literal_addrinfo(*key)
    if hit is not None:
        return hit
    info = _literal_addrinfo(*key)
    if info is not None:
        if len(_literal_memo) >= _MEMO_MAX:
            _literal_memo.clear()
        _literal_memo[key] = info
    return info


def _literal_addrinfo(
    host: Any, port: Any, family: Any, type: Any, proto: Any, flowinfo: Any, scopeid: Any
) -> AddrInfo | None:
    if host is None or proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None
    proto = _PROTO_OF_TYPE.get(type)
    if proto is None:
        return None
    if port is None or port == b"" or port == "":
        port = 0
    else:
        try:
            port = int(port)
        except (TypeError, ValueError):
            return None  # a service name such as "http"
    if isinstance(host, bytes):
        host = host.decode("idna")
    if "%" in host:
        return None  # inet_pton does not accept a zone index
    for candidate in _LITERAL_FAMILIES.get(family, (family,)):
        try:
            socket.inet_pton(candidate, host)
        except OSError:
            continue
        if candidate == socket.AF_INET6:
            return candidate, type, proto, "", (host, port, flowinfo, scopeid)
        return candidate, type, proto, "", (host, port)
    return None


async def resolve_address(
    loop: Any, address: Any, *, family: Any, type: Any, proto: Any = 0, flags: Any = 0
) -> list[AddrInfo]:
    """`address` (host, port[, flowinfo, scopeid]) as getaddrinfo entries: one
    made at once for an IP literal (`numeric_addrinfo`), else `loop.getaddrinfo`'s
    answer (possibly empty)."""
    host, port = address[:2]
    info = numeric_addrinfo(host, port, family, type, proto, *address[2:])
    if info is not None:
        return [info]
    infos: list[AddrInfo] = await loop.getaddrinfo(
        host, port, family=family, type=type, proto=proto, flags=flags
    )
    return infos


_INT_TYPES = frozenset({int, socket.AddressFamily, socket.SocketKind, socket.AddressInfo})
_MEMO_MAX = 512
_memo: dict[tuple[Any, ...], list[AddrInfo]] = {}
_memo_func: list[Any] = [None]  # the socket.getaddrinfo that produced _memo


def cached(
    host: Any, port: Any, family: Any, type: Any, proto: Any, flags: Any
) -> list[AddrInfo] | None:
    """A fresh copy of a memoised fast-path result, or None (then resolve normally)."""
    if (
        # Exact types only (checked first: the key must be hashable): equal keys
        # of other types (8080.0, int subclasses) may behave differently in
        # socket.getaddrinfo.
        host.__class__ is not str
        or port.__class__ is not int
        or family.__class__ not in _INT_TYPES
        or type.__class__ not in _INT_TYPES
        or proto.__class__ not in _INT_TYPES
        or flags.__class__ not in _INT_TYPES
        or _memo_func[0] is not socket.getaddrinfo
    ):
        return None
    hit = _memo.get((host, port, family, type, proto, flags))
    return None if hit is None else hit.copy()


def _remember(
    result: list[AddrInfo], host: Any, port: Any, family: Any, type: Any, proto: Any, flags: Any
) -> None:
    """Memoise a fast-path `result` if its arguments are ones `cached` accepts."""
    if (
        host.__class__ is str
        and "%" not in host  # a zone names an interface: its index can change
        and port.__class__ is int
        and family.__class__ in _INT_TYPES
        and type.__class__ in _INT_TYPES
        and proto.__class__ in _INT_TYPES
        and flags.__class__ in _INT_TYPES
    ):
        func = socket.getaddrinfo
        if _memo_func[0] is not func or len(_memo) >= _MEMO_MAX:
            _memo.clear()
            _memo_func[0] = func
        _memo[(host, port, family, type, proto, flags)] = result.copy()


def _describe(host: Any, port: Any, family: Any, type: Any, proto: Any, flags: Any) -> str:
    """The call description asyncio's debug log uses: ``host:port, family=..``."""
    parts = [f"{host}:{port!r}"]
    for name, value in (("family", family), ("type", type), ("proto", proto), ("flags", flags)):
        if value:
            parts.append(f"{name}={value!r}")
    return ", ".join(parts)


def _getaddrinfo_logged(
    slow_duration: float,
    host: Any,
    port: Any,
    family: Any,
    type: Any,
    proto: Any,
    flags: Any,
) -> list[AddrInfo]:
    """`socket.getaddrinfo` with asyncio's debug-mode logging (any thread)."""
    description = _describe(host, port, family, type, proto, flags)
    logger.debug("Get address info %s", description)
    started = time.monotonic()
    result = socket.getaddrinfo(host, port, family, type, proto, flags)
    elapsed = time.monotonic() - started
    message = f"Getting address info {description} took {elapsed * 1e3:.3f}ms: {result!r}"
    if elapsed >= slow_duration:
        logger.info(message)
    else:
        logger.debug(message)
    return result


async def getaddrinfo(
    loop: asyncio.AbstractEventLoop,
    host: Any,
    port: Any,
    *,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> list[AddrInfo]:
    """Resolve like `socket.getaddrinfo(host, port, family, type, proto, flags)`.

    Returns the same list and raises the same exceptions. Numeric hosts with
    numeric ports are resolved in the calling (loop) thread; anything that may
    need a name-service lookup runs in `loop`'s default executor.
    """
    if loop.get_debug():
        slow = float(getattr(loop, "slow_callback_duration", 0.1))
        func: Callable[..., list[AddrInfo]] = functools.partial(_getaddrinfo_logged, slow)
    else:
        func = socket.getaddrinfo
    if _is_fast(host, port, flags):
        result = func(host, port, family, type, proto, flags)
        if func is socket.getaddrinfo and result.__class__ is list:
            _remember(result, host, port, family, type, proto, flags)
        return result
    native_resolver = getattr(loop, "_resolver", None)
    if native_resolver is not None and func is _SOCKET_GETADDRINFO:
        query = _c_arguments(host, port, (family, type, proto, flags))
        if query is not None:
            # The event socket.getaddrinfo raises, with the numbers as plain ints.
            sys.audit("socket.getaddrinfo", host, port, int(family), int(type), int(proto))
            waiter = loop.create_future()
            native_resolver().resolve(*query, family, type, proto, flags, waiter)
            return await waiter
    return await loop.run_in_executor(None, func, host, port, family, type, proto, flags)


#: The function the native resolver stands in for; when it is replaced
#: (tests patch it), lookups call the replacement in the executor instead.
_SOCKET_GETADDRINFO = socket.getaddrinfo
_C_INT_MIN, _C_INT_MAX = -(2**31), 2**31 - 1
_C_LONG_MIN, _C_LONG_MAX = -(2**63), 2**63 - 1


def _c_arguments(host: Any, port: Any, numbers: tuple[Any, ...]) -> tuple[Any, Any] | None:
    """`host` and `port` as bytes (or None), as `socket.getaddrinfo` hands them
    to C, when the native resolver gives exactly its result; None otherwise.

    Anything unusual (other types, values C would reject or truncate at a NUL,
    text the codecs refuse) returns None, and the call goes to
    `socket.getaddrinfo` itself in the executor, which raises what it raises.
    """
    for number in numbers:
        if number.__class__ not in _INT_TYPES or not _C_INT_MIN <= number <= _C_INT_MAX:
            return None
    c_host = _c_text(host, "idna")
    if port.__class__ is int:
        c_port = b"%d" % port if _C_LONG_MIN <= port <= _C_LONG_MAX else _UNUSABLE
    else:
        c_port = _c_text(port, "utf-8")
    if c_host is _UNUSABLE or c_port is _UNUSABLE:
        return None
    return c_host, c_port


#: What `_c_text` returns for a value the native resolver cannot pass on exactly.
_UNUSABLE: Any = object()


def _c_text(value: Any, encoding: str) -> Any:
    """None, or the bytes C gets for `value` (a str encoded with `encoding`, or
    bytes); `_UNUSABLE` for other types, codec errors and NUL bytes."""
    if value is None:
        return None
    if value.__class__ is str:
        try:
            value = value.encode(encoding)
        except UnicodeError:
            return _UNUSABLE
    elif value.__class__ is not bytes:
        return _UNUSABLE
    return _UNUSABLE if b"\0" in value else value


async def getnameinfo(
    loop: asyncio.AbstractEventLoop, sockaddr: tuple[Any, ...], flags: int = 0
) -> tuple[str, str]:
    """Resolve like `socket.getnameinfo(sockaddr, flags)` in `loop`'s default executor.

    Returns the same ``(host, port)`` pair and raises the same exceptions.
    """
    return await loop.run_in_executor(None, socket.getnameinfo, sockaddr, flags)
