"""The dense e4m3 matmul rate of this GPU beside the driver's bf16 ceiling, in one process (cuBLAS:
`torch._scaled_mm` at 8192^3, timed as the driver times its ceilings; three rounds): the ceiling an
fp8 kernel's rate is read against.

    python bench/python/matmul_ceilings.py
"""
import torch

from lcattn.testing.bench import ceilings, median_ms


def main() -> None:
    torch.manual_seed(0)
    n = 8192
    a8 = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)
    # b column-major, as _scaled_mm takes it
    b8 = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn).t().contiguous().t()
    one = torch.ones((), device="cuda")
    print(torch.cuda.get_device_name())
    for r in range(3):
        bf16 = ceilings()["tflops"]
        e4m3 = 2 * n**3 / median_ms([lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16)], 50) / 1e9
        print(f"round {r}: bf16 {bf16:.0f} TFLOP/s, e4m3 {e4m3:.0f} TFLOP/s, ratio {e4m3 / bf16:.2f}")


if __name__ == "__main__":
    main()
