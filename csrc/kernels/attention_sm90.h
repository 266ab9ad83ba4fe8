// The Hopper attention kernels of attention_sm90.cu, dispatched to by attention_cuda.
#pragma once
#include "lcattn/api.h"

namespace lcattn {

// Shapes the sm_90a kernels take: head dim 512, heads in groups of 64, RoPE channels <= 64.
bool attention_sm90_supported(const AttentionParams& p);
cudaError_t attention_sm90(const AttentionParams& p, cudaStream_t stream);

// Version 6 (attention_sm90_pair.cu): blocks in pairs, one softmax per block; taken by attention_sm90
// for bf16 entries where it measured faster (pair_schedule_applies); its splits write version 4's partials.
// Its forms, flags of a bit each (pair_form in attention_sm90.cu picks one from the LCATTN_ATTN_* switches):
enum PairForm : int {
  kPairStagedOut = 1,   // a one-split output through shared memory (p.out 16-byte aligned)
  kPairNoKeyFence = 2,  // no proxy fence between a key half's arrival and the logits' wgmma
  kPairRowsToL2 = 4,    // the next pair's rows asked of L2 when looked up, a pair before their copies
  kPairForms = 8,       // the bf16 forms: any of the flags above
  kPairFp8 = 16,        // kv_fp8 entries, widened by a fourth warpgroup: alone or with kPairStagedOut only
};
cudaError_t attention_sm90_pair(const AttentionParams& p, int form, cudaStream_t stream);

}  // namespace lcattn
