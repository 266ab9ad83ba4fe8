"""Times every lcattn op on the GPU at the shapes of SPEC.md against the best baseline in the same run.

    python bench/python/run.py [--ops sparse_attn,dense_attn,...,layers] [--quick] [--contexts 8192,...]
                               [--reps N] [--switch NAME=A,B[:OPS] ...] [--out DIR]

Measures its own ceilings first (dense bf16 matmul, device-to-device copy), then per case the
median time over rotated input sets (CUDA events, after warm-up), TFLOP/s, TB/s, the fraction of
the ceiling (the larger of FLOPs / matmul rate and bytes / copy rate, over the time) and the ratio
to each baseline: unfused stock-torch ops, torch.topk, F.grouped_mm, FlexAttention, and FlashMLA
when it is importable. The `layers` family times one V4-Flash CSA and one HCA attention layer at
8K to 1M context (bench/python/layers.py). Writes results.json, results.csv, layers.csv and the
plots ops.png and layers.png under --out (the tables rewritten after each case, so a run cut short
keeps what it measured), and prints a table last.

`--switch NAME=A,B,...[:OPS]` (repeatable) times every case again (or those of the comma list OPS:
op names, or `layers`) with an LCATTN_* run-time switch at each value after the first, the others at
their first, in the same run: the row's case names the switch and its baselines include the first
setting ("NAME=A 1.10x": that much faster than with A). The switches are read per call (graphs at
capture), so this compares kernels in one device run.
"""
import argparse
import csv
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import layers  # bench/python/layers.py and cases/, beside this script
import torch
from cases import DEV, attention, compress, indexer, mhc, moe

from lcattn.testing.bench import Progress, ceilings, median_ms, rotated


@dataclass
class Result:
    op: str
    case: str
    ms: float
    tflops: float
    tbps: float
    ceiling_fraction: float
    baselines: Dict[str, float] = field(default_factory=dict)  # name -> baseline ms / our ms
    context: int = 0  # the context length the case stands for, where it has one


def switch_settings(specs: List[str]) -> List[Tuple[Dict[str, str], Optional[set]]]:
    """["NAME=A,B[:OPS]", ...] -> (the environment, the ops it is for or None for all) of each setting:
    every switch at its first value (for all), then each later value of one switch with the others at
    their first."""
    switches = []
    for spec in specs:
        name, _, rest = spec.partition("=")
        values, _, ops = rest.partition(":")
        if not name or not values:
            raise SystemExit(f"--switch takes NAME=A,B,...[:OPS], got {spec!r}")
        switches.append((name, values.split(","), set(ops.split(",")) if ops else None))
    first = {name: values[0] for name, values, _ in switches}
    return [(first, None)] + [({**first, name: v}, ops) for name, values, ops in switches for v in values[1:]]


def set_switches(setting: Dict[str, str]) -> None:
    for name, value in setting.items():
        os.environ[name] = value


def describe(setting: Dict[str, str], reference: Dict[str, str]) -> Tuple[str, str]:
    """The switches a setting changes, as "NAME=B ..." and, from the reference, "NAME=A ..."."""
    changed = [k for k, v in setting.items() if v != reference[k]]
    return " ".join(f"{k}={setting[k]}" for k in changed), " ".join(f"{k}={reference[k]}" for k in changed)


def measure(op, case, flops, nbytes, make_ours, make_baselines, ceilings, reps, context=0) -> Result:
    """Times ours, then each baseline; each one's inputs are made just before it runs and freed after,
    so that no baseline's state (memory, compiled graphs) is alive while another runs."""
    set_bytes = max(nbytes, 1)
    fns = rotated(make_ours, set_bytes)
    ms = median_ms(fns, reps)
    del fns
    torch.cuda.empty_cache()
    floor_ms = max(flops / ceilings["tflops"] / 1e9, nbytes / ceilings["tbps"] / 1e9)
    ratios = {}
    for name, make in make_baselines.items():
        try:
            fns = rotated(make, set_bytes)
            ratios[name] = median_ms(fns, max(3, reps // 4)) / ms
        except (RuntimeError, torch.OutOfMemoryError) as err:  # a baseline that cannot run this shape
            ratios[name] = float("nan")
            print(f"\n  {name} skipped at {case}: {str(err).splitlines()[0][:100]}", file=sys.stderr)
        fns = None
        torch.cuda.empty_cache()
    return Result(op, case, ms, flops / ms / 1e9, nbytes / ms / 1e9, floor_ms / ms, ratios, context)


FAMILIES = {"sparse_attn": attention.sparse_attn_cases, "dense_attn": attention.dense_attn_cases,
            "indexer_topk": indexer.indexer_cases, "topk_indices": indexer.topk_cases, "grouped_gemm": moe.gemm_cases,
            "moe_block": moe.moe_block_cases, "compress_kv": compress.compress_cases, "mhc": mhc.mhc_cases}


def write_plots(results: List[Result], layer_rows: List[dict], out_dir: str) -> None:
    """ops.png: time and fraction of the ceiling against context for the ops measured at several
    contexts; layers.png: prefill time and decode ms per token against context per layer kind."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return
    by_op = {}
    for r in results:
        if r.context:
            by_op.setdefault(r.op, []).append(r)
    if by_op:
        fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(12, 4.5))
        for op, rs in by_op.items():
            rs.sort(key=lambda r: r.context)
            ax_t.plot([r.context for r in rs], [r.ms for r in rs], "o-", label=op)
            ax_c.plot([r.context for r in rs], [100 * r.ceiling_fraction for r in rs], "o-", label=op)
        for ax, what in ((ax_t, "median time (ms)"), (ax_c, "fraction of the measured ceiling (%)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context (tokens)")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.legend()
        ax_t.set_yscale("log")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "ops.png"), dpi=110)
    if layer_rows:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for kind in sorted({r["layer"] for r in layer_rows}):
            rows = sorted((r for r in layer_rows if r["layer"] == kind), key=lambda r: r["context"])
            ctx = [r["context"] for r in rows]
            axes[0].plot(ctx, [r["prefill_s"] for r in rows], "o-", label=f"{kind} lcattn")
            for b in (1, 64):
                axes[1].plot(ctx, [r[f"decode_ms_b{b}"] for r in rows], "o-", label=f"{kind} lcattn B={b}")
            un = [r for r in rows if "unfused_prefill_s" in r]
            if un:
                axes[0].plot([r["context"] for r in un], [r["unfused_prefill_s"] for r in un], "x--",
                             label=f"{kind} unfused torch")
        for ax, what in ((axes[0], "prefill time (s)"), (axes[1], "decode ms per token")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context (tokens)")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("one V4-Flash attention layer")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "layers.png"), dpi=110)


def write_tables(results: List[Result], layer_rows: List[dict], meta: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({**meta, "results": [asdict(r) for r in results], "layers": layer_rows}, f, indent=1)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["op", "case", "context", "ms", "tflops", "tbps", "ceiling_fraction", "baseline",
                         "baseline_over_ours"])
        for r in results:
            for name, ratio in (r.baselines or {"": float("nan")}).items():
                writer.writerow([r.op, r.case, r.context, f"{r.ms:.4f}", f"{r.tflops:.2f}", f"{r.tbps:.3f}",
                                 f"{r.ceiling_fraction:.4f}", name, f"{ratio:.3f}"])
    if layer_rows:
        keys = sorted({k for r in layer_rows for k in r}, key=lambda k: (k not in ("layer", "context"), k))
        with open(os.path.join(out_dir, "layers.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            writer.writerows(layer_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(FAMILIES) + ",layers",
                        help=f"comma list of {', '.join(FAMILIES)}, layers")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller cases")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--contexts", help="layer cases: comma list of contexts (default 8K to 1M; quick: 8K, 32K)")
    parser.add_argument("--no-unfused-layer", action="store_true", help="skip the unfused PyTorch layer")
    parser.add_argument("--index-fp8", action="store_true", help="layer cases: the CSA indexer in the fp8 form "
                        "(config.index_fp8)")
    parser.add_argument("--kv-fp8", action="store_true", help="layer cases: the compressed attention entries in "
                        "the kv_fp8 form (config.kv_fp8)")
    parser.add_argument("--switch", action="append", default=[], metavar="NAME=A,B[:OPS]",
                        help="also time every case (or those of the ops OPS, a comma list; `layers` for the "
                        "layer cases) with this run-time switch at B (and further values); A is the reference")
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args()
    settings = switch_settings(args.switch)
    wanted = args.ops.split(",")
    unknown = set(wanted) - set(FAMILIES) - {"layers"}
    if unknown:
        parser.error(f"unknown --ops {sorted(unknown)}; choose from {', '.join(FAMILIES)}, layers")
    torch.manual_seed(0)
    ceil = ceilings(DEV)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "ceilings": ceil}
    print(f"{meta['device']}: ceilings {ceil['tflops']:.0f} TFLOP/s bf16 matmul, {ceil['tbps']:.2f} TB/s copy",
          flush=True)
    todo = [c for name in wanted if name in FAMILIES for c in FAMILIES[name](args.quick)]
    known = {c[0] for c in todo} | {"layers"}
    for _, ops in settings:
        if ops is not None and not ops <= known:
            parser.error(f"--switch ...:OPS names {sorted(ops - known)}, which no case of --ops has; "
                         f"choose from {', '.join(sorted(known))}")
    results = []
    bar = Progress("ops", len(todo) * len(settings))
    reference_env = settings[0][0]
    for i, (op, case, flops, nbytes, ours, baselines, *context) in enumerate(todo):
        reference = None
        for j, (setting, ops) in enumerate(settings):
            if ops is not None and op not in ops:
                continue
            bar.update(i * len(settings) + j, f"{op} {case}")
            set_switches(setting)
            if j == 0:
                reference = measure(op, case, flops, nbytes, ours, baselines, ceil, args.reps, *context)
                results.append(reference)
            else:  # the setting's changed switch in the case, the reference as a baseline
                changed, first = describe(setting, reference_env)
                r = measure(op, f"{case} [{changed}]", flops, nbytes, ours, {}, ceil, args.reps, *context)
                r.baselines[first] = reference.ms / r.ms
                results.append(r)
            write_tables(results, [], meta, args.out)  # keep what is done if a later case dies or times out
            torch.cuda.empty_cache()
        set_switches(reference_env)
    bar.update(len(todo) * len(settings), "ops done")

    layer_rows = []
    if "layers" in wanted:
        contexts = ([int(c) for c in args.contexts.split(",")] if args.contexts
                    else [8192, 32768] if args.quick else layers.DEFAULT_CONTEXTS)
        bar = Progress("layers", 2 * len(contexts) * len(settings))
        for j, (setting, ops) in enumerate(settings):
            if ops is not None and "layers" not in ops:
                continue
            set_switches(setting)
            changed = describe(setting, reference_env)[0]
            for row in layers.layer_rows(contexts, unfused=not args.no_unfused_layer and j == 0,
                                          index_fp8=args.index_fp8, kv_fp8=args.kv_fp8):
                if changed:
                    row["layer"] = f"{row['layer']} [{changed}]"
                layer_rows.append(row)
                bar.update(len(layer_rows), f"layer {row['layer']} context {row['context']}")
                write_tables(results, layer_rows, meta, args.out)  # keep what is done if a later case dies
        set_switches(reference_env)

    write_tables(results, layer_rows, meta, args.out)
    write_plots(results, layer_rows, args.out)
    print(f"{'op':<24}{'case':<42}{'ms':>10}{'TFLOP/s':>9}{'TB/s':>7}{'ceil':>7}  baseline/ours")
    for r in results:
        base = ", ".join(f"{n} {x:.2f}x" for n, x in r.baselines.items())
        print(f"{r.op:<24}{r.case:<42}{r.ms:>10.3f}{r.tflops:>9.1f}{r.tbps:>7.2f}{r.ceiling_fraction:>7.1%}  {base}")
    if layer_rows:
        print(f"\n{'layer':<7}{'context':>9}{'prefill s':>11}{'tok/s':>10}{'peak GiB':>10}{'dec ms B=1':>12}"
              f"{'dec ms B=64':>13}  unfused torch")
        for r in layer_rows:
            un = ", ".join(f"{label} {r[k]:.3g}" for label, k in (
                ("prefill s", "unfused_prefill_s"), ("dec ms B=1", "unfused_decode_ms_b1"),
                ("B=64", "unfused_decode_ms_b64")) if k in r)
            print(f"{r['layer']:<7}{r['context']:>9}{r['prefill_s']:>11.3f}{layers.tokens_per_s(r):>10,.0f}"
                  f"{r['prefill_peak_gib']:>10.2f}{r['decode_ms_b1']:>12.3f}{r['decode_ms_b64']:>13.3f}  {un}")


if __name__ == "__main__":
    main()
