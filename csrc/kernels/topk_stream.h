// The one-read top-k of topk_stream.cu, taken by topk_split_cuda for the rows it takes.
#pragma once
#include <cstddef>

#include "lcattn/api.h"

namespace lcattn {

// Whether it takes p: N >= 16384, 1 <= k <= 2048, and rows enough for parts for twice the SMs
// (LCATTN_TOPK_STREAM=1: any number of rows; =0: none).
bool topk_stream_takes(const TopkParams& p);
// Bytes of p.split_workspace it needs for any call of up to p.R rows with p's N and k (0 when it
// takes no rows of that N and k).
size_t topk_stream_workspace_bytes(const TopkParams& p);
cudaError_t topk_stream_cuda(const TopkParams& p, cudaStream_t stream);

}  // namespace lcattn
