"""UDP (and Unix datagram) endpoints: `create_datagram_endpoint`."""

from __future__ import annotations


class DatagramMixin:
    """Methods of `ferroloop.EventLoop` implemented in this module."""
