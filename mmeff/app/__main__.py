"""``python -m mmeff.app``: the same as ``mmeff app``."""

from . import main

main()
