"""Which image tokens each ranking signal keeps on a Qwen-VL testbed model, and what that costs on POPE.

Every rule selects among the merger's outputs through VisionZip's Qwen path (``MergedVisionReducer``),
so only the ranking differs from one row to the next. For each rule it prints the share of kept tokens
that touch an object (from the scene's object map) and POPE accuracy per split. The table in
docs/qwen2_vl.md ("Why this model loses more at 1/9") comes from:

    python tools/token_signals/probe.py --model assets/models/shapes-qwen2vl --keep 16 48
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch

import mmeff
from mmeff.plugins.divprune.ops import max_min_subset
from mmeff.testbed.evaluate import run_eval
from mmeff.testbed.questions import build_suite
from mmeff.testbed.render import object_map, render
from mmeff.token_drop.merged_vision import MergedTokens

Rule = Callable[[MergedTokens, torch.Tensor, int], torch.Tensor]


def round_robin(item: MergedTokens, ids: torch.Tensor, keep: int) -> torch.Tensor:
    """Oracle: the most-covered token of each object in turn (ids: (n, pixels) object id per pixel)."""
    lists = []
    for obj in sorted(set(ids.unique().tolist()) - {-1}):
        cover = (ids == obj).float().mean(1)
        lists.append([i for i in cover.argsort(descending=True).tolist() if cover[i] > 0])
    chosen: list[int] = []
    while len(chosen) < keep and any(lists):
        for queue in lists:
            while queue and queue[0] in chosen:
                queue.pop(0)
            if queue and len(chosen) < keep:
                chosen.append(queue.pop(0))
    rest = [i for i in item.features.float().norm(dim=-1).argsort(descending=True).tolist() if i not in chosen]
    return torch.tensor(chosen + rest[: keep - len(chosen)])


RULES: dict[str, Rule] = {
    "received (VisionZip's Qwen signal)": lambda item, ids, k: item.scores.topk(k).indices,
    "random": lambda item, ids, k: torch.randperm(len(item.scores), generator=torch.Generator().manual_seed(0))[:k],
    "received, lowest first": lambda item, ids, k: (-item.scores).topk(k).indices,
    "feature norm": lambda item, ids, k: item.features.float().norm(dim=-1).topk(k).indices,
    "oracle: most object pixels": lambda item, ids, k: ((ids >= 0).float().mean(1)
                                                        + 1e-3 * torch.rand(len(ids))).topk(k).indices,
    "oracle: round-robin over objects": round_robin,
    "divprune (merger outputs)": lambda item, ids, k: max_min_subset(item.features, k),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="assets/models/shapes-qwen2vl")
    parser.add_argument("--keep", type=int, nargs="+", default=[16, 48])
    parser.add_argument("--n-scenes", type=int, default=40)
    args = parser.parse_args()
    pipe = mmeff.load(args.model)
    token_pixels = pipe.model.config.vision_config.patch_size * pipe.model.config.vision_config.spatial_merge_size
    scenes = {render(q.scene).tobytes(): q.scene for q in build_suite("pope", args.n_scenes, seed=0)}
    pending: list[np.ndarray] = []  # the images of the call under way, in the tower's order
    generate = pipe.generate

    def recording(images, prompts, **kw):
        pending[:] = list(images)
        return generate(images, prompts, **kw)

    pipe.generate = recording
    print("| rule | kept | touching an object | POPE random / popular / adversarial |\n|---|---|---|---|")
    for keep in args.keep:
        for name, rule in RULES.items():
            touched: list[float] = []

            def select(item: MergedTokens, rule=rule, keep=keep, touched=touched):
                ids = object_map(scenes[np.asarray(pending.pop(0)).tobytes()])
                s = ids.shape[0] // token_pixels
                ids = torch.from_numpy(ids.reshape(s, token_pixels, s, token_pixels).transpose(0, 2, 1, 3)
                                       .reshape(s * s, -1))
                top = rule(item, ids, keep).sort().values
                touched.append((ids[top] >= 0).any(1).float().mean().item())
                return item.features[top], top

            pipe.add_plugin("visionzip", budget=keep / 144)
            pipe.plugins["visionzip"].reducer.select = select
            metrics = run_eval(pipe, "pope", None, n_scenes=args.n_scenes, batch_size=32, seed=0,
                               progress=False)["metrics"]
            pipe.remove_plugin("visionzip")
            pope = " / ".join(f"{metrics[s]['accuracy']:.3f}" for s in ("random", "popular", "adversarial"))
            print(f"| {name} | {keep} | {np.mean(touched):.3f} | {pope} |", flush=True)


if __name__ == "__main__":
    main()
