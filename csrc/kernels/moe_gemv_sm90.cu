// The grouped GEMM at decode as a GEMV (Tile::gemv in moe_gemm_sm90.h): y = x w_e^T when each expert
// has a few rows. The weight rows of the experts that have rows, taken in order, are cut into one
// equal share per CTA, whatever the number of experts, so every SM streams the same bytes (CUTLASS's
// 128-feature tiles leave part of the last wave idle, and its masked layout cannot know on the host
// which experts have rows). A producer lane streams the share with bulk copies into a ring of stages
// of whole weight rows; eight consumer warps dot each stage with the expert's x rows in fp32.
#include <algorithm>
#include <cstdint>

#include <cub/block/block_scan.cuh>

#include "common/device.h"
#include "common/reduce.cuh"
#include "common/sm90.cuh"
#include "lcattn/numeric.h"
#include "moe_gemm_sm90.h"

namespace lcattn::moe_sm90 {
namespace {

constexpr int kConsumerWarps = 8, kConsumers = 32 * kConsumerWarps, kThreads = kConsumers + 32;
constexpr int kStages = 6;
constexpr int kMaxRun = 8;  // weight rows a stage holds at most
constexpr int kTokens = 4;  // x rows dotted with a stage at a time

using ExpertScan = cub::BlockScan<int, kThreads>;

struct GemvShared {
  uint64_t full[kStages], empty[kStages];
  float partial[2][kConsumerWarps][kMaxRun * kTokens];  // per warp, [row][token]; two rounds in turn
  ExpertScan::TempStorage scan;
  int active[kGemvMaxExperts];  // the experts with rows, ascending
};
constexpr int kStagesOffset = (sizeof(GemvShared) + 127) / 128 * 128;
constexpr int kSmemBytes = kStagesOffset + kStages * kGemvStageBytes;

// The 8 bf16 of a 16-byte unit as floats.
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    f[2 * j] = __uint_as_float(words[j] << 16);
    f[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
  }
}

__global__ void __launch_bounds__(kThreads, 1) grouped_gemv_kernel(const GroupedGemmParams p) {
  extern __shared__ __align__(128) uint8_t smem[];
  GemvShared& s = *reinterpret_cast<GemvShared*>(smem);
  uint8_t* const stages = smem + kStagesOffset;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  if (tid == 0) {
    for (int i = 0; i < kStages; ++i) {
      sm90::mbar_init(&s.full[i], 1);   // the producer's arrive, then the copy's bytes
      sm90::mbar_init(&s.empty[i], 1);  // consumer thread 0, once every consumer has read the stage
    }
    sm90::fence_barrier_init();
  }
  // The experts with rows, in order: a block scan of their flags, kThreads experts at a time (the
  // barrier after each also publishes the mbarriers' init).
  int active = 0;
  for (int base = 0; base < p.E; base += kThreads) {
    int64_t begin = 0;
    int rows = 0, before, added;
    if (base + tid < p.E) p.expert_rows(base + tid, begin, rows);
    ExpertScan(s.scan).ExclusiveSum(rows > 0 ? 1 : 0, before, added);
    if (rows > 0) s.active[active + before] = base + tid;
    active += added;
    __syncthreads();
  }
  // This CTA's share [lo, hi) of the active weight rows (row n of the a-th active expert is a N + n),
  // walked in runs of whole rows of one expert, at most a stage each.
  const int64_t total = int64_t(active) * p.N;
  const int64_t lo = total * blockIdx.x / gridDim.x, hi = total * (blockIdx.x + 1) / gridDim.x;
  const int row_bytes = 2 * p.K;
  const int run_max = min(kMaxRun, kGemvStageBytes / row_bytes);  // >= 1: K <= kGemvMaxK
  auto run_at = [&](int64_t at, int& a, int& n) {
    a = int(at / p.N);
    n = int(at - int64_t(a) * p.N);
    return int(std::min<int64_t>(std::min(run_max, p.N - n), hi - at));
  };

  if (warp == kConsumerWarps) {  // producer
    if (lane == 0) {
      int i = 0;
      for (int64_t at = lo; at < hi; ++i) {
        int a, n;
        const int run = run_at(at, a, n), stage = i % kStages;
        if (i >= kStages) sm90::mbar_wait(&s.empty[stage], (i / kStages - 1) & 1);
        const uint32_t bytes = uint32_t(run) * row_bytes;
        sm90::mbar_arrive_expect_tx(&s.full[stage], bytes);
        sm90::bulk_copy_g2s(stages + stage * kGemvStageBytes, p.w + (int64_t(s.active[a]) * p.N + n) * p.K, bytes,
                            &s.full[stage]);
        at += run;
      }
    }
    return;
  }

  // Consumers: thread tid takes the 16-byte units tid, tid + kConsumers, ... of each row.
  const int units = p.K / 8;
  int i = 0, round = 0;
  for (int64_t at = lo; at < hi; ++i) {
    int a, n;
    const int run = run_at(at, a, n), stage = i % kStages;
    int64_t begin;
    int rows;
    p.expert_rows(s.active[a], begin, rows);
    const bf16* x = p.x + begin * p.K;
    const uint8_t* w = stages + stage * kGemvStageBytes;
    sm90::mbar_wait(&s.full[stage], (i / kStages) & 1);
    for (int t0 = 0; t0 < rows; t0 += kTokens, ++round) {
      const int live = min(kTokens, rows - t0);
      float acc[kMaxRun][kTokens] = {};
      for (int u = tid; u < units; u += kConsumers) {
        float xf[kTokens][8];
#pragma unroll
        for (int t = 0; t < kTokens; ++t) {
          uint4 v = make_uint4(0, 0, 0, 0);
          if (t < live) v = __ldg(reinterpret_cast<const uint4*>(x + int64_t(t0 + t) * p.K) + u);
          unpack8(v, xf[t]);
        }
#pragma unroll
        for (int r = 0; r < kMaxRun; ++r) {
          if (r >= run) break;
          float wf[8];
          unpack8(*reinterpret_cast<const uint4*>(w + r * row_bytes + u * 16), wf);
#pragma unroll
          for (int t = 0; t < kTokens; ++t) {
            if (t >= live) break;
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[r][t] = fmaf(wf[j], xf[t][j], acc[r][t]);
          }
        }
      }
      float* part = s.partial[round & 1][warp];
#pragma unroll
      for (int r = 0; r < kMaxRun; ++r) {
#pragma unroll
        for (int t = 0; t < kTokens; ++t) {
          if (r < run && t < live) {
            const float v = warp_sum(acc[r][t]);
            if (lane == 0) part[r * kTokens + t] = v;
          }
        }
      }
      // Every consumer has written its partial sums and read the stage for this round. (A round's
      // buffer is written again two rounds on, after the next barrier, when these sums are read.)
      sm90::named_barrier_sync(1, kConsumers);
      if (tid < run * kTokens && tid % kTokens < live) {
        float sum = 0.f;
        for (int v = 0; v < kConsumerWarps; ++v) sum += s.partial[round & 1][v][tid];
        p.y[(begin + t0 + tid % kTokens) * p.N + n + tid / kTokens] = float_to_bf16(sum);
      }
    }
    if (tid == 0) sm90::mbar_arrive(&s.empty[stage]);
    at += run;
  }

  // Masked layout: rows from counts[e] to M of y are zero; CTA c writes those of experts c, c + grid, ...
  if (p.counts) {
    const int64_t row_units = p.N / 8;
    for (int e = blockIdx.x; e < p.E; e += gridDim.x) {
      int64_t begin;
      int rows;
      p.expert_rows(e, begin, rows);
      for (int64_t u = (begin + rows) * row_units + tid; u < (begin + p.M) * row_units; u += kConsumers)
        reinterpret_cast<uint4*>(p.y)[u] = make_uint4(0, 0, 0, 0);
    }
  }
}

}  // namespace

cudaError_t grouped_gemv(const GroupedGemmParams& p, cudaStream_t stream) {
  static PerDevice<cudaError_t> smem_allowed;
  cudaError_t err = allow_dynamic_smem(smem_allowed, reinterpret_cast<const void*>(grouped_gemv_kernel), kSmemBytes);
  if (err != cudaSuccess) return err;
  // One CTA per SM (the stages take most of its shared memory), or forced_ctas.
  const int sms = std::max(current_device_sm_count(), 1), forced = forced_ctas(1, sms);
  const int ctas = forced > 0 ? forced : sms;
  grouped_gemv_kernel<<<ctas, kThreads, kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace lcattn::moe_sm90
