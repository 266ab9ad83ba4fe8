// The sm_90a grouped GEMM configs (moe_gemm_sm90_<name>.cu) and the heuristic that picks one.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "lcattn/params.h"
#include "lcattn/switches.h"

namespace lcattn::moe_sm90 {

// Each runs y = x w_e^T for every expert (contiguous when p.offsets, masked when p.counts) and needs
// p.workspace of grouped_gemm_workspace_<name>(p) bytes; the <name>_gated configs run p.gated
// problems (SwiGLU in the epilogue). Tiles are (features, rows, K), see the .cuh.
#define LCATTN_GROUPED_GEMM_SM90_DECLARE(name)                                      \
  cudaError_t grouped_gemm_##name(const GroupedGemmParams& p, cudaStream_t stream); \
  size_t grouped_gemm_workspace_##name(const GroupedGemmParams& p);
LCATTN_GROUPED_GEMM_SM90_DECLARE(n32)   // 128 x 32 x 128
LCATTN_GROUPED_GEMM_SM90_DECLARE(n64)   // 256 x 64 x 64
LCATTN_GROUPED_GEMM_SM90_DECLARE(n128)  // 256 x 128 x 64
LCATTN_GROUPED_GEMM_SM90_DECLARE(n256)  // 128 x 256 x 64, cluster 2
LCATTN_GROUPED_GEMM_SM90_DECLARE(n32_gated)
LCATTN_GROUPED_GEMM_SM90_DECLARE(n64_gated)
LCATTN_GROUPED_GEMM_SM90_DECLARE(n128_gated)
LCATTN_GROUPED_GEMM_SM90_DECLARE(n256_gated)
#undef LCATTN_GROUPED_GEMM_SM90_DECLARE

enum class Tile { n32, n64, n128, n256 };

// The tile by the rows per expert (M / E contiguous, the capacity M masked). Up to about 192 rows at
// the V4 dims the GEMM is bound by reading the weights, and the tiles with more weight bytes per
// pipeline stage stream faster (128 x 32 and 256 x 64: weights 80% of a stage, 256 x 128 two thirds,
// 128 x 256 one third). An expert with more rows than its tile takes more row tiles; as the scheduler
// runs those side by side, they find its weights in L2 (the raster order in moe_gemm_sm90.cuh), so a
// tile somewhat short of the rows costs less than a tall one: routed rows that spread past the mean
// cost a few percent. Thresholds from a sweep of every tile over uniform and routed rows (H100;
// csrc/kernels/NOTES.md, Grouped GEMM, version 11), each within 3% of the best tile there.
inline Tile pick_tile(const GroupedGemmParams& p) {
  const int rows = p.counts ? p.M : (p.E > 0 ? (p.M + p.E - 1) / p.E : 0);
  if (rows <= 48) return Tile::n32;
  if (rows <= 96) return Tile::n64;
  if (rows <= 160) return Tile::n128;
  return Tile::n256;
}

// CTAs of the persistent grid (at most num_sms, a multiple of the cluster): as many as give each CTA
// the same number of tiles, for an upper bound of the tiles that M rows over E experts make. A decode
// call fills a few waves, and with num_sms CTAs the SMs left without a tile in the last wave idle while
// the others stream theirs: flash T=1 is 224 tiles of 1 MB, 92 CTAs with 2 and 40 with 1; 112 CTAs
// with 2 each ran 0.073 against 0.077 ms in the benchmark driver, and Pro T=1 (336 tiles, 112 CTAs
// with 3) 0.170 against 0.182 ms (H200). The masked layout's bound (every expert up to M rows) is
// loose at decode, so without p.expected_rows it keeps about num_sms.
inline int balanced_ctas(const GroupedGemmParams& p, int tile_features, int tile_rows, int cluster, int num_sms) {
  const int64_t feature_tiles = (p.N + tile_features - 1) / tile_features;
  // sum over experts of ceil(rows_e / tile_rows) for R rows in all: at most R / tile_rows plus one
  // per expert with rows (min(E, R) of them); masked, also at most ceil(M / tile_rows) per expert.
  auto bound = [&](int64_t rows) { return std::min<int64_t>(p.E, rows) + rows / tile_rows; };
  const int64_t masked_bound = int64_t(p.E) * ((p.M + tile_rows - 1) / tile_rows);
  const int64_t row_tiles = !p.counts             ? bound(p.M)
                            : p.expected_rows > 0 ? std::min(masked_bound, bound(p.expected_rows))
                                                  : masked_bound;
  const int64_t tiles = feature_tiles * row_tiles;
  if (tiles == 0 || num_sms <= 0) return num_sms;
  const int64_t waves = (tiles + num_sms - 1) / num_sms;
  const int64_t ctas = ((tiles + waves - 1) / waves + cluster - 1) / cluster * cluster;
  return int(std::min<int64_t>(ctas, num_sms));
}

// The persistent grid: balanced_ctas, or LCATTN_GROUPED_GEMM_CTAS=n CTAs (rounded down to the cluster,
// at most num_sms; for tests that check that every grid computes the same tiles); read per call.
inline int grid_ctas(const GroupedGemmParams& p, int tile_features, int tile_rows, int cluster, int num_sms) {
  const long forced = env_int("LCATTN_GROUPED_GEMM_CTAS", 0);
  if (forced > 0) return int(std::max<long>(cluster, std::min<long>(forced, num_sms) / cluster * cluster));
  return balanced_ctas(p, tile_features, tile_rows, cluster, num_sms);
}

}  // namespace lcattn::moe_sm90
