// Benchmark baseline only, not part of lcattn: FlashMLA's sm_90a sparse prefill kernel as the
// torch op flashmla_baseline::sparse_prefill, compiled against a FlashMLA source tree by
// scripts/build_flashmla.sh (nothing of FlashMLA is kept in this repository).
//   q [S, H, 512] bf16, kv [N, 1, 512] bf16, indices [S, 1, K] int32 (-1 = absent, K % 128 == 0),
//   sink [H] fp32 -> out [S, H, 512] bf16
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "params.h"
#include "sm90/prefill/sparse/phase1.h"

namespace {

at::Tensor sparse_prefill(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& indices, double scale,
                          const at::Tensor& sink) {
  TORCH_CHECK(q.is_cuda() && kv.is_cuda() && indices.is_cuda() && sink.is_cuda(), "CUDA tensors expected");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && kv.scalar_type() == at::kBFloat16, "q and kv must be bf16");
  TORCH_CHECK(indices.scalar_type() == at::kInt && sink.scalar_type() == at::kFloat, "int32 indices, fp32 sink");
  TORCH_CHECK(q.dim() == 3 && q.size(2) == 512 && q.size(1) % 64 == 0, "q must be [S, 64k heads, 512]");
  TORCH_CHECK(kv.dim() == 3 && kv.size(1) == 1 && kv.size(2) == 512, "kv must be [N, 1, 512]");
  TORCH_CHECK(indices.dim() == 3 && indices.size(0) == q.size(0) && indices.size(1) == 1 && indices.size(2) % 128 == 0,
              "indices must be [S, 1, K] with K a multiple of 128");
  TORCH_CHECK(sink.numel() == q.size(1), "sink must be [H]");
  TORCH_CHECK(q.stride(2) == 1 && kv.stride(2) == 1 && indices.stride(2) == 1 && sink.is_contiguous(),
              "last dims must be contiguous");
  const c10::cuda::CUDAGuard guard(q.device());
  const int S = int(q.size(0)), H = int(q.size(1));
  at::Tensor out = at::empty({S, H, 512}, q.options());
  at::Tensor lse = at::empty({S, H}, q.options().dtype(at::kFloat));
  at::Tensor max_logits = at::empty({S, H}, q.options().dtype(at::kFloat));
  SparseAttnFwdParams p{};
  p.s_q = S;
  p.s_kv = int(kv.size(0));
  p.h_q = H;
  p.h_kv = 1;
  p.d_qk = 512;
  p.d_v = 512;
  p.topk = int(indices.size(2));
  p.sm_scale = float(scale);
  p.sm_scale_div_log2 = float(scale * 1.4426950408889634);
  p.q = static_cast<cutlass::bfloat16_t*>(q.data_ptr());
  p.kv = static_cast<cutlass::bfloat16_t*>(kv.data_ptr());
  p.indices = indices.data_ptr<int>();
  p.attn_sink = sink.data_ptr<float>();
  p.topk_length = nullptr;
  p.stride_q_s_q = int(q.stride(0));
  p.stride_q_h_q = int(q.stride(1));
  p.stride_kv_s_kv = int(kv.stride(0));
  p.stride_kv_h_kv = int(kv.stride(1));
  p.stride_indices_s_q = int(indices.stride(0));
  p.stride_indices_h_kv = int(indices.stride(1));
  p.out = static_cast<cutlass::bfloat16_t*>(out.data_ptr());
  p.max_logits = max_logits.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  TORCH_CHECK(cudaDeviceGetAttribute(&p.num_sm, cudaDevAttrMultiProcessorCount, q.get_device()) == cudaSuccess);
  p.stream = c10::cuda::getCurrentCUDAStream().stream();
  sm90::fwd::run_fwd_phase1_kernel<512, false>(p);
  return out;
}

}  // namespace

TORCH_LIBRARY(flashmla_baseline, m) {
  m.def("sparse_prefill(Tensor q, Tensor kv, Tensor indices, float scale, Tensor sink) -> Tensor");
}
TORCH_LIBRARY_IMPL(flashmla_baseline, CUDA, m) { m.impl("sparse_prefill", &sparse_prefill); }
