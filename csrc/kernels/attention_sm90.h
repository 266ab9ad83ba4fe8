// The Hopper attention kernels of attention_sm90.cu, dispatched to by attention_cuda.
#pragma once
#include "lcattn/api.h"

namespace lcattn {

// Shapes the sm_90a kernels take: head dim 512, heads in groups of 64, RoPE channels <= 64.
bool attention_sm90_supported(const AttentionParams& p);
cudaError_t attention_sm90(const AttentionParams& p, cudaStream_t stream);

// Version 6 (attention_sm90_pair.cu): blocks in pairs, one softmax per block; taken by attention_sm90
// for bf16 entries where it measured faster (pair_schedule_applies); its splits write version 4's partials.
// staged_out: a one-split output through shared memory (p.out 16-byte aligned); late_table: the RoPE
// table built after the set-up barrier.
cudaError_t attention_sm90_pair(const AttentionParams& p, bool staged_out, bool late_table, cudaStream_t stream);

}  // namespace lcattn
