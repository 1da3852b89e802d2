"""Export reference data from the PyPI packages ``image-reward`` and ``hpsv2`` (run in the peer virtualenv).

Run with the peer environment's Python (see README.md in this folder); nothing is downloaded:

    /work/runs/peer-venv/bin/python tools/peer_rewards/export.py [--out tests/rewards/fixtures]

Writes, for each package, built with the package's own model classes:

- ``<name>_release_keys.json``: {state-dict key: shape} of the release-size model (built on the meta device),
- ``<name>_tiny.pt``: a shrunk model's random state dict, the fixed inputs and the package's scores on them.

Both packages' loaders download weights (and the ImageReward loader its ``med_config.json`` and the
``bert-base-uncased`` tokenizer); this script calls the model constructors those loaders call instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: BLIP's ``configs/med_config.json`` (salesforce/BLIP), which the ImageReward loader fetches from the hub as
#: ``THUDM/ImageReward/med_config.json``; ``encoder_width`` is overwritten by ``BLIP_Pretrain`` with the ViT width
MED_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524, "encoder_width": 768,
    "add_cross_attention": True,
}
#: the shrunk ImageReward: ViT 32 px / patch 8 / width 48 / 2 blocks / 4 heads / MLP 64; BERT width 32, 2 layers
TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 4, "mlp_ratio": 64 / 48}
TINY_MED = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 40}
#: the shrunk HPSv2 (an open_clip CLIP); the real BPE vocabulary and context length, so the real tokenizer runs
TINY_HPS = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
#: word pieces of the shrunk ImageReward's tokenizer (stands in for bert-base-uncased)
WORDS = ("a", "an", "the", "of", "on", "in", "and", "with", "beside", "photo", "painting", "red", "blue", "green",
         "cube", "sphere", "cone", "dog", "dogs", "cat", "two", "three", "small", "big")
PROMPTS = ["a red cube on a blue sphere", "a photo of two dogs beside a cat"]
SEED = 0


def vocab() -> list[str]:
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    return list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *chars,
                               *(f"##{c}" for c in chars)]))


def images(size: tuple[int, int], seed: int) -> list[Image.Image]:
    """Two fixed, unlike RGB images (H, W = ``size``): a colour ramp, and bright stripes on a dark ground, plus
    noise; both have content up to the borders, so cropping and padding give different inputs."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    ramp = np.stack([np.sin(3 * xx), np.cos(4 * yy), xx * yy], -1) * 0.4 + 0.5
    stripes = np.stack([(np.sin(9 * xx) > 0) * 0.9, (np.cos(7 * (xx + yy)) > 0) * 0.8, 0.1 + 0 * xx], -1)
    out = []
    for base in (ramp, stripes):
        arr = np.clip(base + rng.normal(0, 0.08, base.shape), 0, 1)
        out.append(Image.fromarray((arr * 255).round().astype(np.uint8), "RGB"))
    return out


def as_uint8(pils: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(p).copy()).permute(2, 0, 1) for p in pils])


@contextlib.contextmanager
def parameters_on_meta():
    """Every parameter registered inside goes to the meta device (``torch.device("meta")`` cannot be used: BLIP's
    ViT calls ``.item()`` while building); buffers stay real."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def draw(shape: list[int], seed: int, offset: float, scale: float) -> torch.Tensor:
    """The rule both sides use to make a parameter (the fixture stores the recipe, not the values)."""
    return offset + scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def redraw(model: torch.nn.Module) -> dict[str, dict]:
    """Overwrite every parameter with :func:`draw` (unit-variance layers, norms near 1), return the recipes.

    Both packages initialise for training (BLIP: std 1e-10 or 0.02), which leaves a random tower nearly constant;
    redrawn, the scores move with the image and the prompt.
    """
    recipes = {}
    for i, (name, p) in enumerate(sorted(model.named_parameters())):
        module, leaf = name.rsplit(".", 1) if "." in name else ("", name)
        is_norm = "norm" in module.lower() or module.rsplit(".", 1)[-1].startswith("ln_")  # LayerNorm, ln_1, ln_post
        if is_norm and leaf == "weight":
            offset, scale = 1.0, 0.1
        elif p.ndim >= 2:  # linear, conv and embedding tables: unit variance out of unit variance in
            offset, scale = 0.0, float(np.prod(p.shape[1:])) ** -0.5
        else:  # biases, class tokens
            offset, scale = 0.0, 0.1
        recipe = {"shape": list(p.shape), "seed": SEED + i, "offset": offset, "scale": scale}
        with torch.no_grad():
            p.copy_(draw(**recipe))
        recipes[name] = recipe
    return recipes


def persistent_buffers(model: torch.nn.Module, params: dict) -> dict[str, torch.Tensor]:
    """The ``state_dict()`` entries that are not parameters (BERT's ``position_ids``); non-persistent ones are not."""
    return {k: v.clone() for k, v in model.state_dict().items() if k not in params}


def shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


# ---------------------------------------------------------------------------------------------------- ImageReward
def import_imagereward():
    """``ImageReward/__init__.py`` also imports its ReFL training script (diffusers, accelerate, datasets), which
    scoring never uses: register the package without running that file, then import the model module itself."""
    if "ImageReward.ImageReward" in sys.modules:
        return tuple(sys.modules[f"ImageReward.{m}"] for m in ("ImageReward", "models.BLIP.blip",
                                                                "models.BLIP.blip_pretrain"))
    spec = importlib.util.find_spec("ImageReward")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the image-reward package is not installed in this environment")
    pkg = types.ModuleType("ImageReward")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["ImageReward"] = pkg
    return (importlib.import_module("ImageReward.ImageReward"), importlib.import_module("ImageReward.models.BLIP.blip"),
            importlib.import_module("ImageReward.models.BLIP.blip_pretrain"))


def imagereward_model(tmp: Path, tiny: bool):
    """The package's ``ImageReward(med_config=..., device='cpu')``, as ``ImageReward.load`` builds it."""
    ir, blip, blip_pretrain = import_imagereward()
    (tmp / "vocab.txt").write_text("\n".join(vocab()) + "\n")
    bert = blip.BertTokenizer
    fake_bert = type("LocalBert", (), {"from_pretrained": staticmethod(
        lambda name, **kw: bert(vocab_file=str(tmp / "vocab.txt"), do_lower_case=True))})
    cfg = dict(MED_CONFIG)
    saved = blip.BertTokenizer, blip_pretrain.create_vit, ir.MLP
    blip.BertTokenizer = fake_bert  # the package's init_tokenizer still adds its [DEC]/[ENC] tokens
    if tiny:
        cfg.update(TINY_MED, vocab_size=len(vocab()) + 2)  # + BLIP's [DEC] and [ENC]
        vit_module = importlib.import_module("ImageReward.models.BLIP.vit")
        blip_pretrain.create_vit = lambda *a, **k: (vit_module.VisionTransformer(**TINY_VIT), TINY_VIT["embed_dim"])
        mlp = saved[2]
        ir.MLP = lambda width: mlp(TINY_MED["hidden_size"])
    (tmp / "med_config.json").write_text(json.dumps(cfg))
    try:
        model = ir.ImageReward(med_config=str(tmp / "med_config.json"), device="cpu")
    finally:
        blip.BertTokenizer, blip_pretrain.create_vit, ir.MLP = saved
    if tiny:
        model.preprocess = ir._transform(TINY_VIT["img_size"])  # the package's own transform, at the tiny size
    return model.eval()


def export_imagereward(out: Path, tmp: Path) -> None:
    with parameters_on_meta():
        full = imagereward_model(tmp, tiny=False)
    (out / "imagereward_release_keys.json").write_text(json.dumps(shapes(full.state_dict()), indent=0))
    del full

    model = imagereward_model(tmp, tiny=True)
    params = redraw(model)
    square, wide = images((32, 32), 1), images((40, 56), 2)
    tok = model.blip.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        scores = {name: torch.tensor([model.score(p, im) for p, im in zip(PROMPTS, pils)])
                  for name, pils in (("square", square), ("wide", wide))}
        pixels = torch.stack([model.preprocess(im) for im in square])
        grad_path = model.score_gard(tok.input_ids, tok.attention_mask, pixels).squeeze(-1)
    torch.save({
        "params": params, "buffers": persistent_buffers(model, params),
        "vocab": vocab(), "prompts": PROMPTS, "input_ids": tok.input_ids, "attention_mask": tok.attention_mask,
        "images": {"square": as_uint8(square), "wide": as_uint8(wide)}, "scores": scores,
        "score_gard_square": grad_path, "vit": TINY_VIT,
        "med": {**MED_CONFIG, **TINY_MED, "vocab_size": len(vocab()) + 2},
        "versions": versions("image-reward"),
    }, out / "imagereward_tiny.pt")
    print("imagereward:", {k: v.tolist() for k, v in scores.items()}, "score_gard:", grad_path.tolist())


# ---------------------------------------------------------------------------------------------------- HPSv2
def hps_model(name: str, device: str = "cpu"):
    """``create_model_and_transforms`` with the arguments of ``hpsv2.img_score.initialize_model`` (no download)."""
    from hpsv2.src.open_clip import create_model_and_transforms

    return create_model_and_transforms(
        name, None, precision="fp32", device=device, jit=False, force_quick_gelu=False, force_custom_text=False,
        force_patch_dropout=False, force_image_size=None, pretrained_image=False, image_mean=None, image_std=None,
        light_augmentation=True, aug_cfg={}, output_dict=True, with_score_predictor=False,
        with_region_predictor=False)


def export_hpsv2(out: Path, tmp: Path) -> None:
    from hpsv2.src.open_clip import factory, get_tokenizer

    with parameters_on_meta():
        full = hps_model("ViT-H-14", device="meta")[0]
    (out / "hpsv2_release_keys.json").write_text(json.dumps(shapes(full.state_dict()), indent=0))
    del full

    (tmp / "peer-tiny-hps.json").write_text(json.dumps(TINY_HPS))
    factory.add_model_config(tmp / "peer-tiny-hps.json")
    model, _, preprocess_val = hps_model("peer-tiny-hps")
    model.eval()
    params = redraw(model)
    tokenizer = get_tokenizer("peer-tiny-hps")
    square, wide = images((32, 32), 3), images((40, 56), 4)
    scores = {}
    with torch.no_grad():
        for name, pils in (("square", square), ("wide", wide)):
            row = []
            for prompt, im in zip(PROMPTS, pils):  # the body of hpsv2.img_score.score, one image at a time
                outputs = model(preprocess_val(im).unsqueeze(0), tokenizer([prompt]))
                row.append(torch.diagonal(outputs["image_features"] @ outputs["text_features"].T)[0])
            scores[name] = torch.stack(row)
    torch.save({
        "params": params, "buffers": persistent_buffers(model, params), "cfg": TINY_HPS, "prompts": PROMPTS,
        "images": {"square": as_uint8(square), "wide": as_uint8(wide)}, "scores": scores,
        "versions": versions("hpsv2"),
    }, out / "hpsv2_tiny.pt")
    print("hpsv2:", {k: v.tolist() for k, v in scores.items()})


def versions(package: str) -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in (package, "torch", "torchvision", "transformers", "timm")}


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests/rewards/fixtures")
    parser.add_argument("--only", choices=("imagereward", "hpsv2"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "imagereward"):
            export_imagereward(args.out, Path(tmp))
        if args.only in (None, "hpsv2"):
            export_hpsv2(args.out, Path(tmp))
    for f in sorted(args.out.iterdir()):
        print(f"{f.name}: {f.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
