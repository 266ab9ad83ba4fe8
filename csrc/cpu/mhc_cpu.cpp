// The mHC mixing matrices (SPEC 7) on the CPU.
#include <algorithm>

#include "lcattn/api.h"
#include "lcattn/shared_math.h"
#include "parallel.h"

namespace lcattn {

void hc_sinkhorn_cpu(const SinkhornParams& p) {
  constexpr int64_t kChunk = 256;  // matrices per task: each is a few hundred flops
  parallel_for((p.M + kChunk - 1) / kChunk, [&](int64_t c) {
    for (int64_t m = c * kChunk; m < std::min(p.M, (c + 1) * kChunk); ++m) hc_sinkhorn(p, m);
  });
}

}  // namespace lcattn
