// The one-read top-k of topk_stream.cu, taken by topk_split_cuda unless LCATTN_TOPK_STREAM=0.
#pragma once
#include <cstddef>

#include "lcattn/api.h"

namespace lcattn {

// Whether it takes p: LCATTN_TOPK_STREAM is not 0, N >= 16384, 1 <= k <= 2048.
bool topk_stream_takes(const TopkParams& p);
// Bytes of p.split_workspace it needs for any call of up to p.R rows with p's N and k (0 when it
// does not take p).
size_t topk_stream_workspace_bytes(const TopkParams& p);
cudaError_t topk_stream_cuda(const TopkParams& p, cudaStream_t stream);

}  // namespace lcattn
