"""Timing helpers shared by the benchmark driver (bench/python) and the demo: CUDA-event medians over
rotated input sets, CUDA-graph capture, the measured ceilings, and a progress bar."""
import math
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

L2_BYTES = 50 * 2**20  # H100 / H200
# A spin kernel of this many GPU clocks (about 50 us on an H200) ahead of each timed call keeps the GPU
# busy while the host enqueues the call, so the timed interval is the call's GPU time and not the
# host's launch latency (a graph launch costs several us; a step inside a model's graph does not pay
# it). 0 times from an idle GPU.
LAUNCH_LEAD_CYCLES = 100_000
# Calls before the timed ones run for at least this long (and at least 3): a short call timed after
# only a few warm-up calls ran at clocks still rising (the decode grouped GEMM: 73-75 us in a first
# series of 60 calls, 65-66 us in a second one on the same inputs), and with 25 ms a call timed first
# after the driver's prefill GEMM rows still ran slow (flash T=1 decode GEMM on an H100: 100 us, then
# 86-87 us in the next two series of the same case).
WARMUP_SECONDS = 0.1


def warm_up(fns: List[Callable[[], object]]) -> None:
    """Calls the input sets in turn for WARMUP_SECONDS of GPU time, at least 3 calls."""
    started, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - started < WARMUP_SECONDS:
        fns[calls % len(fns)]()
        calls += 1
        if calls % 8 == 0:
            torch.cuda.synchronize()  # keeps the host's clock on the GPU's work
    torch.cuda.synchronize()


def median_ms(fns: List[Callable[[], object]], reps: int) -> float:
    """Median of reps timed calls after warm_up, cycling through input sets so that L2 holds none of
    them; each call queued behind LAUNCH_LEAD_CYCLES of spinning."""
    warm_up(fns)
    times = []
    for r in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn = fns[r % len(fns)]
        if LAUNCH_LEAD_CYCLES:
            torch.cuda._sleep(LAUNCH_LEAD_CYCLES)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def kernel_profile(fn: Callable[[], object], calls: int, warmup: int = 3,
                   name_width: Optional[int] = 110) -> Tuple[float, float, List[str]]:
    """GPU kernels of fn() under torch.profiler, over `calls` calls after `warmup` ones: (GPU us per
    call, kernels per call, a line per kernel, largest first: us per call, share, launches per call,
    name cut to name_width characters; None keeps whole names)."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.key_averages() if e.device_time_total > 0), key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events) / calls
    lines = [f"  {e.device_time_total / calls:8.1f} us {100 * e.device_time_total / calls / total:5.1f}% "
             f"{e.count / calls:6.1f}x  {e.key[:name_width]}" for e in events]
    return total, sum(e.count for e in events) / calls, lines


def kernel_names(fn: Callable[[], object], warmup: int = 3) -> str:
    """The whole names of the GPU kernels one call of fn() launches, a line each (empty where the
    profiler sees no kernel, as under compute-sanitizer)."""
    return "\n".join(kernel_profile(fn, 1, warmup=warmup, name_width=None)[2])


def capture(fn: Callable[[], object]) -> Tuple[torch.cuda.CUDAGraph, object]:
    """fn() captured in a CUDA graph after a warm-up on a side stream: (graph, its output)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def graphed(fn: Callable[[], object]) -> Callable[[], object]:
    """fn as a replay of its CUDA graph: decode's launch path. The replay holds fn, and so the tensors
    its graph reads (a graph does not own them: freed, their memory would go to the next input set),
    and returns the graph's output."""
    graph, out = capture(fn)

    def replay():
        graph.replay()
        return out
    replay.inputs = fn
    return replay


def rotated(make: Callable[[], Callable[[], object]], set_bytes: int) -> List[Callable[[], object]]:
    """Enough input sets (each built by make()) to exceed twice the L2 cache."""
    return [make() for _ in range(min(8, max(1, math.ceil(2 * L2_BYTES / max(set_bytes, 1)))))]


def ceilings(device: str = "cuda") -> Dict[str, float]:
    """The measured rates to compare with: bf16 matmul at 8192^3 (TFLOP/s) and a 2 GiB device copy,
    read + write (TB/s)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm = median_ms([lambda: a @ b], 20)
    src = torch.randn(2**29, device=device)  # 2 GiB
    dst = torch.empty_like(src)
    cp = median_ms([lambda: dst.copy_(src)], 20)
    return {"tflops": 2 * 8192**3 / mm / 1e9, "tbps": 2 * src.nbytes / cp / 1e9}


class Progress:
    """A bar on stderr, redrawn in place on a terminal; in a log (stderr not a TTY), a line at most
    every `every` seconds and the last one."""

    def __init__(self, label: str, total: int, every: float = 5.0):
        self.label, self.total, self.every = label, total, every
        self.started = self.printed = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, what: str = "") -> None:
        now = time.perf_counter()
        rate = done / max(now - self.started, 1e-9)
        what = f" {what[:70]:<70}" if what else ""
        if self.tty:
            filled = 30 * done // max(self.total, 1)
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} "
                             f"({rate:,.1f}/s){what}" + ("\n" if done == self.total else ""))
        elif done == self.total or now - self.printed >= self.every:
            sys.stderr.write(f"{self.label} {done}/{self.total} ({rate:,.1f}/s){what}".rstrip() + "\n")
            self.printed = now
        sys.stderr.flush()
