"""``--model mmeff``: any model :func:`mmeff.load` takes, with a plugin stack, as an lmms-eval model.

The entry is a thin layer over :meth:`mmeff.MMPipeline.generate`: lmms-eval hands over contexts,
generation kwargs and a ``doc_to_visual``; mmeff applies the model's own chat template and
processor, batches with left padding and runs the plugins. Each ``generate_until`` call logs
its totals (time, generated tokens, image tokens in and kept) to lmms-eval's throughput log,
which lands under ``"throughput"`` in the results file lmms-eval writes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from tqdm import tqdm

from ..errors import ConfigError, InputError, UnsupportedModelError
from ..pipeline import load
from .plugin_stack import parse_plugin_stack

IMAGE_PLACEHOLDERS = ("<image>", "<|image|>")  # tasks written for LLaVA-style prompts; mmeff places images itself
_GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "num_beams", "do_sample", "until")


class MMeffLMM(lmms):
    """lmms-eval model ``mmeff``: ``pretrained=<hub id or folder>,plugins="name:k=v;name2"``."""

    def __init__(self, pretrained: str | None = None, plugins: str = "", batch_size: int | str = 1,
                 device: str | None = None, dtype: str | None = None, attn_implementation: str | None = None,
                 **unexpected: Any) -> None:
        super().__init__()
        if unexpected:
            raise ConfigError(f"mmeff model_args got unknown key(s) {sorted(unexpected)}; allowed: pretrained, "
                              "plugins, batch_size, device, dtype, attn_implementation")
        if not pretrained:
            raise ConfigError("mmeff model_args need pretrained=<hub id or local folder>")
        stack = parse_plugin_stack(str(plugins) if plugins else "")  # fails before the model loads
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        self.accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        self._device = torch.device(device or str(self.accelerator.device))
        self.pipe = load(str(pretrained), torch_dtype=_dtype(dtype), attn_implementation=attn_implementation)
        if self.pipe.adapter.family != "vlm":
            raise UnsupportedModelError(
                f"lmms-eval feeds images and text to a vision-language model; {pretrained} loads as a "
                f"{self.pipe.adapter.family} pipeline ({type(self.pipe.obj).__name__}), which lmms-eval cannot feed")
        self.pipe.obj.to(self._device)
        for name, options in stack:
            self.pipe.add_plugin(name, **options)
        self.pretrained = str(pretrained)
        self._warned: set[frozenset[str]] = set()

    @property
    def model(self) -> Any:
        return self.pipe.model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # -- generation ------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers in request order; requests with equal generation kwargs share batches."""
        answers: list[str | None] = [None] * len(requests)
        totals = {"seconds": 0.0, "tokens": 0, "batches": 0, "image_tokens_in": 0.0, "image_tokens_kept": 0.0,
                  "final_image_tokens": 0.0, "reduced_batches": 0, "forwards": 0, "decoding_batches": 0}
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        bar = tqdm(total=len(requests), desc="mmeff", disable=self.rank != 0)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                texts, generated = self._generate([requests[i] for i in batch])
                for i, text in zip(batch, texts):
                    answers[i] = text
                totals["tokens"] += generated
                _add_stats(totals, self.pipe.last_stats)
                bar.update(len(batch))
        bar.close()
        self._log_totals(totals, len(requests))
        return [a if a is not None else "" for a in answers]

    def _generate(self, batch: Sequence[Instance]) -> tuple[list[str], int]:
        """Answers cut at the stop strings, and the tokens generated (padding after an early end not counted)."""
        contexts, gen_kwargs = [r.args[0] for r in batch], dict(batch[0].args[1])
        images = [self._visuals(r) for r in batch]
        unknown = set(gen_kwargs) - set(_GENERATION_KEYS)
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        options: dict[str, Any] = {"max_new_tokens": int(gen_kwargs.pop("max_new_tokens", 128))}
        temperature = float(gen_kwargs.pop("temperature", 0) or 0)
        options["do_sample"] = bool(gen_kwargs.pop("do_sample", False)) or temperature > 0
        if options["do_sample"]:
            options["temperature"] = temperature or 1.0
            options["top_p"] = float(gen_kwargs.pop("top_p", 1.0) or 1.0)
        if int(gen_kwargs.pop("num_beams", 1) or 1) > 1:
            raise InputError("mmeff's lmms-eval entry decodes greedily or by sampling; num_beams > 1 is not supported")
        if unknown and frozenset(unknown) not in self._warned:  # task-specific extras (e.g. image_aspect_ratio)
            self._warned.add(frozenset(unknown))
            warnings.warn(f"mmeff's lmms-eval entry ignores generation kwargs {sorted(unknown)}; it honours "
                          f"{list(_GENERATION_KEYS)}", stacklevel=2)
        out = self.pipe.generate(images, [_clean_context(c) for c in contexts], return_ids=True, **options)
        pad_id = getattr(self.pipe.processor, "tokenizer", self.pipe.processor).pad_token_id
        return [_cut(text, until) for text in out.texts], int((out.new_tokens != pad_id).sum())

    def _visuals(self, request: Instance) -> Any:
        """The doc's images: one image, a list, or None (text only)."""
        doc_to_visual, doc_id, task, split = request.args[2:6]
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        if any(isinstance(v, (str, dict)) for v in visuals):
            raise InputError(f"task {task!r} gives video or audio inputs; mmeff's lmms-eval entry takes images only")
        images = [v.convert("RGB") if hasattr(v, "convert") else v for v in visuals]  # PIL, arrays or tensors
        return images[0] if len(images) == 1 else (images or None)

    def _log_totals(self, totals: dict[str, float], n_requests: int) -> None:
        """One throughput record per call, summed over processes (every rank makes the same calls)."""
        totals = dict(totals, requests=n_requests)
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict[str, float]] = [{} for _ in range(self.world_size)]
            torch.distributed.all_gather_object(gathered, totals)
            totals = {key: sum(t[key] for t in gathered) for key in totals}
        extra: dict[str, Any] = {"total_requests": totals["requests"], "requests_answered": totals["requests"]}
        if totals["reduced_batches"]:
            extra["mean_image_tokens_in"] = totals["image_tokens_in"] / totals["reduced_batches"]
            extra["mean_image_tokens_kept"] = totals["image_tokens_kept"] / totals["reduced_batches"]
            extra["final_image_tokens"] = totals["final_image_tokens"] / totals["reduced_batches"]
        if totals["decoding_batches"]:  # a contrastive decoding plugin counted its model calls
            extra["model_forwards"] = totals["forwards"]
            extra["model_forwards_per_batch"] = totals["forwards"] / totals["decoding_batches"]
        seconds = totals["seconds"]
        log_metrics(total_elapsed_time=seconds, total_gen_tokens=int(totals["tokens"]),
                    avg_speed=totals["tokens"] / seconds if seconds else 0.0, additional_metrics=extra)

    # -- likelihood ------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """log p(continuation | context, images) under the plugins, read off a forced greedy decode.

        The continuation is forced token by token through ``generate``, so decoding plugins
        (contrastive ones included) shape the very distribution scored.
        """
        out = []
        for request in tqdm(requests, desc="mmeff loglikelihood", disable=self.rank != 0):
            context, target = request.args[0], request.args[1]
            doc_id, task, split = request.args[3:6]
            continuation = target(self.task_dict[task][split][doc_id]) if callable(target) else target
            if isinstance(continuation, (list, tuple)):
                continuation = continuation[0]
            out.append(self.continuation_logprob(self._visuals(request), _clean_context(context), str(continuation)))
        return out

    def continuation_logprob(self, images: Any, prompt: str, continuation: str) -> tuple[float, bool]:
        tokenizer = getattr(self.pipe.processor, "tokenizer", self.pipe.processor)
        ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InputError(f"the continuation {continuation!r} tokenizes to nothing")
        scorer = ForcedContinuation(ids)
        self.pipe.generate([images], [prompt], max_new_tokens=len(ids), do_sample=False,
                           logits_processor=[scorer], min_new_tokens=len(ids))
        return scorer.logprob, scorer.greedy

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("mmeff's lmms-eval entry answers single-round tasks (generate_until, loglikelihood)")


class ForcedContinuation:
    """A logits processor that scores the given tokens one step at a time and then forces them."""

    def __init__(self, ids: list[int]) -> None:
        self.ids, self.step, self.logprob, self.greedy = ids, 0, 0.0, True

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != 1:
            raise InputError("loglikelihood scores one request at a time")
        target = self.ids[min(self.step, len(self.ids) - 1)]
        logprobs = scores.float().log_softmax(-1)[0]
        if self.step < len(self.ids):
            self.logprob += logprobs[target].item()
            self.greedy &= int(logprobs.argmax()) == target
        self.step += 1
        forced = torch.full_like(scores, float("-inf"))
        forced[:, target] = 0.0
        return forced


def _dtype(name: str | None) -> Any:
    if name in (None, "", "auto"):
        return None if name is None else "auto"
    if not hasattr(torch, str(name)):
        raise ConfigError(f"dtype {name!r} is not a torch dtype (e.g. float16, bfloat16, float32, auto)")
    return getattr(torch, str(name))


def _clean_context(context: str) -> str:
    for placeholder in IMAGE_PLACEHOLDERS:
        context = context.replace(placeholder, "")
    context = context.strip()
    if not context:
        raise InputError("an lmms-eval request gave an empty prompt")
    return context


def _cut(text: str, until: list[str]) -> str:
    """lmms-eval's stop strings: the answer ends before the first one."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


def _add_stats(totals: dict[str, float], stats: dict[str, Any]) -> None:
    totals["seconds"] += stats["wall_time_s"]
    for value in stats.values():  # contrastive decoding loops count their model forwards
        if isinstance(value, dict) and isinstance(value.get("forwards"), int):
            totals["forwards"] += value["forwards"]
            totals["decoding_batches"] += 1
            break
    totals["batches"] += 1
    for value in stats.values():  # the first token-reduction plugin's view covers the stack
        if isinstance(value, dict) and "mean_image_tokens" in value and value.get("image_tokens_before"):
            totals["image_tokens_in"] += sum(value["image_tokens_before"]) / len(value["image_tokens_before"])
            totals["image_tokens_kept"] += value["mean_image_tokens"]  # averaged over decoder layers
            totals["final_image_tokens"] += value["final_image_tokens"]
            totals["reduced_batches"] += 1
            break

