// The sm_90a grouped GEMM configs (moe_gemm_sm90_<name>.cu) and the heuristic that picks one.
#pragma once
#include <cstddef>

#include <cuda_runtime_api.h>

#include "lcattn/params.h"

namespace lcattn::moe_sm90 {

// Each runs y = x w_e^T for every expert (contiguous when p.offsets, masked when p.counts) and needs
// p.workspace of grouped_gemm_workspace_<name>(p) bytes; the <name>_gated configs run p.gated
// problems (SwiGLU in the epilogue). Tiles are (features, rows, K), see the .cuh.
#define LCATTN_GROUPED_GEMM_SM90_DECLARE(name)                                      \
  cudaError_t grouped_gemm_##name(const GroupedGemmParams& p, cudaStream_t stream); \
  size_t grouped_gemm_workspace_##name(const GroupedGemmParams& p);
LCATTN_GROUPED_GEMM_SM90_DECLARE(n32)   // 128 x 32 x 128
LCATTN_GROUPED_GEMM_SM90_DECLARE(n64)   // 256 x 64 x 64
LCATTN_GROUPED_GEMM_SM90_DECLARE(n128)  // 128 x 128 x 64, cluster 2
LCATTN_GROUPED_GEMM_SM90_DECLARE(n256)  // 128 x 256 x 64, cluster 2
LCATTN_GROUPED_GEMM_SM90_DECLARE(n32_gated)
LCATTN_GROUPED_GEMM_SM90_DECLARE(n64_gated)
LCATTN_GROUPED_GEMM_SM90_DECLARE(n128_gated)
LCATTN_GROUPED_GEMM_SM90_DECLARE(n256_gated)
#undef LCATTN_GROUPED_GEMM_SM90_DECLARE

enum class Tile { n32, n64, n128, n256 };

// The tile's row count follows the mean rows per expert (M / E contiguous, the capacity M masked).
// Up to 64 rows the GEMM is bound by reading the weights, and its rate follows the weight bytes in
// flight per SM: a tile just wide enough for the rows, with weights 80% of each pipeline stage (128 x
// 32, 256 x 64). Past that it is bound by the tensor cores, and wider tiles reuse each weight tile for
// more rows. Measured on the H200 (csrc/kernels/NOTES.md): 256 x 64 beat 128 x 64 by 8% at 64 rows,
// 128 x 32 at 64 rows read each weight tile twice (0.6x), 256 x 32 lost 4-8% in decode.
inline Tile pick_tile(const GroupedGemmParams& p) {
  const int rows = p.counts ? p.M : (p.E > 0 ? (p.M + p.E - 1) / p.E : 0);
  if (rows <= 32) return Tile::n32;
  if (rows <= 64) return Tile::n64;
  if (rows <= 160) return Tile::n128;
  return Tile::n256;
}

}  // namespace lcattn::moe_sm90
