// The mHC ops (SPEC 7) on the CPU.
#include <algorithm>

#include "lcattn/api.h"
#include "lcattn/shared_math.h"
#include "parallel.h"

namespace lcattn {
namespace {

LCATTN_HD float load(const float* v, int64_t i) { return v[i]; }
LCATTN_HD float load(const bf16* v, int64_t i) { return bf16_to_float(v[i]); }
LCATTN_HD void store(float* v, int64_t i, float x) { v[i] = x; }
LCATTN_HD void store(bf16* v, int64_t i, float x) { v[i] = float_to_bf16(x); }

template <class T>
void hc_mix_tokens(const HcMixParams& p, int64_t t0, int64_t t1) {
  const T* streams = static_cast<const T*>(p.streams);
  const T* out = static_cast<const T*>(p.out);
  T* y = static_cast<T*>(p.y);
  const int n = p.n, m = p.sums(), D = p.D;
  for (int64_t t = t0; t < t1; ++t) {
    const float* post = p.post ? p.post + t * m : nullptr;
    const float* comb = p.comb + t * n * m;
    for (int d = 0; d < D; ++d) {
      float x[kHcMaxStreams];
      for (int i = 0; i < n; ++i) x[i] = load(streams, (t * n + i) * D + d);
      const float o = out ? load(out, t * D + d) : 0.f;
      for (int j = 0; j < m; ++j)
        store(y, (t * m + j) * D + d, hc_mix_element<kHcMaxStreams>(post, comb, n, m, j, o, x));
    }
  }
}

}  // namespace

void hc_sinkhorn_cpu(const SinkhornParams& p) {
  constexpr int64_t kChunk = 256;  // matrices per task: each is a few hundred flops
  parallel_for((p.M + kChunk - 1) / kChunk, [&](int64_t c) {
    for (int64_t m = c * kChunk; m < std::min(p.M, (c + 1) * kChunk); ++m) hc_sinkhorn(p, m);
  });
}

void hc_mix_cpu(const HcMixParams& p) {
  constexpr int64_t kChunk = 16;  // tokens per task
  parallel_for((p.T + kChunk - 1) / kChunk, [&](int64_t c) {
    const int64_t t0 = c * kChunk, t1 = std::min(p.T, t0 + kChunk);
    if (p.bf16_streams)
      hc_mix_tokens<bf16>(p, t0, t1);
    else
      hc_mix_tokens<float>(p, t0, t1);
  });
}

}  // namespace lcattn
