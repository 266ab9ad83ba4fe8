// The Hopper indexer scoring kernel of indexer_sm90.cu, dispatched to by indexer_scores_cuda.
#pragma once
#include "lcattn/api.h"

namespace lcattn {

// Shapes it takes: head dim 128, at most 64 heads.
bool indexer_sm90_supported(const IndexerParams& p);
cudaError_t indexer_scores_sm90(const IndexerParams& p, cudaStream_t stream);

}  // namespace lcattn
