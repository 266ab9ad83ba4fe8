// Entry points of the kernel library: CPU implementations and CUDA launchers on the same
// params structs. Launchers are asynchronous on the given stream and return the launch error.
#pragma once
#include <cstddef>

#include "lcattn/params.h"

#if defined(LCATTN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace lcattn {

void compress_kv_cpu(const CompressParams& p);
void indexer_scores_cpu(const IndexerParams& p);
void topk_cpu(const TopkParams& p);
void indexer_topk_cpu(const IndexerTopkParams& p);
void gather_rows_cpu(const GatherParams& p);
void attention_cpu(const AttentionParams& p);
void grouped_gemm_contiguous_cpu(const GroupedGemmParams& p);
void grouped_gemm_masked_cpu(const GroupedGemmParams& p);
void moe_route_cpu(const RouteParams& p);
void moe_permute_cpu(const PermuteParams& p);
void moe_unpermute_cpu(const UnpermuteParams& p);
void swiglu_cpu(const SwigluParams& p);
void moe_experts_cpu(const MoeExpertsParams& p);
// Scratch bytes moe_experts_{cpu,cuda} need in p.workspace (cuda: with the grouped GEMM's problems).
size_t moe_experts_workspace_bytes(const MoeExpertsParams& p, bool cuda);
void hc_sinkhorn_cpu(const SinkhornParams& p);
void hc_mix_cpu(const HcMixParams& p);

#if defined(LCATTN_WITH_CUDA)
cudaError_t compress_kv_cuda(const CompressParams& p, cudaStream_t stream);
cudaError_t indexer_scores_cuda(const IndexerParams& p, cudaStream_t stream);
// Whether indexer_scores_cuda reads the e4m3 form of p directly (p.q_e4m3, p.keys_e4m3), unless
// LCATTN_INDEXER_FP8=0: the wgmma kernel past 16 rows per sequence (not with LCATTN_INDEXER_SM90=0),
// and the heads kernel at decode.
bool indexer_reads_e4m3(const IndexerParams& p);
cudaError_t topk_cuda(const TopkParams& p, cudaStream_t stream);
// The split top-k for few long rows (topk_split.cu): the bytes of p.split_workspace it needs, 0 when
// it does not take p. topk_cuda runs it when it takes p and the workspace is set.
size_t topk_split_workspace_bytes(const TopkParams& p);
cudaError_t topk_split_cuda(const TopkParams& p, cudaStream_t stream);
// Whether indexer_topk_cuda scores and selects p in one kernel, which reads neither p.block nor
// p.topk_split_workspace (prefill rows with LCATTN_INDEXER_FUSED_TOPK=1, where the kernel takes them).
bool indexer_topk_fuses(const IndexerTopkParams& p);
cudaError_t indexer_topk_cuda(const IndexerTopkParams& p, cudaStream_t stream);
cudaError_t gather_rows_cuda(const GatherParams& p, cudaStream_t stream);
cudaError_t attention_cuda(const AttentionParams& p, cudaStream_t stream);
// How many parts attention_cuda splits each query's keys into on a GPU with num_sms multiprocessors
// (1 when the queries alone fill it); with more than one, p.workspace must hold
// attention_workspace_floats(p) floats.
int attention_splits(const AttentionParams& p, int num_sms);
// Whether the queries' keys go in two splits whose two CTAs, a cluster, combine them through
// distributed shared memory, with no workspace: at decode (S = 1) where the split rule would give one
// or two splits and the current device holds every query's pair at once, unless
// LCATTN_ATTN_CLUSTER_SPLITS=0; attention_splits then gives 2. Set p.cluster_combine from it.
bool attention_cluster_combines(const AttentionParams& p, int num_sms);
// Whether attention_cuda reads entries in the kv_fp8 form (p.ckv_fp8) directly: the Hopper kernel's
// shapes (otherwise the caller widens them to bf16).
bool attention_reads_kv_fp8(const AttentionParams& p);
int64_t attention_workspace_floats(const AttentionParams& p);
// Whether, with p.splits set, the last split of each query combines the splits itself instead of a
// second kernel (2 to 4 splits, unless LCATTN_ATTN_FUSED_COMBINE=0); set
// p.fused_combine from it before attention_workspace_floats.
bool attention_fuses_combine(const AttentionParams& p);
cudaError_t grouped_gemm_contiguous_cuda(const GroupedGemmParams& p, cudaStream_t stream);
cudaError_t grouped_gemm_masked_cuda(const GroupedGemmParams& p, cudaStream_t stream);
// Bytes of p.workspace the grouped GEMM needs on the current device.
size_t grouped_gemm_workspace_bytes(const GroupedGemmParams& p);
cudaError_t moe_route_cuda(const RouteParams& p, cudaStream_t stream);
cudaError_t moe_permute_cuda(const PermuteParams& p, cudaStream_t stream);
cudaError_t moe_unpermute_cuda(const UnpermuteParams& p, cudaStream_t stream);
cudaError_t swiglu_cuda(const SwigluParams& p, cudaStream_t stream);
cudaError_t moe_experts_cuda(const MoeExpertsParams& p, cudaStream_t stream);
cudaError_t hc_sinkhorn_cuda(const SinkhornParams& p, cudaStream_t stream);
cudaError_t hc_mix_cuda(const HcMixParams& p, cudaStream_t stream);
#endif

}  // namespace lcattn
