"""Bundled plugins, installed as ``mmeff.plugins``; importing this registers them all."""

from . import (  # noqa: F401
    damro,
    fastv,
    icd,
    lqcd,
    m3id,
    mustdrop,
    pyramid_drop,
    random_drop,
    reno,
    tome,
    vcd,
    vdgd,
    visionzip,
)
