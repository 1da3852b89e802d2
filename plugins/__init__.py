"""Bundled plugins, installed as ``mmeff.plugins``; importing this registers them all."""

from . import fastv, mustdrop, pyramid_drop, random_drop, tome, visionzip  # noqa: F401
