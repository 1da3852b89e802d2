"""The wrapper users hold: ``mmeff.load``/``mmeff.wrap`` -> :class:`MMPipeline`."""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import registry
from .adapters.base import Adapter
from .errors import ConfigError, InputError, UnsupportedModelError
from .plugin import Plugin, PluginConfig, PluginContext


class _Default:
    """Marks "not given" where None is a meaningful value (guidance_scale=None turns guidance off)."""

    def __repr__(self) -> str:
        return "<model default>"


DEFAULT = _Default()


@dataclass
class GenerationOutput:
    """Decoded answers plus the token ids that produced them."""

    texts: list[str] | list[list[str]]  # one list per prompt with num_return_sequences > 1
    sequences: torch.Tensor  # prompt + new tokens, left padded
    new_tokens: torch.Tensor  # only the generated part
    raw: Any = None  # what model.generate returned (its output object with return_dict_in_generate=True)


#: id(model) -> the pipelines wrapping it (weakly), so two pipelines never hook one model at once
_PIPELINES: dict[int, list[weakref.ref]] = {}


def _one_call_at_a_time(method: Callable) -> Callable:
    """Refuse a second call on a pipeline while one runs (from another thread): plugins keep per-call
    state on the model, so interleaved calls would corrupt each other."""
    @functools.wraps(method)
    def guarded(self: MMPipeline, *args: Any, **kwargs: Any) -> Any:
        if not self._busy.acquire(blocking=False):
            raise ConfigError("this MMPipeline is already running a call (from another thread); plugins keep "
                              "per-call state, so concurrent calls on one pipeline are refused: use one pipeline "
                              "(and one model copy) per thread, or serialise the calls")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._busy.release()
    return guarded


class MMPipeline:
    """A model (or diffusers pipeline) with a stack of named, removable plugins."""

    def __init__(self, obj: Any, processor: Any = None, adapter: Adapter | None = None) -> None:
        self.adapter = adapter or registry.find_adapter(obj)(obj, processor)
        self.obj = obj
        self._check_sole_owner()
        for key in [k for k, refs in _PIPELINES.items() if all(r() is None for r in refs)]:
            del _PIPELINES[key]  # models that are gone
        refs = [r for r in _PIPELINES.get(id(obj), []) if r() is not None and r().obj is obj]
        _PIPELINES[id(obj)] = [*refs, weakref.ref(self)]
        self.processor = processor
        self._plugins: OrderedDict[str, Plugin] = OrderedDict()
        self._suspended = False  # inside plugins_disabled(): call-time plugin steps are skipped too
        self._busy = threading.Lock()  # plugins keep per-call state: one call at a time per pipeline
        self.last_stats: dict[str, Any] = {}
        self.last_codes: torch.Tensor | None = None  # image tokens of the last generate_images call

    @property
    def model(self) -> Any:
        return self.obj

    def _check_sole_owner(self) -> None:
        """Refuse to hook a model another live pipeline already has plugins on (their hooks and per-call
        state would interleave)."""
        for ref in _PIPELINES.get(id(self.obj), []):
            other = ref()
            if other is not None and other is not self and other.obj is self.obj and other._plugins:
                raise ConfigError(
                    f"this {type(self.obj).__name__} is already wrapped by another MMPipeline with plugins "
                    f"{list(other._plugins)}; use that pipeline, or call its remove_all_plugins() first"
                )

    # -- plugins -------------------------------------------------------------------------
    @property
    def plugins(self) -> OrderedDict[str, Plugin]:
        return OrderedDict(self._plugins)

    def add_plugin(self, plugin: str | PluginConfig, **options: Any) -> Plugin:
        """Attach a plugin by registered name (``add_plugin("pyramid_drop", ratio=0.5)``)
        or by config object (``add_plugin(PyramidDropConfig(ratio=0.5))``).

        Re-adding a name replaces the earlier instance. On any error nothing is attached.
        """
        cls, config = self._resolve(plugin, options)
        self._check_sole_owner()
        if not registry.supported(cls.name, self.adapter.key):
            reason = registry.refusal(cls.name, self.adapter.key)
            raise UnsupportedModelError(
                f"plugin {cls.name!r} does not support {self.adapter.key!r} models "
                f"({type(self.obj).__name__}){': ' + reason if reason else ''}; it supports: "
                f"{registry.supported_adapters(cls.name) or list(cls.supports)}"
            )
        instance = cls(config)
        ctx = self._context(cls.name)
        instance.check(ctx)  # first: what a plugin takes over may depend on the model (MustDrop's merge)
        mine = set(instance.owned_stages())
        for other_name, other in self._plugins.items():
            shared = sorted(mine & set(other.owned_stages()))
            if shared and other_name != cls.name:
                raise ConfigError(
                    f"{cls.name!r} and {other_name!r} both take over the {'/'.join(shared)} stage; use one of "
                    f"them (stages: vision = token reduction in the vision tower, prefill = in the decoder, "
                    f"decode = KV-cache policy, decode_loop = the token-choosing loop of contrastive decoding, "
                    f"initial_noise = where a text-to-image call's starting noise comes from, image_decode_loop = "
                    f"the token loop of autoregressive image generation; "
                    f"plugins on different stages compose)"
                )
        previous = self._plugins.get(cls.name)
        if previous is not None:
            self.remove_plugin(cls.name)
        if self._suspended:  # inside plugins_disabled(): attached when the block ends
            instance.ctx = ctx
            self._plugins[cls.name] = instance
            return instance
        try:
            instance.attach(ctx)
        except BaseException:
            try:
                instance.detach(ctx)  # also undoes shared state (e.g. the token-drop engine's stages)
            finally:
                ctx.remove_hooks()
            if previous is not None:  # put back what was there
                previous.attach(ctx)
                previous.ctx = ctx
                self._plugins[cls.name] = previous
            raise
        instance.ctx = ctx
        self._plugins[cls.name] = instance
        return instance

    def add_plugins(self, stack: str | Path | list[str] | list[tuple[str, dict[str, Any]]]) -> list[Plugin]:
        """Attach a whole stack: a stack file (``save_plugins``), specs like ``["fastv:budget=64", "vcd"]``,
        or ``[(name, options), ...]``. Every entry is checked first; on any error nothing stays attached."""
        from .plugin_spec import as_stack

        entries = as_stack(stack)
        added: list[Plugin] = []
        try:
            for name, options in entries:
                added.append(self.add_plugin(name, **options))
        except BaseException:
            for plugin in reversed(added):
                self.remove_plugin(plugin.name)
            raise
        return added

    def save_plugins(self, path: str | Path) -> Path:
        """Write the attached plugins and their options as a versioned JSON stack file, which
        ``mmeff.load(..., plugins=path)``, ``pipe.add_plugins(path)`` and ``--plugins`` read back."""
        import json

        from .plugin_spec import stack_document

        stack = [(name, plugin.config.to_dict()) for name, plugin in self._plugins.items()]
        for name, options in stack:
            for key, value in options.items():
                try:
                    json.dumps(value)
                except TypeError:
                    raise ConfigError(f"{name}.{key} = {value!r} cannot be written to a stack file (JSON holds "
                                      "numbers, strings, lists and dicts); set it in code instead") from None
        path = Path(path)
        path.write_text(json.dumps(stack_document(stack), indent=2) + "\n")
        return path

    def remove_plugin(self, name: str) -> None:
        if name not in self._plugins:
            raise KeyError(f"no plugin {name!r} attached; attached: {list(self._plugins)}")
        plugin = self._plugins.pop(name)
        if not self._suspended:  # inside plugins_disabled() it is detached already
            plugin.detach(plugin.ctx)
        plugin.ctx = None

    def remove_all_plugins(self) -> None:
        for name in reversed(list(self._plugins)):
            self.remove_plugin(name)

    @contextlib.contextmanager
    def plugins_disabled(self) -> Iterator[MMPipeline]:
        """Run the unmodified model on the same object; plugins come back afterwards.

        Nested blocks change nothing (the outermost one restores); a plugin added inside a block
        is attached when the outermost block ends, one removed inside stays removed."""
        if self._suspended:
            yield self
            return
        for plugin in reversed(list(self._plugins.values())):
            plugin.detach(plugin.ctx)
        self._suspended = True
        try:
            yield self
        finally:
            self._suspended = False
            failed: list[BaseException] = []
            for name, plugin in list(self._plugins.items()):
                try:
                    plugin.attach(plugin.ctx)
                except BaseException as error:  # noqa: BLE001 -- undo this one, keep the others, then report
                    plugin.detach(plugin.ctx)
                    plugin.ctx.remove_hooks()
                    del self._plugins[name]
                    failed.append(error)
            if failed:
                raise failed[0]

    def _resolve(self, plugin: str | PluginConfig, options: dict[str, Any]) -> tuple[type[Plugin], PluginConfig]:
        if isinstance(plugin, PluginConfig):
            if options:
                raise ConfigError("pass options either in the config object or as keywords, not both")
            matches = [registry.get_plugin(n) for n in registry.list_plugins()]
            for cls in matches:
                if type(plugin) is cls.config_cls:
                    return cls, plugin
            raise KeyError(f"no registered plugin uses {type(plugin).__name__}")
        if not isinstance(plugin, str):
            raise TypeError(f"add_plugin takes a plugin name or a PluginConfig, got {type(plugin).__name__}")
        cls = registry.get_plugin(plugin)
        return cls, cls.config_cls.from_kwargs(**options)

    def _context(self, name: str) -> PluginContext:
        return PluginContext(roots=self.adapter.hook_roots(), adapter=self.adapter, namespace=name)

    def reset_state(self) -> None:
        """Forget per-call plugin state; call this before driving ``model(...)`` yourself."""
        for plugin in self._plugins.values():
            plugin.reset()

    def to_model(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Processor outputs on the model's device, floating-point ones in its dtype."""
        device = _module_device(self.obj)
        dtype = next(self.obj.parameters()).dtype
        return {k: _to(v, device, dtype) for k, v in inputs.items()}

    def _active(self) -> list[Plugin]:
        return [] if self._suspended else list(self._plugins.values())

    def _collect_stats(self, base: dict[str, Any]) -> dict[str, Any]:
        stats = dict(base)
        for plugin in self._active():
            stats[plugin.name] = plugin.stats()
        self.last_stats = stats
        return stats

    # -- running -------------------------------------------------------------------------
    @_one_call_at_a_time
    @torch.no_grad()
    def generate(
        self,
        images: Any = None,
        prompts: str | Sequence[str] | None = None,
        *,
        videos: Sequence[Any] | None = None,
        max_new_tokens: int = 32,
        return_ids: bool = False,
        **generate_kwargs: Any,
    ) -> str | list[str] | GenerationOutput:
        """Answer ``prompts`` about ``images`` and/or ``videos``, batched with left padding.

        ``images`` holds one entry per prompt: an image, a list of images, or None (a single
        prompt string takes a single image). ``videos`` holds one list of frames (or None) per
        prompt, for models that take video. A single prompt string returns a single string.
        ``return_ids=True`` returns a :class:`GenerationOutput` with the token ids too. Extra
        keywords go to ``model.generate`` (``do_sample``, ``use_cache``, ``logits_processor``, ...).
        """
        if self.adapter.family != "vlm":
            raise UnsupportedModelError(
                "generate() is for vision-language models; call a text-to-image pipeline directly: pipe(prompt, ...)"
            )
        if prompts is None:
            raise InputError("generate() needs prompts: one question per image (or video)")
        single = isinstance(prompts, str)
        prompt_list = [prompts] if single else list(prompts)
        if images is None:
            image_list = [None] * len(prompt_list)
        elif single or not isinstance(images, (list, tuple)):
            image_list = [images]
        else:
            image_list = list(images)
        if videos is not None and (not isinstance(videos, (list, tuple)) or not videos):
            raise InputError("videos must be a non-empty list: one list of frames (or None) per prompt")
        if single and len(videos or ()) > 1 and not isinstance(videos[0], (list, tuple)):
            videos = [videos]  # one prompt, one clip given as its frames
        if isinstance(max_new_tokens, np.integer):
            max_new_tokens = int(max_new_tokens)
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        loops = [p.name for p in self._active() if "decode_loop" in p.owned_stages()]
        if loops and videos is not None and any(v is not None for v in videos):
            raise InputError(f"{loops[0]}: contrastive decoding on video inputs is not supported yet; pass images")
        inputs = self.to_model(self.adapter.build_inputs(image_list, prompt_list, videos=videos))
        self.adapter.check_token_counts(inputs["input_ids"], inputs)

        self.reset_state()
        generate_kwargs = self._generation_defaults(generate_kwargs)
        start = time.perf_counter()
        for plugin in self._active():  # a decoding plugin may take over the loop (custom_generate)
            inputs, generate_kwargs = plugin.prepare_generate(self, inputs, image_list, prompt_list, generate_kwargs)
        raw = self.obj.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
        wall = time.perf_counter() - start
        sequences = raw.sequences if hasattr(raw, "sequences") else raw
        prompt_len = inputs["input_ids"].shape[1]
        new_tokens = sequences[:, prompt_len:]
        texts = [t.strip() for t in self.adapter.decode(new_tokens)]
        per_prompt = new_tokens.shape[0] // len(prompt_list)
        if per_prompt > 1:  # num_return_sequences: transformers' rows are grouped by prompt
            texts = [texts[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompt_list))]
        self._collect_stats(
            {
                "wall_time_s": wall,
                "batch_size": len(prompt_list),
                "prompt_tokens": prompt_len,
                "new_tokens": int(new_tokens.shape[1]),
            }
        )
        if return_ids:
            return GenerationOutput(texts=texts, sequences=sequences, new_tokens=new_tokens,
                                    raw=raw if raw is not sequences else None)
        return texts[0] if single else texts

    def _generation_defaults(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The model's own generation defaults stand (as in transformers); only a missing pad token is filled
        in, on a copy of a given ``generation_config`` rather than beside it (which transformers warns about)."""
        kwargs = dict(kwargs)
        pad_id = getattr(self.processor, "tokenizer", self.processor).pad_token_id
        config = kwargs.get("generation_config")
        if config is not None:
            if config.pad_token_id is None and "pad_token_id" not in kwargs:
                config = copy.deepcopy(config)
                config.pad_token_id = pad_id
                kwargs["generation_config"] = config
        elif getattr(getattr(self.obj, "generation_config", None), "pad_token_id", None) is None:
            kwargs.setdefault("pad_token_id", pad_id)
        return kwargs

    @_one_call_at_a_time
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Diffusers pipelines: run the wrapped pipeline with every plugin's call-time changes.
        Vision models (timm ViTs): run the model on its inputs, with the plugins' hooks."""
        if self.adapter.family == "vision":
            self.reset_state()
            start = time.perf_counter()
            out = self.obj(*args, **kwargs)
            self._collect_stats({"wall_time_s": time.perf_counter() - start,
                                 "batch_size": args[0].shape[0] if args and hasattr(args[0], "shape") else None})
            return out
        if self.adapter.family != "t2i":
            raise UnsupportedModelError("calling the pipeline is for text-to-image and vision models; "
                                        "use generate() for VLMs")
        if args:  # every diffusers text-to-image pipeline takes the prompt first
            if len(args) > 1 or "prompt" in kwargs:
                raise InputError("pass the prompt as the only positional argument or as prompt=; the rest by keyword")
            kwargs = {"prompt": args[0], **kwargs}
        self.reset_state()
        start = time.perf_counter()
        for plugin in self._active():
            kwargs = plugin.pre_call(self, kwargs)
        out = self.obj(**kwargs)
        images = getattr(out, "images", None)
        self._collect_stats({
            "wall_time_s": time.perf_counter() - start,
            "images": len(images) if images is not None else None,
            "num_inference_steps": kwargs.get("num_inference_steps"),
        })
        return out

    @torch.no_grad()
    @_one_call_at_a_time
    def generate_images(
        self,
        prompts: str | Sequence[str],
        *,
        guidance_scale: float | None | _Default = DEFAULT,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        diffusion_steps: int | None = None,
        progress: bool = False,
    ) -> Any:
        """Text -> images with an autoregressive image-token model (Janus, LlamaGen-style ``ar_image``,
        continuous-token ``continuous_ar``).

        ``guidance_scale`` defaults to the model's own (None turns guidance off); ``temperature=0``
        is greedy. ``seed`` (or a ``generator``) fixes the one random stream the decode loop uses.
        A plugin that owns the image decode loop (``sjd``, ``lantern``, ``zipar``; ``continuous_spec``
        for continuous tokens) replaces plain token-by-token sampling; ``disa`` sets the head-step
        schedule. Returns PIL images, or a (B, 3, H, W) tensor in [0, 1] for
        ``output_type="pt"``, or a (B, H, W, 3) float array for ``"np"``. Continuous-token models
        take ``diffusion_steps`` (head denoising steps per token; DiSA anneals them) instead of
        top-k / top-p. ``progress=True`` shows a bar over image positions (a MAR image takes minutes on a CPU).
        """
        from tqdm.auto import tqdm

        from .adapters.ar_base import ARImageAdapter
        from .ar.loop import plain_decode
        from .ar.sampling import SamplingConfig
        from .ar.session import DecodeSession

        continuous = self.adapter.family == "ar_continuous"
        if not isinstance(self.adapter, ARImageAdapter) and not continuous:
            raise UnsupportedModelError(
                f"generate_images() is for autoregressive image-token models; {self.adapter.key!r} is a "
                f"{self.adapter.family!r} model"
            )
        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompt_list or any(not isinstance(p, str) or not p.strip() for p in prompt_list):
            raise InputError("prompts must be a non-empty string or a non-empty list of non-empty strings")
        if output_type not in ("pil", "pt", "np"):
            raise InputError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")
        if seed is not None and generator is not None:
            raise InputError("pass seed or generator, not both")
        scale = self.adapter.default_guidance if isinstance(guidance_scale, _Default) else guidance_scale
        sampling = None if continuous else SamplingConfig(scale, temperature, top_k, top_p)
        if generator is None and seed is not None:
            generator = torch.Generator(device=self.adapter.device).manual_seed(seed)
        if diffusion_steps is not None and not continuous:
            raise InputError("diffusion_steps applies to continuous-token models (a per-token diffusion head)")
        self.reset_state()
        bar = tqdm(total=self.adapter.num_image_tokens, desc="image tokens", unit="tok", disable=not progress)
        if continuous:
            from .car.generate import generate_continuous

            if top_k is not None or top_p is not None:
                raise InputError("top_k / top_p apply to discrete image tokens, not continuous ones")
            with bar:
                images, out = generate_continuous(self, prompt_list, scale, temperature, diffusion_steps, generator,
                                                  progress=bar)
                bar.update(bar.total - bar.n)  # the last token is drawn without a forward after it
            self._collect_stats(out["stats"])
            self.last_codes = out["tokens"]
            return _images_as(images, output_type)
        start = time.perf_counter()
        session = DecodeSession(self.adapter, prompt_list, scale)
        session.progress = bar
        loops = [p for p in self._active() if "image_decode_loop" in p.owned_stages()]
        with bar:
            codes = loops[0].decode(session, sampling, generator) if loops else plain_decode(session, sampling,
                                                                                              generator)
            bar.update(bar.total - bar.n)  # the last token is drawn without a forward after it
        images = self.adapter.decode_codes(codes)
        n = self.adapter.num_image_tokens
        self._collect_stats({
            "wall_time_s": time.perf_counter() - start,
            "images": len(prompt_list),
            "image_tokens": n,
            "sequential_forwards": session.forwards,
            "tokens_per_forward": n / session.forwards,
            "guidance_scale": scale,
        })
        self.last_codes = codes
        return _images_as(images, output_type)

    def __repr__(self) -> str:
        return f"MMPipeline({self.adapter.key}: {type(self.obj).__name__}, plugins={list(self._plugins)})"


def _images_as(images: torch.Tensor, output_type: str) -> Any:
    """(B, 3, H, W) in [0, 1] -> what ``output_type`` asks for."""
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).float().cpu().numpy()
    if output_type == "np":
        return array
    from PIL import Image

    return [Image.fromarray((a * 255).round().astype("uint8")) for a in array]


def _module_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _to(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        return value.to(device=device, dtype=dtype)
    return value.to(device)


def wrap(obj: Any, processor: Any = None) -> MMPipeline:
    """Wrap an already-loaded model (+ processor) or diffusers pipeline."""
    return MMPipeline(obj, processor)


def _is_diffusers_repo(name_or_path: str | Path) -> bool:
    """Diffusers pipelines carry a ``model_index.json`` (local folder or hub repo)."""
    path = Path(name_or_path)
    if path.is_dir():
        return (path / "model_index.json").is_file()
    try:
        from huggingface_hub import file_exists

        return file_exists(str(name_or_path), "model_index.json")
    except Exception:  # offline or not a hub id: let transformers report the problem
        return False


def load(
    name_or_path: str | Path,
    *,
    torch_dtype: Any = None,
    device_map: Any = None,
    attn_implementation: str | None = None,
    plugins: str | Path | list[Any] | None = None,
    **from_pretrained_kwargs: Any,
) -> MMPipeline:
    """``from_pretrained`` under the hood, for a hub id or a local folder.

    Folders with a ``model_index.json`` load as diffusers pipelines, folders with an
    ``ar_image.json`` as LlamaGen-style image generators (``mmeff.ar.model``); everything else
    as a transformers image-text-to-text model plus its processor. ``plugins``: a stack file
    (``pipe.save_plugins``) or a list of specs, checked before the model loads, attached after.
    """
    if plugins is not None:
        from .plugin_spec import as_stack

        stack = as_stack(plugins)
        pipe = load(name_or_path, torch_dtype=torch_dtype, device_map=device_map,
                    attn_implementation=attn_implementation, **from_pretrained_kwargs)
        pipe.add_plugins(stack)
        return pipe
    kwargs = dict(from_pretrained_kwargs)
    if device_map is not None:
        kwargs["device_map"] = device_map
    from .ar.model import ARImageModel
    from .car.model import ContinuousARModel

    for container in (ARImageModel, ContinuousARModel):
        if container.is_folder(name_or_path):
            if torch_dtype is not None:
                kwargs["dtype"] = torch_dtype
            return wrap(container.from_pretrained(name_or_path, **kwargs))
    if _is_diffusers_repo(name_or_path):
        import diffusers
        from packaging.version import Version  # a transformers dependency

        if attn_implementation is not None:
            raise ConfigError("attn_implementation applies to transformers models, not diffusers pipelines")
        if torch_dtype is not None:  # diffusers renamed it to dtype (0.42 warns on torch_dtype); older ones lack dtype
            renamed = Version(diffusers.__version__).release >= (0, 42)
            kwargs["dtype" if renamed else "torch_dtype"] = torch_dtype
        return wrap(diffusers.DiffusionPipeline.from_pretrained(str(name_or_path), **kwargs))
    import transformers

    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype  # transformers 5 renamed torch_dtype to dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = transformers.AutoModelForImageTextToText.from_pretrained(str(name_or_path), **kwargs)
    processor = transformers.AutoProcessor.from_pretrained(str(name_or_path))
    model.eval()
    return wrap(model, processor)
