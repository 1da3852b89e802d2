"""Bundled plugins, installed as ``mmeff.plugins``; importing this registers them all."""

from . import damro, fastv, icd, lqcd, m3id, mustdrop, pyramid_drop, random_drop, tome, vcd, vdgd, visionzip  # noqa: F401
