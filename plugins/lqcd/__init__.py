"""LQCD: contrast the neutral query against its leading form (registered as ``lqcd``)."""

from .config import LQCDConfig
from .ops import leading_form
from .plugin import LQCDPlugin

__all__ = ["LQCDConfig", "LQCDPlugin", "leading_form"]
