"""VisionZip: dominant + contextual tokens chosen inside the vision tower (registered as ``visionzip``)."""

from .config import VisionZipConfig
from .plugin import VisionZipPlugin

__all__ = ["VisionZipConfig", "VisionZipPlugin"]
