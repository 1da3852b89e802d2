"""random_drop: keep a random subset of image tokens, the control every method must beat."""

from .config import RandomDropConfig
from .plugin import RandomDropPlugin

__all__ = ["RandomDropConfig", "RandomDropPlugin"]
