"""ToDo: token downsampling of self-attention keys and values in diffusion transformer blocks."""

from .config import ToDoConfig
from .plugin import ToDoPlugin

__all__ = ["ToDoConfig", "ToDoPlugin"]
