"""``mmeff bench tokens --speed``: prefill/decode time and analytic FLOPs of token reduction."""

from __future__ import annotations

import platform
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import mmeff

from ..flops import decoder_prefill_flops
from .layouts import SpeedLayout, build_speed_model
from .methods import Method, all_methods
from .report import markdown_table, print_table, write_json
from .timing import time_prefill_and_decode
from .tokens_ideal import ideal_lengths, ideal_row, time_length, time_other

DEFAULT_METHODS = (Method("pyramid_drop (default)", "pyramid_drop"), *all_methods())


def run_speed(
    out_dir: Path,
    *,
    methods: tuple[Method, ...] = DEFAULT_METHODS,
    layout: SpeedLayout | None = None,
    runs: int = 5,
    decode_tokens: int = 16,
    attn_implementation: str = "sdpa",
    warmup: int = 1,
    ideal: bool = True,
) -> dict[str, Any]:
    """Interleave baseline and methods run by run, so drift hits all of them alike; then time the unmodified
    decoder at the lengths the methods keep (``ideal``, see :mod:`mmeff.bench.tokens_ideal`)."""
    layout = layout or SpeedLayout()
    out_dir.mkdir(parents=True, exist_ok=True)
    model, inputs = build_speed_model(layout, attn_implementation)
    pipe = mmeff.wrap(model)
    refused = tuple(m for m in methods if m.plugin and not mmeff.registry.supported(m.plugin, pipe.adapter.key))
    methods = tuple(m for m in methods if m not in refused)
    everything = (Method("baseline"), *methods)

    def decode_positions(mask: torch.Tensor) -> torch.Tensor:  # M-RoPE models keep their prefill's rope_deltas
        offset = getattr(model.base_model, "rope_deltas", None)
        return pipe.adapter.step_positions(mask, offset if offset is not None else 0)

    times: dict[str, list[tuple[float, float]]] = {m.label: [] for m in everything}
    stats: dict[str, dict[str, Any]] = {}
    n_text = inputs["input_ids"].shape[1]
    ideal_times: dict[int, list[tuple[float, float]]] = {}
    other_times: list[float] = []  # the unmodified prefill without its decoder layers
    with tqdm(total=(runs + warmup) * len(everything), desc="bench tokens --speed", unit="run") as bar:
        for run in range(runs + warmup):
            for method in everything:
                if method.plugin:
                    pipe.add_plugin(method.plugin, **method.options)
                result = time_prefill_and_decode(model, inputs, decode_tokens=decode_tokens,
                                                 before_call=pipe.reset_state, positions=decode_positions)
                if method.plugin:
                    stats[method.label] = pipe.plugins[method.plugin].stats()
                    pipe.remove_plugin(method.plugin)
                if run >= warmup:
                    times[method.label].append(result)
                bar.update()
            if not ideal:
                continue
            if not ideal_times:  # the kept lengths are known once every method has run once
                ideal_times = {n: [] for n in _ideal_lengths(stats, everything, n_text, layout)}
                bar.total += (runs + warmup - run) * len(ideal_times)
            for n, collected in ideal_times.items():  # in the same run, so drift hits them alike
                result = time_length(model, inputs, layout.image_token_id, n, decode_tokens=decode_tokens,
                                     positions=decode_positions)
                if run >= warmup:
                    collected.append(result)
                bar.update()
            other = time_other(model, pipe.adapter.language_model, inputs)
            if run >= warmup:
                other_times.append(other)

    per_method = {m.label: _token_counts(stats.get(m.label, {}), n_text, layout) for m in everything}
    measured = {n: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
                for n, ts in ideal_times.items()}
    base_prefill = statistics.median(t[0] for t in times["baseline"])
    base_decode = statistics.median(t[1] for t in times["baseline"])
    reference = layout.reference_text
    base_flops_7b = decoder_prefill_flops([n_text] * layout.layers, reference)
    ref_kv_width = reference.num_key_value_heads * reference.hidden_size // reference.num_attention_heads
    kv_width = (layout.kv_heads or layout.heads) * layout.hidden // layout.heads
    rows = []
    for method in everything:
        prefill = statistics.median(t[0] for t in times[method.label])
        decode = statistics.median(t[1] for t in times[method.label])
        st = stats.get(method.label, {})
        layer_tokens, tokens = per_method[method.label]
        ideal_cols = ideal_row(layer_tokens, tokens, statistics.median(other_times), base_prefill, measured, prefill,
                               decode) if ideal else {}
        rows.append({
            "method": method.label,
            "plugin": method.plugin,
            "budget": method.budget,
            "prefill_ms": prefill * 1e3,
            "prefill_speedup": base_prefill / prefill,
            "decode_ms_per_token": decode * 1e3,
            "decode_speedup": base_decode / decode,
            "mean_image_tokens": st.get("mean_image_tokens", float(layout.image_tokens)),
            "final_image_tokens": st.get("final_image_tokens", float(layout.image_tokens)),
            "flops_ratio_bench_model": st.get("prefill_flops_ratio", 1.0),
            "flops_ratio_reference": decoder_prefill_flops(layer_tokens, reference) / base_flops_7b,
            "kv_cache_mb_bench_model": kv_bytes(tokens, kv_width, 4) / 2**20,
            "kv_cache_mb_reference_fp16": kv_bytes(tokens, ref_kv_width, 2) / 2**20,
            **ideal_cols,
            "image_tokens_per_layer": st.get("image_tokens_per_layer", [float(layout.image_tokens)] * layout.layers),
            "prefill_runs_ms": [t[0] * 1e3 for t in times[method.label]],
            "decode_runs_ms": [t[1] * 1e3 for t in times[method.label]],
        })
    result = {
        "benchmark": "tokens --speed",
        "layout": asdict(layout) | {"image_tokens": layout.image_tokens, "sequence_length": n_text},
        "refused": {m.plugin: mmeff.registry.refusal(m.plugin, pipe.adapter.key) or "not supported" for m in refused},
        "runs": runs,
        "decode_tokens": decode_tokens,
        "attn_implementation": attn_implementation,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": rows,
        "ideal_decoder_ms": {str(n): [t[0] * 1e3, t[1] * 1e3] for n, t in measured.items()},
        "non_decoder_ms": statistics.median(other_times) * 1e3 if other_times else None,
    }
    _write(out_dir, result)
    return result


def _ideal_lengths(stats: dict[str, dict[str, Any]], methods: tuple[Method, ...], n_text: int,
                   layout: SpeedLayout) -> list[int]:
    """The text-only lengths the ideal columns need: the full prompt, every per-layer length, each mean
    KV-cache length."""
    lengths = {n_text}
    for m in methods:
        prefill_lengths, kv = ideal_lengths(*_token_counts(stats.get(m.label, {}), n_text, layout))
        lengths |= {*prefill_lengths, kv}
    return sorted(lengths)


def _token_counts(st: dict[str, Any], n_text: int, layout: SpeedLayout) -> tuple[list[float], list[float]]:
    """Sequence length per decoder layer in prefill, and KV-cache length per layer after it."""
    kv = st.get("kv_cache_tokens_per_layer", [float(n_text)] * layout.layers)
    layer_tokens = [n_text - layout.image_tokens + t for t in st.get("image_tokens_per_layer", [])] or kv
    return layer_tokens, kv


def kv_bytes(tokens_per_layer: list[float], kv_width: int, bytes_per_value: int) -> float:
    """Keys and values of every layer; ``kv_width`` = key-value heads x head size (the hidden size without GQA)."""
    return sum(tokens_per_layer) * 2 * kv_width * bytes_per_value


def _table(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = ["method", "prefill ms", "prefill speedup", "decode ms/token", "decode speedup",
               "mean img tokens", "final img tokens", "KV cache MB (7B fp16)", "FLOPs ratio (bench model)",
               "FLOPs ratio (7B dims)"]
    ideal = "ideal_prefill_speedup" in result["results"][0]
    if ideal:
        headers[5:5] = ["ideal prefill speedup", "of ideal", "decode overhead µs/layer"]
    rows = []
    for r in result["results"]:
        row = [r["method"], r["prefill_ms"], r["prefill_speedup"], r["decode_ms_per_token"], r["decode_speedup"],
               r["mean_image_tokens"], r["final_image_tokens"], r["kv_cache_mb_reference_fp16"],
               r["flops_ratio_bench_model"], r["flops_ratio_reference"]]
        if ideal:
            mark = "" if r["ideal_kind"] == "measured" else " (per layer)"
            row[5:5] = [f"{r['ideal_prefill_speedup']:.2f}x{mark}", r["prefill_efficiency"],
                        r["decode_overhead_us_per_layer"]]
        rows.append(row)
    return headers, rows


def _write(out_dir: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_json(out_dir / "tokens_speed.json", result)
    headers, rows = _table(result)
    print_table("mmeff bench tokens --speed", headers, rows)
    lay = result["layout"]
    md = [
        "# Token reduction: speed",
        "",
        f"Random-weight {lay['arch']} with {lay['reference']}'s token layout: {lay['layers']} decoder layers, "
        f"{lay['heads']} query / {lay['kv_heads'] or lay['heads']} key-value heads, "
        f"{lay['image_tokens']} image tokens, {lay['sequence_length']} tokens in all; hidden size {lay['hidden']} "
        f"(reduced to fit the CPU; the vision tower is 2 blocks of width 64, and its time is part of every "
        f"prefill). Medians of {result['runs']} interleaved runs; speedups are baseline/method "
        f"in the same run. Decode: {result['decode_tokens']} greedy steps with the KV cache. "
        f"{result['attn_implementation']} attention, {result['torch_threads']} threads, torch {result['torch']}.",
        "",
        markdown_table(headers, rows),
        "",
        "Ideal: the unmodified model on the tokens the method keeps: the non-decoder time (vision tower, "
        "embedding, positions: the unmodified forward with its decoder layers taken out) plus the decoder's time "
        "at the kept lengths, measured on text-only prompts (where "
        "counts vary by layer, marked per layer, each layer costs 1/layers of the unmodified decoder at its "
        "length); 'of ideal' = ideal prefill time / measured prefill time (1.0 = the hooks cost nothing). "
        "Decode overhead = (decode step - the unmodified step on a cache of the method's mean length) / layers.",
        "",
        "FLOPs ratios are analytic decoder prefill FLOPs (projections, n² attention, gated MLP): with the bench "
        f"model's dimensions including the plugin's ranking overhead, and with {lay['reference']}'s dimensions "
        "for the same token counts per layer, layers only.",
        *[f"- refused on this model: {label}: {why}" for label, why in result.get("refused", {}).items()],
        "",
        "![speedups](speedups.png)",
        "![image tokens per layer](tokens_per_layer.png)",
    ]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")

    labels = [r["method"] for r in result["results"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(labels)), 4))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [r["prefill_speedup"] for r in result["results"]], 0.4, label="prefill")
    ax.bar([i + 0.2 for i in x], [r["decode_speedup"] for r in result["results"]], 0.4, label="decode / token")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("speedup vs baseline (x)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "speedups.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in result["results"]:
        if r.get("budget") not in (None, "1/9"):
            continue  # one budget keeps the plot readable; the JSON has them all
        ax.step(range(len(r["image_tokens_per_layer"])), r["image_tokens_per_layer"], where="post", label=r["method"])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("image tokens (budget 1/9)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "tokens_per_layer.png", dpi=120)
    plt.close(fig)
