"""Bundled plugins, installed as ``mmeff.plugins``; importing this registers them all."""

from . import (  # noqa: F401
    continuous_spec,
    damro,
    disa,
    fastv,
    icd,
    lantern,
    lqcd,
    m3id,
    mustdrop,
    pyramid_drop,
    random_drop,
    reno,
    sjd,
    todo,
    tome,
    tome_sd,
    vcd,
    vdgd,
    visionzip,
    zipar,
)
