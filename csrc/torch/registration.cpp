// Every lcattn op schema, in one place (docs/SPEC.md sections in brackets). The adapters in
// ops_*.cpp register the CPU and CUDA implementations; the Python wrappers and fake kernels in
// lcattn/ops.py take the same arguments in the same order, with the same defaults.
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <string>

#ifndef LCATTN_TORCH_VERSION
#define LCATTN_TORCH_VERSION "unknown"
#endif

namespace {

// The ops have no backward. Under grad mode, an input that requires grad raises (rather than
// giving outputs whose gradients would silently be missing); otherwise the op runs as usual.
void inference_only(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  if (at::GradMode::is_enabled()) {
    const std::string& name = op.schema().name();
    for (const c10::IValue& arg : torch::jit::last(*stack, op.schema().arguments().size()))
      TORCH_CHECK(!(arg.isTensor() && arg.toTensor().requires_grad()), "[lcattn] ", name.substr(name.find("::") + 2),
                  ": an input requires grad, but the lcattn ops have no backward (they are for inference): "
                  "call them under torch.no_grad() or torch.inference_mode()");
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

void def(torch::Library& m, const char* schema) {
  m.def(schema,
        torch::dispatch(c10::DispatchKey::Autograd, torch::CppFunction::makeFromBoxedFunction<&inference_only>()));
}

}  // namespace

TORCH_LIBRARY(lcattn, m) {
  // The torch version this library was built against; lcattn/__init__.py compares it at import.
  m.def("_built_with_torch() -> str", [] { return std::string(LCATTN_TORCH_VERSION); });
  // [3] Block KV compressor over a chunk of new tokens; updates the rings and writes entries.
  def(m,
      "compress_kv(Tensor kv, Tensor score, Tensor seq_lens, Tensor start_pos, Tensor(a!) ring_kv, "
      "Tensor(b!) ring_score, Tensor ape, Tensor norm_weight, Tensor inv_freq, Tensor(c!) out, int ratio, "
      "bool overlap, float eps=1e-06, Tensor(d!)? out_scales=None) -> ()");
  // [4] Lightning indexer.
  // key_scales [B, N]: e4m3 q and keys (the q scales folded into weights) and each entry's scale.
  def(m,
      "indexer_scores(Tensor q, Tensor weights, Tensor keys, Tensor q_start, int ratio=4, "
      "Tensor? key_scales=None) -> Tensor");
  def(m, "topk_indices(Tensor scores, int k) -> Tensor");
  // block_rows: query rows scored at a time (0 = as many as fit in 256 MiB of fp32 scores).
  def(m,
      "indexer_topk(Tensor q, Tensor weights, Tensor keys, Tensor q_start, int k, int ratio=4, "
      "int block_rows=0, Tensor? key_scales=None) -> Tensor");
  def(m, "gather_rows(Tensor pool, Tensor indices) -> Tensor");
  // [5] Attention over the window, compressed entries and the sink; scale None = head_dim^-0.5.
  def(m,
      "sparse_attn(Tensor q, Tensor kv, Tensor kv_start, Tensor q_start, Tensor ckv, Tensor indices, "
      "Tensor sink, Tensor inv_freq, float? scale=None, int window=128) -> (Tensor, Tensor)");
  def(m,
      "dense_attn(Tensor q, Tensor kv, Tensor kv_start, Tensor q_start, Tensor ckv, Tensor sink, "
      "Tensor inv_freq, int ratio, float? scale=None, int window=128) -> (Tensor, Tensor)");
  // [6] MoE.
  def(m, "grouped_gemm_contiguous(Tensor x, Tensor w, Tensor offsets) -> Tensor");
  def(m, "grouped_gemm_masked(Tensor x, Tensor w, Tensor counts, int expected_rows=0) -> Tensor");
  def(m,
      "moe_route(Tensor logits, int k, float route_scale, Tensor? bias=None, Tensor? tid2eid=None, "
      "Tensor? token_ids=None) -> (Tensor, Tensor)");
  def(m, "moe_permute(Tensor x, Tensor indices, int num_experts) -> (Tensor, Tensor, Tensor)");
  def(m, "moe_unpermute(Tensor y, Tensor rows, Tensor? weights=None) -> Tensor");
  def(m,
      "moe_experts(Tensor x, Tensor? weights, Tensor indices, Tensor w_gate_up, Tensor w_down, "
      "float swiglu_limit) -> Tensor");
  // [7] mHC: softmax over each row of logits [..., n, n], + eps, then Sinkhorn normalisation.
  def(m, "hc_sinkhorn(Tensor logits, int iters, float eps=1e-06) -> Tensor");
  // [7] mHC: a site's new streams y_j = post_j * out + sum_i comb_ij X_i, and its sublayer input
  // h = sum_i pre_i X_i, each summed in fp32.
  def(m, "hc_post(Tensor streams, Tensor out, Tensor post, Tensor comb) -> Tensor");
  def(m, "hc_collapse(Tensor streams, Tensor pre) -> Tensor");
}
