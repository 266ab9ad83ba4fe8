"""Where the one-read top-k's time goes: builds csrc/kernels/topk_stream.cu with a %globaltimer stamp
at each phase of every CTA (thread 0, after a barrier; the stamps' barriers add a little time) and a
small driver, runs R rows of N normal scores with and without the first bound, and prints each
phase's mean time per CTA and per merging CTA. On a GPU machine, from the repository root:

    python bench/python/topk_phases.py [--rows 64] [--entries 262144] [--k 512]

Needs nvcc. The stamps go in by matching lines of the kernel's source: an edit there that moves one
of them is an error here, to be mended in PROBES.
"""
import argparse

from phase_probe import STAMP, build_and_run, instrumented_source

# (line of topk_stream.cu, what it becomes): stamp i of a CTA is taken where PROBE(i) stands.
PROBES = [
    ("namespace lcattn {\nnamespace {",
     "namespace lcattn {\n"
     "__device__ unsigned long long g_stamps[kProbeCtas * 16];\n"
     "__device__ int g_cuts[kProbeCtas];\n"
     + STAMP +
     "__device__ __forceinline__ int probe_cta() { return blockIdx.x * gridDim.y + blockIdx.y; }\n"
     "#define PROBE(i) do { __syncthreads(); if (threadIdx.x == 0 && probe_cta() < kProbeCtas) "
     "g_stamps[probe_cta() * 16 + (i)] = stamp(); } while (0)\n"
     "namespace {"),
    ("  const float* scores = p.scores + int64_t(row) * p.N;\n",
     "  const float* scores = p.scores + int64_t(row) * p.N;\n  PROBE(0);\n"),
    ("    if (n > kCap - kTile) threshold = max(threshold, topk_composite_key(cut(buffer, n, p.k, hist, state, "
     "count)));\n",
     "    if (tile == tile_begin) PROBE(1);\n"
     "    if (n > kCap - kTile) {\n"
     "      threshold = max(threshold, topk_composite_key(cut(buffer, n, p.k, hist, state, count)));\n"
     "      if (t == 0 && probe_cta() < kProbeCtas) ++g_cuts[probe_cta()];\n"
     "    }\n"
     "    if (tile == tile_begin) PROBE(2);\n"),
    ("  int n = *count;  // after the last tile's barriers\n",
     "  int n = *count;  // after the last tile's barriers\n  PROBE(3);\n"),
    ("    n = p.k;\n  }\n", "    n = p.k;\n  }\n  PROBE(4);\n"),
    ("  if (ints[5] != l.parts - 1) return;  // the same for the whole block\n",
     "  if (ints[5] != l.parts - 1) return;  // the same for the whole block\n  PROBE(5);\n"),
    ("  __syncthreads();\n  write_best(buffer, total", "  __syncthreads();\n  PROBE(6);\n  write_best(buffer, total"),
    ("  const uint64_t kth = n > k ? kth_in_buffer(buffer, n, k, hist, state) : 1;\n",
     "  const uint64_t kth = n > k ? kth_in_buffer(buffer, n, k, hist, state) : 1;\n  PROBE(7);\n"),
    ("  const int m = *picks;  // min(n, k)\n", "  PROBE(8);\n  const int m = *picks;  // min(n, k)\n"),
    ("  write_best(buffer, total, p.k, p.N, sorted, hist, state, ints + 4, out);\n}",
     "  write_best(buffer, total, p.k, p.N, sorted, hist, state, ints + 4, out);\n  PROBE(9);\n}"),
]

HEAD = "constexpr int kProbeCtas = 1024;  // CTAs whose stamps are kept\n"

# Phase i runs from stamp i - 1 to stamp i; those from the ticket on are the merging CTA's.
PHASES = ["first tile", "its cut", "tiles after", "part's cut and write", "ticket", "parts' loads", "select",
          "gather", "ordered write"]

DRIVER = r"""
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
using namespace lcattn;
int main(int argc, char** argv) {
  const int R = atoi(argv[1]), N = atoi(argv[2]), k = atoi(argv[3]), sets = 4, reps = 40;
  std::vector<float> h(size_t(R) * N);
  std::mt19937 gen(1);
  std::normal_distribution<float> normal;
  for (float& x : h) x = normal(gen);
  float* scores;
  int* indices;
  void* workspace;
  cudaMalloc(&scores, h.size() * 4 * sets);
  cudaMalloc(&indices, size_t(R) * k * 4);
  for (int i = 0; i < sets; ++i) cudaMemcpy(scores + i * h.size(), h.data(), h.size() * 4, cudaMemcpyHostToDevice);
  TopkParams p{};
  p.indices = indices, p.R = R, p.N = N, p.k = k;
  cudaMalloc(&workspace, topk_stream_workspace_bytes(p));
  p.split_workspace = workspace;
  const int parts = parts_of(p), ctas = std::min(R * parts, kProbeCtas);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (const char* bound : {"0", "1"}) {
    setenv("LCATTN_TOPK_FIRST_BOUND", bound, 1);
    for (int it = 0; it < 200; ++it) p.scores = scores + (it % sets) * h.size(), topk_stream_cuda(p, 0);
    std::vector<unsigned long long> stamps(kProbeCtas * 16, 0);
    std::vector<int> cuts(kProbeCtas, 0);
    cudaMemcpyToSymbol(g_stamps, stamps.data(), stamps.size() * 8);
    cudaMemcpyToSymbol(g_cuts, cuts.data(), cuts.size() * 4);
    cudaEventRecord(a);
    for (int it = 0; it < reps; ++it) p.scores = scores + (it % sets) * h.size(), topk_stream_cuda(p, 0);
    cudaEventRecord(b);
    if (cudaEventSynchronize(b) != cudaSuccess) return 1;
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    cudaMemcpyFromSymbol(stamps.data(), g_stamps, stamps.size() * 8);
    cudaMemcpyFromSymbol(cuts.data(), g_cuts, cuts.size() * 4);
    // The last call's stamps; a merging CTA's stamp 5 is newer than its stamp 4 (older calls' are not).
    double sum[16] = {0}, cut_sum = 0;
    int merges = 0;
    for (int c = 0; c < ctas; ++c) {
      const unsigned long long* s = &stamps[c * 16];
      for (int i = 1; i <= 4; ++i) sum[i] += double(s[i] - s[i - 1]);
      cut_sum += cuts[c];
      if (s[5] > s[4]) {
        for (int i = 5; i <= 9; ++i) sum[i] += double(s[i] - s[i - 1]);
        ++merges;
      }
    }
    printf("bound %s: %.1f us a call (%d rows x %d, k %d, %d parts a row), cuts in the stream %.2f a CTA\n", bound,
           ms * 1e3 / reps, R, N, k, parts, cut_sum / ctas / reps);
    for (int i = 1; i <= 9; ++i) {
      const int of = i <= 4 ? ctas : merges;
      if (of > 0) printf("  %d %.2f\n", i, sum[i] / of / 1e3);
    }
  }
  return 0;
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--entries", type=int, default=262144)
    parser.add_argument("--k", type=int, default=512)
    args = parser.parse_args()
    source = instrumented_source("topk_stream.cu", PROBES, HEAD, DRIVER)
    out = build_and_run("topk_phases", source, [args.rows, args.entries, args.k])[0]
    for line in out.splitlines():  # "  i us" lines name their phase
        fields = line.split()
        if line.startswith("  ") and len(fields) == 2:
            name = PHASES[int(fields[0]) - 1]
            print(f"  {name:<22} {fields[1]} us a {'CTA' if int(fields[0]) <= 4 else 'merging CTA'}")
        else:
            print(line)


if __name__ == "__main__":
    main()
