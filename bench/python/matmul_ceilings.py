"""The dense bf16 and e4m3 matmul rates of this GPU in one process (cuBLAS: `a @ b` and
`torch._scaled_mm`, 8192^3, timed as the driver times its ceilings, three rounds): the ceiling an fp8
kernel's rate is read against, beside the driver's bf16 one.

    python bench/python/matmul_ceilings.py
"""
import torch

from lcattn.testing.bench import median_ms


def main() -> None:
    torch.manual_seed(0)
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    a8 = a.to(torch.float8_e4m3fn)
    b8 = b.to(torch.float8_e4m3fn).t().contiguous().t()  # column-major, as _scaled_mm takes it
    one = torch.ones((), device="cuda")
    print(torch.cuda.get_device_name())
    for r in range(3):
        bf16, e4m3 = (2 * n**3 / median_ms([fn], 50) / 1e9 for fn in (
            lambda: a @ b, lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16)))
        print(f"round {r}: bf16 {bf16:.0f} TFLOP/s, e4m3 {e4m3:.0f} TFLOP/s, ratio {e4m3 / bf16:.2f}")


if __name__ == "__main__":
    main()
