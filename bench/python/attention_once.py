"""Runs one attention call at a bench shape, for profilers (ncu, compute-sanitizer):

    ncu --clock-control none -k regex:attention_sm90 --launch-skip 1 --launch-count 1 \\
        python bench/python/attention_once.py --form dense --tokens 1024 --entries 1024

--flash-mla runs FlashMLA's sparse prefill on the same inputs instead (batch 1; its library as the
driver loads it), to profile both kernels alike.
"""
import argparse

import torch
from cases.attention import attention_inputs, flash_mla_sparse  # bench/python/cases/, beside this script

from lcattn import ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--form", choices=["sparse", "dense"], default="sparse")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--topk", type=int, default=512)
    parser.add_argument("--entries", type=int, default=32768)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--kv-fp8", action="store_true", help="entries in the kv_fp8 form")
    parser.add_argument("--flash-mla", action="store_true", help="FlashMLA's sparse prefill instead")
    args = parser.parse_args()
    ratio = 4 if args.form == "sparse" else 128
    a = list(attention_inputs(args.batch, args.tokens, args.heads, args.topk, args.entries,
                              pos=ratio * args.entries - args.tokens, sparse=args.form == "sparse"))
    if args.kv_fp8:
        a[4] = torch.stack([ops.quantize_kv_fp8(entries, 64) for entries in a[4]])
    if args.flash_mla:
        prepare = flash_mla_sparse()
        if prepare is None or args.form != "sparse" or args.kv_fp8:
            raise SystemExit("--flash-mla: sparse bf16 only, with FlashMLA's library built (scripts/build_flashmla.sh)")
        call = prepare(*a[:6], a[7])
    else:
        def call():
            if args.form == "sparse":
                return ops.sparse_attn(*a[:5], a[7], a[5], a[6])
            return ops.dense_attn(*a[:5], a[5], a[6], ratio=ratio)
    times = []
    for _ in range(args.calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    print(f"{'FlashMLA ' if args.flash_mla else ''}{args.form}: ms per call {', '.join(f'{t:.3f}' for t in times)}")


if __name__ == "__main__":
    main()
