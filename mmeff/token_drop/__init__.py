"""Shared machinery for methods that drop vision tokens between decoder layers."""

from .engine import DropEngine, Layout, SelectionInput, Selector

__all__ = ["DropEngine", "Layout", "SelectionInput", "Selector"]
