"""Bundled plugins, installed as ``mmeff.plugins``; importing this registers them all."""

from . import pyramid_drop  # noqa: F401
