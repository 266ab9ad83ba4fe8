// Benchmark baseline only, not part of lcattn: FlashMLA's sm_90a sparse fp8 decode for V4 (its
// MODEL1 cache format, 64 heads) as torch ops of the flashmla_baseline library, compiled with the
// prefill wrapper (flashmla_sparse_op.cu) against a FlashMLA source tree by scripts/build_flashmla.sh.
//   sparse_decode_schedule(q, K, K2) -> (sched_meta [parts, 8] int32, num_splits [B + 1] int32):
//     FlashMLA's split scheduler; it depends on the shapes only, so a caller runs it once.
//   sparse_decode(q [B, S, 64, 512] bf16, kv [blocks, page, 1, 584] uint8, indices [B, S, K] int32,
//                 sink [64] fp32, extra_kv, extra_indices [B, S, K2] (both or neither), scale,
//                 sched_meta, num_splits (None: scheduled in the call)) -> out [B, S, 64, 512] bf16:
//     FlashMLA's split-key attention kernel, then its combine (merges the splits, applies the sink).
// An index is block * page + row into its cache (-1 = none); K and K2 are multiples of 64.
// A MODEL1 page of `page` entries: page x 576 bytes (448 e4m3 | 64 bf16 RoPE values per entry),
// then page x 8 bytes (7 UE8M0 scales | 1 pad per entry); row stride 584 bytes, block stride at
// least page x 584 bytes and a multiple of 16.
// The benchmark keeps the sliding window in the main cache (K = 128) and the compressed entries in
// the extra cache (K2 = top-k), the split of FlashMLA's own MODEL1 test configurations (topk 128 plus
// extra_topk 512 or 1024): FlashMLA has no window of its own, window rows are indexed like entries
// and must be fp8 too. The output's RoPE channels stay rotated (FlashMLA does not undo the rotation).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "params.h"
#include "sm90/decode/sparse_fp8/splitkv_mla.h"
#include "smxx/decode/combine/combine.h"
#include "smxx/decode/get_decoding_sched_meta/get_decoding_sched_meta.h"

namespace {

constexpr int kHeadDim = 512;
constexpr int kEntryBytes = 584;   // 448 e4m3 + 128 bytes of bf16 RoPE + 7 scales + 1 pad
constexpr int kTopkBlock = 64;     // keys per step of the sm90 kernel and of its scheduler
constexpr int kSchedOverhead = 5;  // the scheduler's fixed cost per sequence, in key blocks (sm90)
constexpr int kMaxSmParts = 160;   // the most splits the combine kernel is instantiated for
constexpr int kMetaInts = int(sizeof(DecodingSchedMeta) / sizeof(int));

int narrow(int64_t v) {
  TORCH_CHECK(v <= std::numeric_limits<int>::max(), "flashmla_baseline: stride over int32: ", v);
  return int(v);
}

void check_cache(const at::Tensor& kv, const at::Tensor& indices, const at::Tensor& q, const char* what) {
  TORCH_CHECK(kv.is_cuda() && indices.is_cuda() && kv.device() == q.device() && indices.device() == q.device(), what,
              ": CUDA tensors on q's device expected");
  TORCH_CHECK(kv.scalar_type() == at::kByte, what, ": the cache must be uint8");
  TORCH_CHECK(kv.dim() == 4 && kv.size(2) == 1 && kv.size(3) == kEntryBytes && kv.stride(3) == 1 &&
                  kv.stride(1) == kEntryBytes && kv.stride(0) >= kv.size(1) * kEntryBytes && kv.stride(0) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(kv.data_ptr()) % 16 == 0,
              what, ": the cache must be [blocks, page, 1, 584] with contiguous pages, 16-byte aligned");
  TORCH_CHECK(indices.scalar_type() == at::kInt && indices.dim() == 3 && indices.size(0) == q.size(0) &&
                  indices.size(1) == q.size(1) && indices.stride(2) == 1,
              what, ": indices must be int32 [B, S, K]");
  TORCH_CHECK(indices.size(2) > 0 && indices.size(2) % kTopkBlock == 0, what, ": K must be a positive multiple of 64");
}

// Split parts per (query row, group of 64 heads): one per SM, as FlashMLA's sm90 decode sizes them.
int split_parts(const at::Tensor& q) {
  int sms = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.get_device()) == cudaSuccess);
  const int parts = std::max(sms / int(q.size(1)) / (int(q.size(2)) / 64), 1);
  TORCH_CHECK(parts <= kMaxSmParts, "flashmla_baseline: more split parts than the combine kernel takes: ", parts);
  return parts;
}

void check_q(const at::Tensor& q) {
  TORCH_CHECK(q.is_cuda() && q.scalar_type() == at::kBFloat16 && q.dim() == 4 && q.size(2) == 64 &&
                  q.size(3) == kHeadDim && q.stride(3) == 1,
              "q must be CUDA bf16 [B, S, 64, 512]");
}

// FlashMLA's split schedule for q's shape and K (+ K2) keys per query row: (sched_meta [parts, 8]
// int32, num_splits [B + 1] int32). It depends on the shapes only here (no per-sequence lengths), so
// a caller computes it once and passes it to every sparse_decode, as FlashMLA's interface keeps it.
std::tuple<at::Tensor, at::Tensor> sparse_decode_schedule(const at::Tensor& q, int64_t topk, int64_t extra_topk) {
  check_q(q);
  TORCH_CHECK(topk > 0 && topk % kTopkBlock == 0 && extra_topk >= 0 && extra_topk % kTopkBlock == 0,
              "K must be a positive multiple of 64 and K2 a multiple of 64");
  const c10::cuda::CUDAGuard guard(q.device());
  const int B = int(q.size(0)), parts = split_parts(q);
  at::Tensor meta = at::empty({parts, kMetaInts}, q.options().dtype(at::kInt));
  at::Tensor splits = at::empty({B + 1}, q.options().dtype(at::kInt));
  GetDecodeSchedMetaParams sp{};
  sp.b = B;
  sp.s_q = int(q.size(1));
  sp.block_size_n = kTopkBlock;
  sp.fixed_overhead_num_blocks = kSchedOverhead;
  sp.topk = int(topk);
  sp.extra_topk = int(extra_topk);  // 0: no extra cache
  sp.topk_length = nullptr;         // every index slot counts
  sp.extra_topk_length = nullptr;
  sp.seqlens_k_ptr = nullptr;  // dense decode only
  sp.tile_scheduler_metadata_ptr = reinterpret_cast<DecodingSchedMeta*>(meta.data_ptr());
  sp.num_splits_ptr = splits.data_ptr<int>();
  sp.num_sm_parts = parts;
  sp.stream = c10::cuda::getCurrentCUDAStream().stream();
  smxx::decode::run_get_decoding_sched_meta_kernel(sp);
  return {meta, splits};
}

at::Tensor sparse_decode(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& indices, const at::Tensor& sink,
                         const std::optional<at::Tensor>& extra_kv, const std::optional<at::Tensor>& extra_indices,
                         double scale, const std::optional<at::Tensor>& sched_meta,
                         const std::optional<at::Tensor>& num_splits) {
  check_q(q);
  TORCH_CHECK(sink.is_cuda() && sink.device() == q.device() && sink.scalar_type() == at::kFloat && sink.numel() == 64 &&
                  sink.is_contiguous(),
              "sink must be fp32 [64] on q's device");
  check_cache(kv, indices, q, "kv");
  TORCH_CHECK(extra_kv.has_value() == extra_indices.has_value(), "extra_kv and extra_indices go together");
  if (extra_kv) check_cache(*extra_kv, *extra_indices, q, "extra_kv");
  TORCH_CHECK(sched_meta.has_value() == num_splits.has_value(), "sched_meta and num_splits go together");
  const c10::cuda::CUDAGuard guard(q.device());
  const int B = int(q.size(0)), S = int(q.size(1)), H = int(q.size(2)), parts = split_parts(q);
  const int topk = int(indices.size(2)), extra_topk = extra_indices ? int(extra_indices->size(2)) : 0;
  at::Tensor meta, splits;
  if (sched_meta) {
    meta = *sched_meta;
    splits = *num_splits;
    TORCH_CHECK(meta.scalar_type() == at::kInt && meta.is_contiguous() && meta.dim() == 2 && meta.size(0) == parts &&
                    meta.size(1) == kMetaInts && meta.device() == q.device(),
                "sched_meta must be sparse_decode_schedule's for these shapes");
    TORCH_CHECK(splits.scalar_type() == at::kInt && splits.is_contiguous() && splits.numel() == B + 1 &&
                    splits.device() == q.device(),
                "num_splits must be sparse_decode_schedule's for these shapes");
  } else {
    std::tie(meta, splits) = sparse_decode_schedule(q, topk, extra_topk);
  }
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor out = at::empty({B, S, H, kHeadDim}, q.options());
  at::Tensor lse = at::empty({B, S, H}, f32);
  // Partial results: one row per split, at most one split per part plus one per sequence.
  at::Tensor lse_accum = at::empty({B + parts, S, H}, f32);
  at::Tensor o_accum = at::empty({B + parts, S, H, kHeadDim}, f32);

  SparseAttnDecodeParams p{};
  p.b = B;
  p.s_q = S;
  p.h_q = H;
  p.h_kv = 1;
  p.d_qk = kHeadDim;
  p.d_v = kHeadDim;
  p.sm_scale = float(scale);
  p.sm_scale_div_log2 = float(scale * 1.4426950408889634);  // the scale in base 2: scale * log2(e)
  p.num_blocks = int(kv.size(0));
  p.page_block_size = int(kv.size(1));
  p.topk = topk;
  p.model_type = ModelType::MODEL1;
  p.q = static_cast<cutlass::bfloat16_t*>(q.data_ptr());
  p.kv = static_cast<cutlass::bfloat16_t*>(kv.data_ptr());  // read as bytes by the kernel
  p.indices = indices.data_ptr<int>();
  p.topk_length = nullptr;  // every index slot is read (-1 = none)
  p.attn_sink = sink.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  p.out = static_cast<cutlass::bfloat16_t*>(out.data_ptr());
  p.extra_num_blocks = extra_kv ? int(extra_kv->size(0)) : 0;
  p.extra_page_block_size = extra_kv ? int(extra_kv->size(1)) : 0;
  p.extra_topk = extra_topk;
  p.extra_kv = extra_kv ? static_cast<cutlass::bfloat16_t*>(extra_kv->data_ptr()) : nullptr;
  p.extra_indices = extra_indices ? extra_indices->data_ptr<int>() : nullptr;
  p.extra_topk_length = nullptr;
  p.stride_q_b = narrow(q.stride(0));
  p.stride_q_s_q = narrow(q.stride(1));
  p.stride_q_h_q = narrow(q.stride(2));
  p.stride_kv_block = narrow(kv.stride(0));  // bytes
  p.stride_kv_row = narrow(kv.stride(1));    // 584
  p.stride_indices_b = narrow(indices.stride(0));
  p.stride_indices_s_q = narrow(indices.stride(1));
  p.stride_lse_b = narrow(lse.stride(0));
  p.stride_lse_s_q = narrow(lse.stride(1));
  p.stride_o_b = narrow(out.stride(0));
  p.stride_o_s_q = narrow(out.stride(1));
  p.stride_o_h_q = narrow(out.stride(2));
  p.stride_extra_kv_block = extra_kv ? narrow(extra_kv->stride(0)) : 0;
  p.stride_extra_kv_row = extra_kv ? narrow(extra_kv->stride(1)) : 0;
  p.stride_extra_indices_b = extra_indices ? narrow(extra_indices->stride(0)) : 0;
  p.stride_extra_indices_s_q = extra_indices ? narrow(extra_indices->stride(1)) : 0;
  p.stream = c10::cuda::getCurrentCUDAStream().stream();
  p.lse_accum = lse_accum.data_ptr<float>();
  p.o_accum = o_accum.data_ptr<float>();
  p.stride_lse_accum_split = narrow(lse_accum.stride(0));
  p.stride_lse_accum_s_q = narrow(lse_accum.stride(1));
  p.stride_o_accum_split = narrow(o_accum.stride(0));
  p.stride_o_accum_s_q = narrow(o_accum.stride(1));
  p.stride_o_accum_h_q = narrow(o_accum.stride(2));
  p.tile_scheduler_metadata_ptr = reinterpret_cast<DecodingSchedMeta*>(meta.data_ptr());
  p.num_splits_ptr = splits.data_ptr<int>();
  p.num_sm_parts = parts;
  sm90::decode::sparse_fp8::run_flash_splitkv_mla_fp8_sparse_kernel<ModelType::MODEL1, 64>(p);

  CombineParams c{};
  c.b = B;
  c.s_q = S;
  c.h_q = H;
  c.d_v = kHeadDim;
  c.lse = p.lse;
  c.out = p.out;
  c.stride_lse_b = p.stride_lse_b;
  c.stride_lse_s_q = p.stride_lse_s_q;
  c.stride_o_b = p.stride_o_b;
  c.stride_o_s_q = p.stride_o_s_q;
  c.stride_o_h_q = p.stride_o_h_q;
  c.lse_accum = p.lse_accum;
  c.o_accum = p.o_accum;
  c.stride_lse_accum_split = p.stride_lse_accum_split;
  c.stride_lse_accum_s_q = p.stride_lse_accum_s_q;
  c.stride_o_accum_split = p.stride_o_accum_split;
  c.stride_o_accum_s_q = p.stride_o_accum_s_q;
  c.stride_o_accum_h_q = p.stride_o_accum_h_q;
  c.tile_scheduler_metadata_ptr = p.tile_scheduler_metadata_ptr;
  c.num_splits_ptr = p.num_splits_ptr;
  c.num_sm_parts = parts;
  c.attn_sink = p.attn_sink;  // split rows get the sink here, unsplit ones in the attention kernel
  c.stream = p.stream;
  smxx::decode::run_flash_mla_combine_kernel<cutlass::bfloat16_t>(c);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(flashmla_baseline, m) {
  m.def("sparse_decode_schedule(Tensor q, int topk, int extra_topk) -> (Tensor, Tensor)");
  m.def(
      "sparse_decode(Tensor q, Tensor kv, Tensor indices, Tensor sink, Tensor? extra_kv, Tensor? extra_indices, "
      "float scale, Tensor? sched_meta=None, Tensor? num_splits=None) -> Tensor");
}
TORCH_LIBRARY_IMPL(flashmla_baseline, CUDA, m) {
  m.impl("sparse_decode_schedule", &sparse_decode_schedule);
  m.impl("sparse_decode", &sparse_decode);
}
