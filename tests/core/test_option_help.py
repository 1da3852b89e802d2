"""Every plugin option carries a help string: the docs' option reference and ``mmeff list --options``
are generated from the config dataclasses (name, type, default, ``metadata["help"]``)."""

from __future__ import annotations

import dataclasses

from mmeff import registry


def test_every_plugin_option_has_help():
    names = registry.list_plugins()
    assert names, "no plugins registered"
    missing = []
    for name in names:
        cls = registry.get_plugin(name).config_cls
        for f in dataclasses.fields(cls):
            text = f.metadata.get("help")
            if not isinstance(text, str) or not text.strip():
                missing.append(f"{name}.{f.name} ({cls.__module__}.{cls.__qualname__})")
    assert not missing, (f"{len(missing)} plugin option(s) without a help string; add "
                         f"field(default=..., metadata={{'help': '...'}}): " + ", ".join(missing))
