"""What the two-stage testbed recipes share: checkpoint/resume, the update step, EMA, timing.

``mmeff testbed train sd`` (autoencoder, then UNet + text encoder) and ``train ar`` (VQ
tokenizer, then the LM on its codes) both train a first model, freeze it, and train a second
on top. A checkpoint holds the stage, the step, every module, the optimiser and the EMA, so
rerunning the command resumes mid-stage; batches are pure functions of the step, so a
resumed run is the run that was interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn

from .train import lr_factor

logger = logging.getLogger(__name__)


def load_first_stage(cls: type, folder: str | Path) -> Any:
    """``cls.from_pretrained(folder)`` for a first stage trained elsewhere (``vae=``, ``vq=``), without the
    ``_name_or_path`` diffusers records in its config: ``save_pretrained`` would otherwise write this
    machine's path into the export built on it."""
    from diffusers.configuration_utils import FrozenDict

    model = cls.from_pretrained(folder)
    model._internal_dict = FrozenDict({k: v for k, v in model.config.items() if k != "_name_or_path"})
    return model


def load_trained_weights(module: nn.Module, trained: nn.Module, option: str) -> None:
    """Copy ``trained``'s weights into ``module`` (a warm start: ``lm=``, ``target=``, ``unet=``), refusing a
    model of another shape with the parameters whose shapes differ (the export's, the spec's)."""
    mine, theirs = module.state_dict(), trained.state_dict()
    differing = {k: (_shape(theirs.get(k)), _shape(mine.get(k))) for k in sorted({*mine, *theirs})
                 if _shape(theirs.get(k)) != _shape(mine.get(k))}
    if differing:
        shown = dict(list(differing.items())[:4])
        raise ValueError(f"recipe {option} does not match the spec (parameter: its shape, the spec's): {shown}; "
                         "pass the spec it was trained with")
    module.load_state_dict(theirs)


def _shape(tensor: torch.Tensor | None) -> tuple[int, ...] | None:
    return None if tensor is None else tuple(tensor.shape)


class StagedTrainer:
    #: (first, second) stage names; "done" follows the second
    stages: ClassVar[tuple[str, str]]

    def __init__(self, run_dir: Path, recipe: Any, device: str | torch.device) -> None:
        self.run_dir, self.recipe = run_dir, recipe
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt = run_dir / "checkpoint.pt"
        torch.manual_seed(recipe.seed)  # weights are initialised on the CPU, then moved
        self.stage, self.step, self.seconds = self.stages[0], 0, 0.0
        self.losses: dict[str, list[float]] = {s: [] for s in self.stages}

    # -- what subclasses say -------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """Every module the checkpoint stores, by name."""
        raise NotImplementedError

    def _optimizer(self) -> torch.optim.Optimizer:
        """The current stage's optimiser."""
        raise NotImplementedError

    def ema_parameters(self) -> list[nn.Parameter]:
        """The second stage's parameters, averaged when ``recipe.ema_decay > 0``."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra(self, state: dict[str, Any]) -> None:
        """Restore ``extra_state`` (and anything the modules' weights do not carry)."""

    # -- shared --------------------------------------------------------------------------
    def _start(self) -> None:
        """Call once the modules exist: EMA, optimiser, and the checkpoint if there is one."""
        self.ema = self._ema()
        self.optimizer = self._optimizer()
        if self.ckpt.exists():
            self._load()

    def _ema(self):
        if self.recipe.ema_decay <= 0:
            return None
        from diffusers.training_utils import EMAModel

        return EMAModel(self.ema_parameters(), decay=self.recipe.ema_decay)

    def _save(self) -> None:
        state = {"stage": self.stage, "step": self.step, "seconds": self.seconds, "losses": self.losses,
                 "optimizer": self.optimizer.state_dict(),
                 "ema": self.ema.state_dict() if self.ema is not None else None,
                 **{name: m.state_dict() for name, m in self.modules().items()}, **self.extra_state()}
        torch.save(state, self.ckpt.with_suffix(".tmp"))
        self.ckpt.with_suffix(".tmp").replace(self.ckpt)

    def _load(self) -> None:
        state = torch.load(self.ckpt, weights_only=False, map_location=self.device)
        self.stage, self.step = state["stage"], state["step"]
        self.seconds, self.losses = state["seconds"], state["losses"]
        for name, module in self.modules().items():
            module.load_state_dict(state[name])
        self.load_extra(state)
        self.optimizer = self._optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        logger.info(f"resumed at stage {self.stage}, step {self.step}")

    def _enter_second_stage(self) -> None:
        """The first stage is over (trained here, or its module came trained): the second starts at step 0."""
        self.stage, self.step = self.stages[1], 0
        self.optimizer = self._optimizer()

    def _update(self, loss: torch.Tensor, step: int, total: int, base_lr: float, stage: str) -> None:
        """Warm-up + cosine learning rate, clipped gradient step, EMA in the second stage, loss log."""
        for group in self.optimizer.param_groups:
            group["lr"] = base_lr * lr_factor(step, total)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        if stage == self.stages[1] and self.ema is not None:
            self.ema.step(self.ema_parameters())
        self.losses[stage].append(loss.item())

    def _timed(self, fn: Callable[[], None]) -> None:
        start = time.time()
        try:
            fn()
        finally:
            self.seconds += time.time() - start

    def _averaged(self) -> None:
        """Put the EMA weights in place once training is done (what gets exported)."""
        if self.ema is not None and self.stage == "done":
            self.ema.copy_to(self.ema_parameters())

    def final_losses(self) -> dict[str, float]:
        return {k: sum(v[-50:]) / max(1, len(v[-50:])) for k, v in self.losses.items()}
