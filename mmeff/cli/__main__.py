"""``python -m mmeff.cli``: the same as the ``mmeff`` command."""

from . import main

main()
