"""Pipe transports: `connect_read_pipe` and `connect_write_pipe`."""

from __future__ import annotations


class PipesMixin:
    """Methods of `ferroloop.EventLoop` implemented in this module."""
