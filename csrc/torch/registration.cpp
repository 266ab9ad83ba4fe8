// Every lcattn op schema, in one place (SPEC.md sections in brackets). The adapters in
// ops_*.cpp register the CPU and CUDA implementations; fake kernels live in lcattn/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(lcattn, m) {
  // [3] Block KV compressor over a chunk of new tokens; updates the rings and writes entries.
  m.def("compress_kv(Tensor kv, Tensor score, Tensor seq_lens, Tensor start_pos, Tensor(a!) ring_kv, "
        "Tensor(b!) ring_score, Tensor ape, Tensor norm_weight, Tensor inv_freq, Tensor(c!) out, int ratio, "
        "bool overlap, float eps) -> ()");
  // [4] Lightning indexer.
  m.def("indexer_scores(Tensor q, Tensor weights, Tensor keys, Tensor q_start, int ratio) -> Tensor");
  m.def("topk_indices(Tensor scores, int k) -> Tensor");
  // block_rows: query rows scored at a time (0 = as many as fit in 256 MiB of fp32 scores).
  m.def("indexer_topk(Tensor q, Tensor weights, Tensor keys, Tensor q_start, int ratio, int k, int block_rows=0) "
        "-> Tensor");
  m.def("gather_rows(Tensor pool, Tensor indices) -> Tensor");
  // [5] Attention over the window, compressed entries and the sink.
  m.def("sparse_attn(Tensor q, Tensor kv, Tensor kv_start, Tensor q_start, Tensor ckv, Tensor indices, "
        "Tensor sink, Tensor inv_freq, float scale, int window) -> (Tensor, Tensor)");
  m.def("dense_attn(Tensor q, Tensor kv, Tensor kv_start, Tensor q_start, Tensor ckv, Tensor sink, "
        "Tensor inv_freq, float scale, int window, int ratio) -> (Tensor, Tensor)");
  // [6] MoE.
  m.def("grouped_gemm_contiguous(Tensor x, Tensor w, Tensor offsets) -> Tensor");
  m.def("grouped_gemm_masked(Tensor x, Tensor w, Tensor counts) -> Tensor");
  m.def("moe_route(Tensor logits, Tensor? bias, Tensor? tid2eid, Tensor? token_ids, int topk, "
        "float route_scale) -> (Tensor, Tensor)");
  m.def("moe_permute(Tensor x, Tensor indices, int num_experts) -> (Tensor, Tensor, Tensor)");
  m.def("moe_unpermute(Tensor y, Tensor rows, Tensor? weights) -> Tensor");
  m.def("moe_experts(Tensor x, Tensor? weights, Tensor indices, Tensor w_gate_up, Tensor w_down, "
        "float swiglu_limit) -> Tensor");
}
