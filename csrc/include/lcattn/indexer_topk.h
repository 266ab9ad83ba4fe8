// The blocks of query rows that indexer_topk scores and selects in turn: one walk for the CPU and
// CUDA paths (and the C++ benches).
#pragma once
#include <algorithm>
#include <cstdint>

#include "lcattn/params.h"

namespace lcattn {

// Query rows per block: `requested`, or with 0 as many as fit in 256 MiB of fp32 scores; at most all.
inline int64_t indexer_topk_block_rows(int64_t rows, int N, int64_t requested) {
  constexpr int64_t kScoreBlockElems = int64_t(64) << 20;
  const int64_t block = requested > 0 ? requested : std::max<int64_t>(1, kScoreBlockElems / std::max(N, 1));
  return std::max<int64_t>(1, std::min(rows, block));
}

// Calls run(scoring, topk) for each block in order; a false return stops the walk.
template <typename Run>
void indexer_topk_blocks(const IndexerTopkParams& p, Run&& run) {
  const int64_t rows = int64_t(p.scoring.B) * p.scoring.S;
  for (int64_t r0 = 0; r0 < rows; r0 += p.block_rows) {
    IndexerParams s = p.scoring;
    s.row_begin = r0;
    s.row_end = std::min(rows, r0 + p.block_rows);
    s.scores = p.block;
    const TopkParams t{p.block, p.indices + r0 * p.k, s.row_end - s.row_begin, s.N, p.k, p.topk_split_workspace};
    if (!run(s, t)) return;
  }
}

}  // namespace lcattn
