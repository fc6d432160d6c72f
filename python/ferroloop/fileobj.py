"""Normalising "file objects" (ints or objects with fileno()) to descriptors."""

from __future__ import annotations

from typing import Any


def fileobj_to_fd(fileobj: Any) -> int:
    """Return the descriptor behind `fileobj`, with the errors selectors raise."""
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd
