"""Tiny-model factories and the shared plugin test mixin, for tests and plugin authors."""

from .factories import tiny_llava, tiny_llava_next
from .tokenizer import word_tokenizer

__all__ = ["tiny_llava", "tiny_llava_next", "word_tokenizer"]
