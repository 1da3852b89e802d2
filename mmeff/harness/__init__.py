"""mmeff inside lmms-eval: a model entry (``--model mmeff``) and the shapes testbed as lmms-eval tasks.

lmms-eval finds the entry through the ``lmms_eval.models`` entry point that ``pip install
"mmeff[eval]"`` registers (:func:`manifest`); nothing here imports lmms-eval until it asks.
"""

from __future__ import annotations

from typing import Any


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point: lmms-eval calls it while it builds its model registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="mmeff", simple_class_path="mmeff.harness.lmms_model.MMeffLMM")
