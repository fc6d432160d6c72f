"""Child processes: `subprocess_exec` and `subprocess_shell`."""

from __future__ import annotations


class SubprocessMixin:
    """Methods of `ferroloop.EventLoop` implemented in this module."""
