// Adapters of the Lightning indexer ops (SPEC 4): scores, top-k, fused scoring + top-k, gather.
#include <algorithm>
#include <optional>

#include "checks.h"
#include "lcattn/indexer_topk.h"

namespace lcattn {
namespace {

// The scoring inputs as the kernels read them: bf16 q and keys, or e4m3 ones with key_scales, which
// are widened to bf16 here (exactly: every e4m3 value is a bf16 value) and held for the call, unless
// a CUDA kernel reads them as they are (indexer_reads_e4m3).
struct IndexerInputs {
  at::Tensor q, keys;  // bf16
  IndexerParams p{};
};

IndexerInputs indexer_inputs(const char* op, const at::Tensor& q, const at::Tensor& weights, const at::Tensor& keys,
                             const at::Tensor& q_start, int64_t ratio, const std::optional<at::Tensor>& key_scales) {
  LCATTN_CHECK(q.dim() == 4, op, "q must be [B, S, HI, DI], got shape ", q.sizes());
  LCATTN_CHECK(keys.dim() == 3, op, "keys must be [B, N, DI], got shape ", keys.sizes());
  check_int_arg(op, "ratio", ratio, 1);
  const int64_t B = q.size(0), S = q.size(1), HI = q.size(2), DI = q.size(3), N = keys.size(1);
  const bool fp8 = q.scalar_type() == at::kFloat8_e4m3fn;
  const at::ScalarType dtype = fp8 ? at::kFloat8_e4m3fn : at::kBFloat16;
  LCATTN_CHECK(!fp8 || key_scales.has_value(), op, "e4m3 q and keys need key_scales [B, N]");
  check_tensor(op, "q", q, dtype, {B, S, HI, DI}, q);
  check_tensor(op, "weights", weights, at::kFloat, {B, S, HI}, q);
  check_tensor(op, "keys", keys, dtype, {B, N, DI}, q);
  check_aligned_16(op, "q", q);
  check_aligned_16(op, "keys", keys);
  check_tensor(op, "q_start", q_start, at::kInt, {B}, q);
  if (key_scales) check_tensor(op, "key_scales", *key_scales, at::kFloat, {B, N}, q);
  LCATTN_CHECK(HI * DI <= 8192, op, "HI * DI must be <= 8192, got ", HI * DI);
  // The CUDA kernels' limits, kept on every device so that both accept the same inputs: a query row's
  // q and 8 key rows in shared memory, and the key blocks of 64 entries as grid.y.
  check_int_arg(op, "DI", DI, 0, 4096);
  check_int_arg(op, "N", N, 0, 65535 * 64);
  check_int_size(op, "B * S", B * S);
  check_values(op, "q_start", q_start, 0, INT32_MAX - S);
  IndexerInputs in;
  IndexerParams& p = in.p;
  p.weights = ptr<const float>(weights);
  p.q_start = ptr<const int>(q_start);
  p.key_scales = key_scales ? ptr<const float>(*key_scales) : nullptr;
  p.B = int(B);
  p.S = int(S);
  p.HI = int(HI);
  p.DI = int(DI);
  p.N = int(N);
  p.ratio = int(ratio);
  p.row_begin = 0;
  p.row_end = B * S;
#if defined(LCATTN_WITH_CUDA)
  if (fp8 && q.is_cuda() && indexer_reads_e4m3(p)) {
    p.q_e4m3 = ptr<const e4m3>(q);
    p.keys_e4m3 = ptr<const e4m3>(keys);
    return in;
  }
#endif
  in.q = fp8 ? q.to(at::kBFloat16) : q;
  in.keys = fp8 ? keys.to(at::kBFloat16) : keys;
  p.q = ptr<const bf16>(in.q);
  p.keys = ptr<const bf16>(in.keys);
  return in;
}

at::Tensor indexer_scores(const at::Tensor& q, const at::Tensor& weights, const at::Tensor& keys,
                          const at::Tensor& q_start, int64_t ratio, const std::optional<at::Tensor>& key_scales) {
  constexpr const char* op = "indexer_scores";
  IndexerInputs in = indexer_inputs(op, q, weights, keys, q_start, ratio, key_scales);
  IndexerParams& p = in.p;
  at::Tensor scores = at::empty({p.B, p.S, p.N}, q.options().dtype(at::kFloat));
  p.scores = ptr<float>(scores);
  LCATTN_RUN(op, q, indexer_scores, p);
  return scores;
}

// On CUDA: scratch for the split top-k (k of N) of up to `rows` rows (its size grows with the rows);
// null when the split path does not take them or LCATTN_TOPK_SPLIT=0 (read per call) turns it off.
void* topk_split_workspace(const at::Tensor& like, int64_t rows, int N, int k, at::Tensor& holder) {
#if defined(LCATTN_WITH_CUDA)
  if (!like.is_cuda() || env_is("LCATTN_TOPK_SPLIT", "0")) return nullptr;
  TopkParams t{};
  t.R = rows;
  t.N = N;
  t.k = k;
  const size_t bytes = topk_split_workspace_bytes(t);
  if (bytes == 0) return nullptr;
  holder = at::empty({int64_t(bytes)}, like.options().dtype(at::kByte));
  return holder.data_ptr();
#else
  (void)like, (void)rows, (void)N, (void)k, (void)holder;
  return nullptr;
#endif
}

void check_k(const char* op, int64_t k) { LCATTN_CHECK(k >= 0 && k <= 65536, op, "k must lie in [0, 65536], got ", k); }

at::Tensor topk_indices(const at::Tensor& scores, int64_t k) {
  constexpr const char* op = "topk_indices";
  LCATTN_CHECK(scores.dim() >= 1, op, "scores must have rank >= 1, got a scalar");
  check_dtype_device(op, "scores", scores, at::kFloat, scores);
  LCATTN_CHECK(scores.is_contiguous(), op, "scores must be contiguous, got strides ", scores.strides());
  check_k(op, k);
  std::vector<int64_t> shape = scores.sizes().vec();
  shape.back() = k;
  at::Tensor indices = at::empty(shape, scores.options().dtype(at::kInt));
  TopkParams p{};
  p.N = int(scores.size(-1));
  if (p.N == 0 || indices.numel() == 0) return indices.fill_(-1);
  p.scores = ptr<const float>(scores);
  p.indices = ptr<int>(indices);
  p.R = scores.numel() / p.N;
  p.k = int(k);
  at::Tensor split;
  p.split_workspace = topk_split_workspace(scores, p.R, p.N, p.k, split);
  LCATTN_RUN(op, scores, topk, p);
  return indices;
}

// Scores a block of query rows at a time, so memory stays O(rows_per_block * N), not O(S * N).
at::Tensor indexer_topk(const at::Tensor& q, const at::Tensor& weights, const at::Tensor& keys,
                        const at::Tensor& q_start, int64_t k, int64_t ratio, int64_t block_rows,
                        const std::optional<at::Tensor>& key_scales) {
  constexpr const char* op = "indexer_topk";
  const IndexerInputs in = indexer_inputs(op, q, weights, keys, q_start, ratio, key_scales);
  const IndexerParams& p = in.p;
  check_k(op, k);
  LCATTN_CHECK(block_rows >= 0, op, "block_rows must be >= 0, got ", block_rows);
  at::Tensor indices = at::empty({p.B, p.S, k}, q.options().dtype(at::kInt));
  const int64_t rows = int64_t(p.B) * p.S;
  if (p.N == 0 || rows == 0) return indices.fill_(-1);
  IndexerTopkParams t{};
  t.scoring = p;
  t.block_rows = indexer_topk_block_rows(rows, p.N, block_rows);
  t.indices = ptr<int>(indices);
  t.k = int(k);
  at::Tensor block, split;
#if defined(LCATTN_WITH_CUDA)
  const bool fused = q.is_cuda() && indexer_topk_fuses(t);
#else
  const bool fused = false;
#endif
  if (!fused) {  // scores a block of rows at a time into scratch, then selects
    block = at::empty({t.block_rows, p.N}, q.options().dtype(at::kFloat));
    t.block = ptr<float>(block);
    t.topk_split_workspace = topk_split_workspace(q, t.block_rows, p.N, t.k, split);
  }
  LCATTN_RUN(op, q, indexer_topk, t);
  return indices;
}

at::Tensor gather_rows(const at::Tensor& pool, const at::Tensor& indices) {
  constexpr const char* op = "gather_rows";
  LCATTN_CHECK(pool.dim() == 3, op, "pool must be [B, N, D], got shape ", pool.sizes());
  LCATTN_CHECK(indices.dim() == 3, op, "indices must be [B, S, K], got shape ", indices.sizes());
  const int64_t B = pool.size(0), N = pool.size(1), D = pool.size(2);
  LCATTN_CHECK(pool.element_size() % 2 == 0, op, "pool elements must be a multiple of 2 bytes wide, got ",
               c10::toString(pool.scalar_type()));
  check_tensor(op, "pool", pool, pool.scalar_type(), {B, N, D}, pool);
  check_tensor(op, "indices", indices, at::kInt, {B, -1, -1}, pool);
  check_values(op, "indices", indices, -1, N - 1);
  at::Tensor out = at::empty({B, indices.size(1), indices.size(2), D}, pool.options());
  GatherParams p{};
  p.pool = static_cast<const char*>(pool.data_ptr());
  p.indices = ptr<const int>(indices);
  p.out = static_cast<char*>(out.data_ptr());
  p.B = int(B);
  p.S = int(indices.size(1));
  p.K = int(indices.size(2));
  p.N = int(N);
  p.row_bytes = D * pool.element_size();
  LCATTN_RUN(op, pool, gather_rows, p);
  return out;
}

void register_ops(torch::Library& m) {
  m.impl("indexer_scores", &indexer_scores);
  m.impl("topk_indices", &topk_indices);
  m.impl("indexer_topk", &indexer_topk);
  m.impl("gather_rows", &gather_rows);
}

}  // namespace

LCATTN_REGISTER(register_ops)

}  // namespace lcattn
