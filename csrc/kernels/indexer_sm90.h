// The Hopper indexer kernels: scoring (indexer_sm90.cu), dispatched to by indexer_scores_cuda, and
// scoring fused with the top-k (indexer_topk_sm90.cu), dispatched to by indexer_topk_cuda.
#pragma once
#include "lcattn/api.h"

namespace lcattn {

// Shapes it takes: head dim 128, at most 64 heads.
bool indexer_sm90_supported(const IndexerParams& p);
cudaError_t indexer_scores_sm90(const IndexerParams& p, cudaStream_t stream);

// The fused kernel takes every row of p (row_begin 0, row_end B * S), head dim 128, at most 64 heads,
// 1 <= k <= 1280 and N <= 2^20, and writes indices [B * S, k] without writing scores.
bool indexer_topk_sm90_supported(const IndexerParams& p, int k);
cudaError_t indexer_topk_sm90(const IndexerParams& p, int* indices, int k, cudaStream_t stream);

}  // namespace lcattn
