"""Where a Hopper sparse-attention CTA's time goes: builds csrc/kernels/attention_sm90.cu with a
%globaltimer stamp at each phase of every CTA (one thread each, no barrier added) and a small driver,
runs a V4-Flash prefill chunk (64 heads, head dim 512, a 128-token window, top-k entries of a
32,768-entry pool, bf16) at each top-k given, and prints each phase's mean time per CTA, the gap from
a CTA's end to the start of the next CTA on its SM, and the fit a + b x blocks over the top-k values.
On a GPU machine, from the repository root:

    python bench/python/attention_phases.py [--tokens 4096] [--topk 512,128]
    python bench/python/attention_phases.py --batch 64 --tokens 1 [--cold]     (decode: a pool per sequence)
    python bench/python/attention_phases.py --pair     (version 6, attention_sm90_pair.cu: stamps per pair)
    python bench/python/attention_phases.py --pair --setting "LCATTN_ATTN_STAGED_OUT=1"   (one build, timed
        as the environment is, then with each --setting's switches set)
    python bench/python/attention_phases.py --pair --kv-fp8   (entries in the kv_fp8 form: version 6's
        kPairFp8 form, LCATTN_ATTN_FP8_PAIR=1; version 4, their default, has no per-block stamps)

Needs nvcc. The stamps go in by matching lines of the kernel's source: an edit there that moves one
of them is an error here, to be mended in PROBES. Stamps (slot: thread, where): 0: 0, entry;
1: 0, after the set-up barrier (mbarriers; the RoPE table too by dims; by keys and in version 6 it
is in 2); 2: 0, Q
arrived; 3: 0, first block arrived;
4: 0, last block's P.V done; 5: 0, its output stores issued; 8: 256 (producer), Q's copies issued;
9: 256, the first block's copies issued. Slot 6 holds the SM, slot 7 the CTA's blocks, 10 and 11
the SM's clock at stamps 0 and 5. Per block (thread 0, version 7's schedule, the default for bf16
decode and for prefill of fewer than 8 key blocks, in SM clock cycles turned into us by the
clock's rate against the timer over the CTA;
blocks followed by another): its keys arrived, its logits done, the maxima exchanged, P in the
tile, its P.V done, the next block's keys arrived; with --pair per pair of blocks (PAIR_PROBES). The
driver sets LCATTN_ATTN_PAIR to 1 for --pair, else to 0, and clears LCATTN_ATTN_SCHEDULE (other
kernels, or no per-block stamps); LCATTN_ATTN_STAGED_OUT=0 in the
environment times the kernel with 4-byte output stores (by keys and in version 6, O goes out through
shared memory).
"""
import argparse

from phase_probe import STAMP, build_and_run, instrumented_source, parse_setting

PROBES = [
    ("namespace lcattn {\nnamespace {\n",
     "namespace lcattn {\n"
     "__device__ unsigned long long g_stamps[kProbeCtas * kSlots];\n"
     + STAMP +
     "__device__ __forceinline__ unsigned sm_id() {\n"
     "  unsigned s;\n"
     "  asm volatile(\"mov.u32 %0, %smid;\" : \"=r\"(s));\n"
     "  return s;\n"
     "}\n"
     "#define PUT(i, thread, value) do { if (threadIdx.x == (thread) && blockIdx.x < kProbeCtas) "
     "g_stamps[blockIdx.x * kSlots + (i)] = (value); } while (0)\n"
     "#define PROBE(i, thread) PUT(i, thread, stamp())\n"
     "__device__ unsigned long long g_block_stamps[kProbeCtas * kBlockSlots * 5];\n"
     "#define BLOCK_PROBE(it, point) do { if (threadIdx.x == 0 && blockIdx.x < kProbeCtas && (it) < kBlockSlots) "
     "g_block_stamps[(blockIdx.x * kBlockSlots + (it)) * 5 + (point)] = clock64(); } while (0)\n"
     "namespace {\n"),
    ("  const CtaWork work(p);\n",
     "  PROBE(0, 0);\n  PUT(10, 0, clock64());\n  PUT(6, 0, sm_id());\n  const CtaWork work(p);\n"),
    ("  else\n    __syncthreads();\n",
     "  else\n    __syncthreads();\n  PROBE(1, 0);\n"
     "  PUT(7, 0, (unsigned long long)(range.last - range.first));\n"),
    ("    load_tile(sm.q, warp, lane, q + my_row * kDim, q, nullptr);  // q: any valid address for zero fills\n",
     "    load_tile(sm.q, warp, lane, q + my_row * kDim, q, nullptr);  // q: any valid address for zero fills\n"
     "    PROBE(8, 256);\n"),
    ("      mbar_arrive_cp_async(&sm.full[buf]);\n      if (lane == 0) mbar_arrive(&sm.full[buf]);\n",
     "      mbar_arrive_cp_async(&sm.full[buf]);\n      if (lane == 0) mbar_arrive(&sm.full[buf]);\n"
     "      if (it == 0) PROBE(9, 256);\n"),
    ("  mbar_wait(&sm.q_full, 0);\n  for (int blk = range.first;",
     "  mbar_wait(&sm.q_full, 0);\n  PROBE(2, 0);\n  for (int blk = range.first;"),
    ("    mbar_wait(&sm.full[buf], (it >> 1) & 1);\n",
     "    mbar_wait(&sm.full[buf], (it >> 1) & 1);\n    if (it == 0) PROBE(3, 0);\n    BLOCK_PROBE(it, 0);\n"),
    # Per block, version 7 (the logits by keys): logits done, maxima exchanged, P in the tile, P.V done.
    ("      wgmma_commit();\n      wgmma_wait<0>();\n      fence_registers(s);\n",
     "      wgmma_commit();\n      wgmma_wait<0>();\n      fence_registers(s);\n      BLOCK_PROBE(it, 1);\n"),
    ("      named_barrier_sync(kBarLogits, 256);\n      const float2 theirs = sm.split.row_stat[1 - wg][tid];\n",
     "      named_barrier_sync(kBarLogits, 256);\n      BLOCK_PROBE(it, 2);\n"
     "      const float2 theirs = sm.split.row_stat[1 - wg][tid];\n"),
    ("      named_barrier_sync(kBarRead, 256);  // both halves of P are in the tile\n",
     "      named_barrier_sync(kBarRead, 256);  // both halves of P are in the tile\n      BLOCK_PROBE(it, 3);\n"),
    ("    wgmma_commit();\n    wgmma_wait<0>();\n    fence_registers(o);\n    mbar_arrive(&sm.empty[buf]);\n",
     "    wgmma_commit();\n    wgmma_wait<0>();\n    fence_registers(o);\n    BLOCK_PROBE(it, 4);\n"
     "    mbar_arrive(&sm.empty[buf]);\n"),
    ("  // Row sums over the quad.\n", "  PROBE(4, 0);\n  // Row sums over the quad.\n"),
    ("             wg == 0 && lane % 4 == 0, sm.unrotate);\n",
     "             wg == 0 && lane % 4 == 0, sm.unrotate);\n  PROBE(5, 0);\n  PUT(11, 0, clock64());\n"),
    ("kBarWidened + wg);\n      return;\n",
     "kBarWidened + wg);\n      PROBE(5, 0);\n      PUT(11, 0, clock64());\n      return;\n"),
]

# Version 6 (attention_sm90_pair.cu, --pair): the same CTA stamps (3: the first pair's logits done), and
# per pair (thread 0, math warpgroup 0): block 2i's logits done, its softmax done (maximum published),
# its own P.V done, WG1's pair maximum arrived, WG1's P arrived; the next pair's logits done.
PAIR_PROBES = [
    PROBES[0], PROBES[1],
    ("    fence_barrier_init();\n  }\n  __syncthreads();\n",
     "    fence_barrier_init();\n  }\n  __syncthreads();\n  PROBE(1, 0);\n"
     "  PUT(7, 0, (unsigned long long)(range.last - range.first));\n"),
    ("    load_tile(sm.q, warp, lane, q + (warp * 16 + lane % 16) * kDim, q, nullptr);  // q: any valid address\n",
     "    load_tile(sm.q, warp, lane, q + (warp * 16 + lane % 16) * kDim, q, nullptr);  // q: any valid address\n"
     "    PROBE(8, 256);\n"),
    ("        mbar_arrive_cp_async(&sm.full[w][h]);\n",
     "        mbar_arrive_cp_async(&sm.full[w][h]);\n        if (it == 0 && step == 0) PROBE(9, 256);\n"),
    ("          mbar_arrive_cp_async(&sm.staged[w][h]);\n",  # kPairFp8: the copier's arrival
     "          mbar_arrive_cp_async(&sm.staged[w][h]);\n          if (it == 0 && step == 0) PROBE(9, 256);\n"),
    ("  mbar_wait(&sm.q_full, 0);\n  if (wg == 0) {\n",
     "  mbar_wait(&sm.q_full, 0);\n  PROBE(2, 0);\n  if (wg == 0) {\n"),
    ("      issue_logits_half<kKeyFence>(sacc, sm, 0, 1, 0, false);\n      wgmma_wait<0>();\n"
     "      fence_registers(sacc);\n",
     "      issue_logits_half<kKeyFence>(sacc, sm, 0, 1, 0, false);\n      wgmma_wait<0>();\n"
     "      fence_registers(sacc);\n      PROBE(3, 0);\n"),
    ("      // Block 2i's softmax against the running maximum; publish the new maximum to WG1.\n",
     "      BLOCK_PROBE(it, 0);\n"),
    ("      named_barrier_arrive(kBarMax0, 256);\n",
     "      BLOCK_PROBE(it, 1);\n      named_barrier_arrive(kBarMax0, 256);\n"),
    ("      mbar_arrive(&sm.empty[0][0]);\n", "      mbar_arrive(&sm.empty[0][0]);\n      BLOCK_PROBE(it, 2);\n"),
    ("      named_barrier_sync(kBarMax1, 256);\n",
     "      named_barrier_sync(kBarMax1, 256);\n      BLOCK_PROBE(it, 3);\n"),
    ("      named_barrier_sync(kBarP1, 256);\n", "      named_barrier_sync(kBarP1, 256);\n      BLOCK_PROBE(it, 4);\n"),
    ("  // The row sums: over the quad, then both warpgroups' added in one order (both hold the same).\n",
     "  PROBE(4, 0);\n"
     "  // The row sums: over the quad, then both warpgroups' added in one order (both hold the same).\n"),
    PROBES[-2],
    ("kBarStaged + wg);\n      return;\n",
     "kBarStaged + wg);\n      PROBE(5, 0);\n      PUT(11, 0, clock64());\n      return;\n"),
]

DRIVER = r"""
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
using namespace lcattn;

__device__ uint32_t mix(int64_t i, uint32_t seed) {
  uint32_t h = uint32_t(i) * 2654435761u ^ seed;
  h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
  return h;
}

__global__ void fill_random(bf16* x, int64_t n, uint32_t seed) {  // uniform in [-1, 1)
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = float_to_bf16(float(mix(i, seed) >> 8) / 8388608.f - 1.f);  // bf16 is the bits (uint16_t)
}

// n kv_fp8 entries (KvFp8Layout l): e4m3 bytes without NaN (bit 3 clear: exponent below 15), RoPE
// values uniform in [-1, 1), every scale 2^-4.
__global__ void fill_kv_fp8(uint8_t* x, int64_t n, KvFp8Layout l, uint32_t seed) {
  const int bytes = l.bytes();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * bytes;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int b = int(i % bytes);
    if (b < l.nope())
      x[i] = uint8_t(mix(i, seed) & 0xf7u);
    else if (b < l.scale_offset() && b % 2 == 0)
      *reinterpret_cast<bf16*>(x + i) = float_to_bf16(float(mix(i, seed) >> 8) / 8388608.f - 1.f);
    else if (b >= l.scale_offset())
      x[i] = 127 - 4;
  }
}

template <typename T>
T* device_copy(const std::vector<T>& h) {
  T* d;
  cudaMalloc(&d, h.size() * sizeof(T));
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

// The inputs of the driver's flash cases (bench/python/cases/attention.py): B sequences of S tokens
// ending at position 131,071 (prefill: B = 1; decode: S = 1), a window of 128 raw rows, K entries a
// token drawn without repeats from its sequence's pool of 32,768, random sinks, RoPE base 160,000.
int main(int argc, char** argv) {
  // The stamped kernel: version 6 (attention_sm90_pair.cu) with kPair (its kPairFp8 form with kKvFp8),
  // else attention_sm90.cu's by keys.
  setenv("LCATTN_ATTN_PAIR", kPair ? "1" : "0", 1);
  setenv("LCATTN_ATTN_FP8_PAIR", kPair && kKvFp8 ? "1" : "0", 1);
  unsetenv("LCATTN_ATTN_SCHEDULE");
  const int B = atoi(argv[1]), S = atoi(argv[2]), cold = atoi(argv[3]), reps = 20, H = 64, D = 512, N = 32768;
  const int rope = 64, window = 128;
  const int L = S + window - 1, q_start = 131072 - S, kv_start = q_start - (window - 1);
  bf16 *q, *kv, *ckv = nullptr, *out;
  uint8_t* ckv8 = nullptr;
  float* lse;
  cudaMalloc(&q, size_t(B) * S * H * D * 2);
  cudaMalloc(&kv, size_t(B) * L * D * 2);
  const KvFp8Layout layout{D, rope};
  if (kKvFp8)
    cudaMalloc(&ckv8, size_t(B) * N * layout.bytes());
  else
    cudaMalloc(&ckv, size_t(B) * N * D * 2);
  cudaMalloc(&out, size_t(B) * S * H * D * 2);
  cudaMalloc(&lse, size_t(B) * S * H * 4);
  fill_random<<<1024, 256>>>(q, int64_t(B) * S * H * D, 1u);
  fill_random<<<1024, 256>>>(kv, int64_t(B) * L * D, 2u);
  if (kKvFp8)
    fill_kv_fp8<<<1024, 256>>>(ckv8, int64_t(B) * N, layout, 3u);
  else
    fill_random<<<1024, 256>>>(ckv, int64_t(B) * N * D, 3u);
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  std::vector<float> inv_freq(rope / 2), sink(H);
  for (int i = 0; i < rope / 2; ++i) inv_freq[i] = std::pow(160000.f, -2.f * i / rope);
  for (float& x : sink) x = normal(gen);
  int* d_q_start = device_copy(std::vector<int>(B, q_start));
  int* d_kv_start = device_copy(std::vector<int>(B, kv_start));
  float* d_inv_freq = device_copy(inv_freq);
  float* d_sink = device_copy(sink);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<int> pool(N);
  for (int i = 0; i < N; ++i) pool[i] = i;
  // cold: before each timed call, writing 256 MB moves the rows out of L2 (each call's events time it alone).
  void* flush = nullptr;
  if (cold) cudaMalloc(&flush, size_t(256) << 20);
  for (int arg = 4; arg < argc; ++arg) {
    const int K = atoi(argv[arg]);
    std::vector<int> idx(size_t(B) * S * K);
    for (int s = 0; s < B * S; ++s)  // K distinct entries a token: a partial shuffle of the pool
      for (int j = 0; j < K; ++j) {
        std::swap(pool[j], pool[j + int(gen() % uint32_t(N - j))]);
        idx[size_t(s) * K + j] = pool[j];
      }
    int* d_idx = device_copy(idx);
    AttentionParams p{};
    p.q = q, p.kv = kv, p.kv_start = d_kv_start, p.q_start = d_q_start, p.ckv = ckv, p.ckv_fp8 = ckv8;
    p.indices = d_idx;
    p.sink = d_sink, p.inv_freq = d_inv_freq, p.out = out, p.lse = lse;
    p.B = B, p.S = S, p.H = H, p.D = D, p.L = L, p.N = N, p.K = K, p.window = window, p.ratio = 4, p.rope_dim = rope;
    p.splits = 1, p.scale = 1.f / std::sqrt(float(D));
    for (int it = 0; it < 10; ++it)
      if (attention_sm90(p, 0) != cudaSuccess) return 1;
    float ms = 0.f;
    for (int it = 0; it < (cold ? reps : 1); ++it) {
      if (cold) cudaMemsetAsync(flush, it, size_t(256) << 20, 0);
      cudaEventRecord(a);
      for (int call = 0; call < (cold ? 1 : reps); ++call) attention_sm90(p, 0);
      cudaEventRecord(b);
      if (cudaEventSynchronize(b) != cudaSuccess || cudaGetLastError() != cudaSuccess) return 1;
      float t;
      cudaEventElapsedTime(&t, a, b);
      ms += t;
    }
    const int all = B * S * H / 64, ctas = std::min(all, kProbeCtas);  // CTAs, and those with stamps
    std::vector<unsigned long long> st(size_t(kProbeCtas) * kSlots);
    cudaMemcpyFromSymbol(st.data(), g_stamps, st.size() * 8);
    double sum[kSlots] = {0}, blocks = 0, gap = 0, cycles = 0, ns = 0;
    int gaps = 0, sms = 0;
    for (int c = 0; c < ctas; ++c) {
      const unsigned long long* s = &st[size_t(c) * kSlots];
      for (int i = 1; i <= 5; ++i) sum[i] += double(s[i] - s[i - 1]);
      sum[8] += double(s[8] - s[0]), sum[9] += double(s[9] - s[0]);
      blocks += double(s[7]);
      cycles += double(s[11] - s[10]), ns += double(s[5] - s[0]);  // the SM's clock against the timer
      sms = std::max(sms, int(s[6]) + 1);
    }
    // Per SM, the CTAs in order of their start: the gap from one's stores issued to the next one's entry.
    std::vector<std::vector<std::pair<unsigned long long, unsigned long long>>> per_sm(sms);
    for (int c = 0; c < ctas; ++c) {
      const unsigned long long* s = &st[size_t(c) * kSlots];
      per_sm[s[6]].push_back({s[0], s[5]});
    }
    for (auto& v : per_sm) {
      std::sort(v.begin(), v.end());
      for (size_t i = 1; i < v.size(); ++i) gap += double(v[i].first) - double(v[i - 1].second), ++gaps;
    }
    const double per_block = sum[4] / std::max(blocks, 1.0);
    // Per block (stamps of thread 0, math warpgroup 0): keys arrived -> logits -> maxima barrier -> P barrier
    // -> P.V done -> the next block's keys arrived.
    std::vector<unsigned long long> bs(size_t(kProbeCtas) * kBlockSlots * 5);
    cudaMemcpyFromSymbol(bs.data(), g_block_stamps, bs.size() * 8);
    double part[5] = {0};
    long counted = 0;
    for (int c = 0; c < ctas; ++c) {
      const int n = std::min<int>((int(st[size_t(c) * kSlots + 7]) + kBlocksAStep - 1) / kBlocksAStep, kBlockSlots);
      for (int it = 0; it + 1 < n; ++it) {  // steps (blocks or pairs) followed by another: all five parts
        const unsigned long long* x = &bs[(size_t(c) * kBlockSlots + it) * 5];
        for (int i = 0; i < 4; ++i) part[i] += double(x[i + 1] - x[i]);
        part[4] += double(x[5] - x[4]);  // x[5]: the next block's arrival (cycles, all five)
        ++counted;
      }
    }
    const double us_per_cycle = ns / cycles / 1e3;
    // A CTA's slot: the call's time per wave of one CTA an SM (the call's time when the CTAs are fewer).
    const double slot = ms / reps * 1e3 * sms / std::max(sms, all);
    printf("top-k %d: %.3f ms a call (%d x %d tokens, %d CTAs on %d SMs, %.1f blocks a CTA, SM clock %.0f MHz), "
           "%.2f us a CTA's slot\n",
           K, ms / reps, B, S, all, sms, blocks / ctas, 1.0 / us_per_cycle, slot);
    printf("  1 %.3f\n  2 %.3f\n  3 %.3f\n  4 %.3f %.3f\n  5 %.3f\n  6 %.3f\n  8 %.3f\n  9 %.3f\n", sum[1] / ctas / 1e3,
           sum[2] / ctas / 1e3, sum[3] / ctas / 1e3, sum[4] / ctas / 1e3, per_block / 1e3, sum[5] / ctas / 1e3,
           gaps ? gap / gaps / 1e3 : 0.0, sum[8] / ctas / 1e3, sum[9] / ctas / 1e3);
    if (counted)
      for (int i = 0; i < 5; ++i) printf("  %d %.3f\n", 11 + i, part[i] / counted * us_per_cycle);
    printf("  blocks %.2f\n", blocks / ctas);
    cudaFree(d_idx);
  }
  return 0;
}
"""

HEAD = ("constexpr int kProbeCtas = 16384, kSlots = 12;  // CTAs whose stamps are kept, slots a CTA\n"
        "constexpr int kBlockSlots = 32;  // steps (blocks or pairs) a CTA whose stamps are kept\n")

PHASES = {1: "set-up (barriers, RoPE table)", 2: "Q's wait", 3: "first block's wait", 4: "blocks",
          5: "epilogue (stores issued)", 6: "gap to the SM's next CTA", 8: "producer: Q issued at",
          9: "producer: block 0 issued at", 11: "a block: logits", 12: "a block: maxima barrier",
          13: "a block: exp2, P, barrier", 14: "a block: P.V", 15: "a block: next keys' wait"}
PAIR_PHASES = {**PHASES, 3: "first pair's logits done", 9: "producer: pair 0's first half issued at",
               11: "a pair: WG0's softmax", 12: "a pair: WG0's own P.V",
               13: "a pair: WG1's maximum's wait", 14: "a pair: P0 out, O rescaled, WG1's P's wait",
               15: "a pair: other P.V, next logits"}


def report(out: str, phases: dict) -> None:
    """Prints the driver's output with the phases named, and the fit a + b x blocks of a CTA's slot."""
    fit = []  # [blocks a CTA, us a CTA's slot] per top-k
    for line in out.splitlines():
        fields = line.split()
        if line.startswith("top-k"):
            print(line)
            fit.append([0.0, float(line.rsplit(", ", 1)[1].split()[0])])
        elif fields[0] == "blocks":
            fit[-1][0] = float(fields[1])
        else:  # "  slot us [us a block]"
            extra = f" ({fields[2]} us a block)" if len(fields) == 3 else ""
            print(f"  {phases[int(fields[0])]:<32} {fields[1]} us{extra}")
    if len(fit) >= 2 and fit[0][0] != fit[-1][0]:
        (x0, y0), (x1, y1) = fit[0], fit[-1]
        b = (y1 - y0) / (x1 - x0)
        print(f"fit of a CTA's slot: a = {y0 - b * x0:.2f} us, b = {b:.3f} us a block")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens a sequence")
    parser.add_argument("--batch", type=int, default=1, help="sequences, each with its own pool (decode: --tokens 1)")
    parser.add_argument("--cold", action="store_true", help="rows out of L2 before each call (a decode step's picks "
                        "change; the driver's graph replays reuse them)")
    parser.add_argument("--topk", default="512,128", help="comma list of top-k values (entries a query)")
    parser.add_argument("--pair", action="store_true", help="version 6 (attention_sm90_pair.cu), stamps per pair")
    parser.add_argument("--kv-fp8", action="store_true", help="entries in the kv_fp8 form (with --pair: kPairFp8)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE ...",
                        help="also time the build with these switches set (repeatable; one build for all)")
    args = parser.parse_args()
    if args.kv_fp8 and not args.pair:
        parser.error("--kv-fp8 stamps version 6's kPairFp8 form: give --pair too")
    settings = [{}] + [parse_setting(text) for text in args.setting]
    topks = [int(k) for k in args.topk.split(",")]
    head = HEAD + (f"constexpr bool kPair = {str(args.pair).lower()};\nconstexpr int kBlocksAStep = {1 + args.pair};\n"
                   f"constexpr bool kKvFp8 = {str(args.kv_fp8).lower()};\n")
    kernel, other = ("attention_sm90_pair.cu", "attention_sm90.cu") if args.pair else \
        ("attention_sm90.cu", "attention_sm90_pair.cu")
    source = instrumented_source(kernel, PAIR_PROBES if args.pair else PROBES, head, DRIVER)
    outs = build_and_run("attention_phases", source, [args.batch, args.tokens, int(args.cold), *topks],
                         sources=[other], settings=settings)
    for setting, out in zip(settings, outs):
        if len(settings) > 1:
            print("setting: " + (" ".join(f"{k}={v}" for k, v in setting.items()) or "as the environment is"))
        report(out, PAIR_PHASES if args.pair else PHASES)


if __name__ == "__main__":
    main()
