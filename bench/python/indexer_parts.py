"""How the Hopper indexer scoring's time splits between its products and its head sums: builds
csrc/kernels/indexer_sm90.cu four ways (as it is; without the sums, each score then one
accumulator; without the products, the sums over whatever the accumulator registers hold; without
either) beside a small driver, and times each on a prefill chunk of S queries against N entries
(64 heads x 128, q at the end of a 4N-token context, as the driver's indexer cases), bf16 and e4m3.
Prints ms a call and the time a pair of query rows takes a CTA (the SMs' time over the pairs, so
per pair of 256 keys), in ns and in cycles at the GPU's clock: the e4m3 products alone take 1,024
tensor cycles a pair at the full rate, bf16 2,048. On a GPU machine, from the repository root:

    python bench/python/indexer_parts.py [--queries 4096] [--entries 32768]
    python bench/python/indexer_parts.py --setting "" --setting "NAME=VALUE ..."   (each build timed
        with each setting's switches set)

Needs nvcc. The parts go out by matching lines of the kernel's source: an edit there that moves one
of them is an error here, to be mended in CUTS. The removed parts leave their registers fenced, so
the rest compiles as it does in the kernel.
"""
import argparse
import tempfile
from concurrent.futures import ThreadPoolExecutor

from phase_probe import build, instrumented_source, parse_setting, run

# The TMA descriptor's driver call through the runtime's entry point lookup, not CUTLASS's adapter.
DRIVER_CALL = (
    '#include "cutlass/cuda_host_adapter.hpp"  // call_cuTensorMapEncodeTiled: the driver call without -lcuda\n',
    "#include <cudaTypedefs.h>\n"
    "namespace cutlass {\n"
    "template <class... A>\n"
    "CUresult call_cuTensorMapEncodeTiled(A... a) {\n"
    "  void* fn = nullptr;\n"
    "  cudaDriverEntryPointQueryResult found;\n"
    "  cudaGetDriverEntryPointByVersion(\"cuTensorMapEncodeTiled\", &fn, 12000, cudaEnableDefault, &found);\n"
    "  return fn ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)(a...) : CUDA_ERROR_NOT_FOUND;\n"
    "}\n"
    "}  // namespace cutlass\n")
NO_SUMS = ("    head_sums_selected(acc, w, t_out, q_out, total);\n",
           "    total[0] = acc[0][0];\n    total[1] = acc[1][2];\n")
NO_PRODUCTS = ("    issue_pair_products<kElemBytes>(acc, sm.keys, sm.q[stage], wg);\n",
               "    fence_registers(acc[0]), fence_registers(acc[1]);\n")
CUTS = {"whole": [], "products, no sums": [NO_SUMS], "sums, no products": [NO_PRODUCTS],
        "neither": [NO_SUMS, NO_PRODUCTS]}

DRIVER = r"""
#include <cstdio>
#include <cstdlib>
using namespace lcattn;
// Finite values from a hash of the index: bf16 in [-1, 1) (truncated floats), e4m3 any byte but NaN,
// weights in [-0.01, 0.01), key scales in [1, 2).
__global__ void fill(void* x, int64_t n, uint32_t seed, int kind) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = (uint32_t(i) ^ uint32_t(i >> 32) * 0x9E3779B9u) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    const float u = float(h & 0xFFFFFF) / float(1 << 24) * 2.f - 1.f;
    if (kind == 0) static_cast<uint16_t*>(x)[i] = uint16_t(__float_as_uint(u) >> 16);
    if (kind == 1) static_cast<uint8_t*>(x)[i] = (h & 0x7F) == 0x7F ? 0 : uint8_t(h);
    if (kind == 2) static_cast<float*>(x)[i] = 0.01f * u;
    if (kind == 3) static_cast<float*>(x)[i] = 1.5f + 0.5f * u;
  }
}
int main(int argc, char** argv) {
  const int S = atoi(argv[1]), N = atoi(argv[2]), H = 64, D = 128, reps = 10;
  const int q0 = 4 * N - S;
  void *q16, *q8, *k16, *k8, *w, *ks;
  float* scores;
  int* q_start;
  cudaMalloc(&q16, int64_t(S) * H * D * 2), cudaMalloc(&q8, int64_t(S) * H * D);
  cudaMalloc(&k16, int64_t(N) * D * 2), cudaMalloc(&k8, int64_t(N) * D);
  cudaMalloc(&w, int64_t(S) * H * 4), cudaMalloc(&ks, int64_t(N) * 4);
  cudaMalloc(&scores, int64_t(S) * N * 4), cudaMalloc(&q_start, 4);
  cudaMemcpy(q_start, &q0, 4, cudaMemcpyHostToDevice);
  fill<<<1024, 256>>>(q16, int64_t(S) * H * D, 1, 0), fill<<<1024, 256>>>(q8, int64_t(S) * H * D, 2, 1);
  fill<<<1024, 256>>>(k16, int64_t(N) * D, 3, 0), fill<<<1024, 256>>>(k8, int64_t(N) * D, 4, 1);
  fill<<<1024, 256>>>(w, int64_t(S) * H, 5, 2), fill<<<1024, 256>>>(ks, N, 6, 3);
  // The pairs of query rows the CTAs score (the kernel's s_first and pairs).
  int64_t pairs = 0;
  for (int n0 = 0; n0 < N; n0 += 256)
    for (int s0 = 0; s0 < S; s0 += 256) {
      const int s_hi = s0 + 256 < S ? s0 + 256 : S;
      int64_t first = int64_t(4) * (n0 + 1) - 1 - q0;
      first = first < s0 ? s0 : first > s_hi ? s_hi : first;
      pairs += (s_hi - first + 1) / 2;
    }
  int sms, khz;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0);
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  for (int e4m3 = 0; e4m3 < 2; ++e4m3) {
    IndexerParams p{};
    p.weights = static_cast<const float*>(w), p.q_start = q_start, p.scores = scores;
    if (e4m3)
      p.q_e4m3 = static_cast<const uint8_t*>(q8), p.keys_e4m3 = static_cast<const uint8_t*>(k8),
      p.key_scales = static_cast<const float*>(ks);
    else
      p.q = static_cast<const uint16_t*>(q16), p.keys = static_cast<const uint16_t*>(k16);
    p.B = 1, p.S = S, p.HI = H, p.DI = D, p.N = N, p.ratio = 4, p.row_begin = 0, p.row_end = S;
    for (int i = 0; i < 3; ++i) indexer_scores_sm90(p, 0);
    cudaEventRecord(a);
    for (int i = 0; i < reps; ++i) indexer_scores_sm90(p, 0);
    cudaEventRecord(b);
    if (cudaEventSynchronize(b) != cudaSuccess || cudaGetLastError() != cudaSuccess) return 1;
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    ms /= reps;
    const double ns = ms * 1e6 * sms / double(pairs);
    printf("%s %.3f ms, %.0f ns a pair, %.0f cycles at %d MHz\n", e4m3 ? "e4m3" : "bf16", ms, ns, ns * khz * 1e-6,
           khz / 1000);
  }
  return 0;
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--entries", type=int, default=32768)
    parser.add_argument("--setting", action="append", default=[], metavar='"NAME=VALUE ..."',
                        help="time each build with these switches set (repeatable; default: as the environment is)")
    args = parser.parse_args()
    settings = [parse_setting(text) for text in args.setting] or [{}]
    with tempfile.TemporaryDirectory() as tmp:
        def make(item):
            index, (name, cuts) = item
            source = instrumented_source("indexer_sm90.cu", [DRIVER_CALL, *cuts], "", DRIVER)
            return build(f"indexer_parts_{index}", source, tmp)
        with ThreadPoolExecutor(len(CUTS)) as pool:  # the builds at once, the runs one at a time
            exes = list(pool.map(make, enumerate(CUTS.items())))
        for name, exe in zip(CUTS, exes):
            for text, out in zip(args.setting or [""], run(exe, [args.queries, args.entries], settings)):
                print(f"{name} (S = {args.queries}, N = {args.entries}{', ' + text if text else ''}):")
                for line in out.splitlines():
                    print("  " + line)


if __name__ == "__main__":
    main()
