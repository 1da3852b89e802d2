"""ICD: contrast against the prompt under a disturbance instruction (registered as ``icd``)."""

from .config import ICDConfig
from .plugin import ICDPlugin

__all__ = ["ICDConfig", "ICDPlugin"]
