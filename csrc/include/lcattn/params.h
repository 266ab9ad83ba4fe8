// One plain struct per op: the contract between the torch adapters, the CPU implementations
// and the CUDA launchers. Every tensor is dense row-major (the adapters check contiguity);
// offsets are computed in int64. Batches are padded: [B, S, ...] with per-sequence positions.
#pragma once
#include <cstdint>

#include "lcattn/numeric.h"

namespace lcattn {

// How compressed entries are stored: fp32, bf16, e4m3 with a scale per entry (e4m3_scale, the
// indexer's fp8 form), or kv_fp8 (KvFp8Layout, the attention entries' fp8 form).
enum class EntryType { f32, bf16, e4m3, kv_fp8 };

// Block KV compressor (SPEC 3) over one chunk of new tokens per sequence.
// width = coff * c with coff = 2 when overlap (CSA) and 1 otherwise (HCA).
// The ring keeps the raw rows of the last coff * ratio positions: position s lives at s % ring.
struct CompressParams {
  const float* kv;           // [B, S, width] a_s rows of the chunk
  const float* score;        // [B, S, width] z_s rows of the chunk, without ape
  const int* seq_lens;       // [B] valid rows of the chunk, 0 <= seq_lens[b] <= S
  const int* start_pos;      // [B] absolute position of row 0 of the chunk, >= 0
  float* ring_kv;            // [B, ring, width] carry-over a rows, updated in place
  float* ring_score;         // [B, ring, width] carry-over z rows, updated in place
  const float* ape;          // [ratio, width] added to z_s at s % ratio
  const float* norm_weight;  // [c] RMSNorm weight of an entry
  const float* inv_freq;     // [rope_dim / 2]
  void* out;                 // [B, n_out, c] of out_type (kv_fp8: [B, n_out, KvFp8Layout{c, rope_dim}.bytes()]
                             // bytes); entry i at row i, i >= n_out skipped
  float* out_scales;         // [B, n_out] when out_type is e4m3: entry i is out * out_scales[b, i]
  EntryType out_type;
  bool overlap;
  int B, S, c, ratio, n_out, rope_dim;
  float eps;
  LCATTN_HD int width() const { return overlap ? 2 * c : c; }
  LCATTN_HD int ring() const { return overlap ? 2 * ratio : ratio; }
  // Sequence b's chunk [start(b), end(b)) with start_pos and seq_lens clamped into their ranges
  // (start >= 0, 0 <= length <= S), so no value reaches outside kv, score or the rings.
  LCATTN_HD int start(int b) const {
    return start_pos[b] < 0 ? 0 : (start_pos[b] > INT32_MAX - S ? INT32_MAX - S : start_pos[b]);
  }
  LCATTN_HD int end(int b) const { return start(b) + (seq_lens[b] < 0 ? 0 : (seq_lens[b] > S ? S : seq_lens[b])); }
};

// Lightning indexer scores (SPEC 4) for flattened query rows [row_begin, row_end) of [B, S].
struct IndexerParams {
  const bf16* q;         // [B, S, HI, DI]
  const float* weights;  // [B, S, HI] head weights, scale folded in
  const bf16* keys;      // [B, N, DI] compressed indexer keys
  const int* q_start;    // [B] position of query row 0 of each sequence
  float* scores;         // [row_end - row_begin, N]; entry i of a query at p is -inf unless i < (p+1)/ratio
  // [B, N] or null: entry i's score is multiplied by it after the head sum (the dequantization of fp8
  // keys: a scale s >= 0 commutes with the ReLU).
  const float* key_scales;
  // e4m3 q and keys read as they are (q and keys null), when indexer_reads_e4m3(p) says a kernel
  // takes them; otherwise the adapters widen them to bf16.
  const e4m3* q_e4m3;
  const e4m3* keys_e4m3;
  int B, S, HI, DI, N, ratio;
  int64_t row_begin, row_end;
  LCATTN_HD float key_scale(int b, int i) const { return key_scales ? key_scales[int64_t(b) * N + i] : 1.f; }
};

// Per-row top-k (SPEC 4): min(k, candidates) indices in ascending order, then -1.
// Candidates are the entries that are neither -inf nor NaN.
struct TopkParams {
  const float* scores;  // [R, N]
  int* indices;         // [R, k]
  int64_t R;
  int N, k;
  // CUDA, long rows: with topk_split_workspace_bytes(p) bytes here, each row is spread over many
  // CTAs (topk_split.cu). The adapters set it unless LCATTN_TOPK_SPLIT=0.
  void* split_workspace = nullptr;
};

// Indexer scores then top-k (SPEC 4), one block of query rows at a time, so that memory is
// O(block_rows * N) rather than O(B * S * N); indexer_topk_blocks (indexer_topk.h) walks the blocks.
struct IndexerTopkParams {
  IndexerParams scoring;  // row_begin, row_end and scores are set per block
  float* block;           // [block_rows, N] fp32 scratch
  int* indices;           // [B * S, k]
  int64_t block_rows;     // >= 1
  int k;
  void* topk_split_workspace = nullptr;  // TopkParams::split_workspace of every block
};

// Rows of a pool picked by index; -1 gives a zero row.
struct GatherParams {
  const char* pool;    // [B, N, row_bytes]
  const int* indices;  // [B, S, K] in [-1, N)
  char* out;           // [B, S, K, row_bytes]
  int B, S, K, N;
  int64_t row_bytes;  // multiple of 2
};

// Attention of query heads over the raw window, compressed entries and a sink (SPEC 5).
// Query row s of sequence b sits at p = q_start[b] + s and sees window positions
// [max(0, p - window + 1, kv_start[b]), min(p, kv_start[b] + L - 1)], then either
// indices[b, s, :] (sparse, indices != nullptr) or every entry i < min(N, (p+1)/ratio)
// (dense, ratio > 0), or nothing more (window only).
struct AttentionParams {
  const bf16* q;        // [B, S, H, D]
  const bf16* kv;       // [B, L, D] raw keys = values; row j holds position kv_start[b] + j
  const int* kv_start;  // [B]
  const int* q_start;   // [B]
  const bf16* ckv;      // [B, N, D] compressed entries (null when N == 0)
  // [B, N, KvFp8Layout{D, rope_dim}.bytes()] the entries in the kv_fp8 form, read instead of ckv when
  // attention_reads_kv_fp8(p) says the CUDA kernel takes them and they start on a 16-byte boundary;
  // otherwise the adapters widen them.
  const uint8_t* ckv_fp8;
  const int* indices;     // [B, S, K] into ckv, -1 = none (sparse only)
  const float* sink;      // [H] logit added to the denominator only
  const float* inv_freq;  // [rope_dim / 2] for undoing the query rotation on the output
  bf16* out;              // [B, S, H, D]
  float* lse;             // [B, S, H] natural log-sum-exp of the scaled logits, sink excluded
  float* workspace;       // CUDA, splits > 1: [splits, B * S * H, D + 4] partial outputs, (max, sum), pad;
                          // with fused_combine, then one int counter per (query row, head group)
  int B, S, H, D, L, N, K, window, ratio, rope_dim;
  int splits;          // CUDA: parts the keys of each query are split into (attention_splits)
  bool fused_combine;  // CUDA, splits > 1: the last split of each query combines them (attention_fuses_combine)
  // CUDA, splits == 2: the two splits of each query are a cluster of two CTAs that combine through
  // distributed shared memory, with no workspace (attention_cluster_combines)
  bool cluster_combine = false;
  float scale;
  // CUDA, Hopper kernel: a key block moves a warp's softmax reference maxima only when one of its rows'
  // maxima passes its reference by more than this (base 2; the exponentials are then at most
  // 2^rescale_slack); negative, every block moves them (LCATTN_ATTN_RESCALE_SLACK).
  float rescale_slack = -1.f;
};

// Grouped GEMM for MoE (SPEC 6): y = x w_e^T per expert, bf16 in, fp32 accumulate, bf16 out.
struct GroupedGemmParams {
  const bf16* x;       // contiguous: [M, K]; masked: [E, M, K]
  const bf16* w;       // [E, N, K]
  const int* offsets;  // contiguous: [E + 1], expert e owns rows [offsets[e], offsets[e+1])
  const int* counts;   // masked: [E] valid rows per expert; rows >= counts[e] are zeroed
  bf16* y;             // contiguous: [M, out_cols()]; masked: [E, M, out_cols()]
  void* workspace;     // CUDA: grouped_gemm_workspace_bytes(p) bytes (per-expert problems, TMA descriptors)
  int E, M, N, K;      // N and K multiples of 8 on CUDA (16-byte rows for TMA)
  // Gated (moe_experts' gate+up projection): w's N rows are gate and up interleaved in blocks of 8
  // (gate_up_row below) and y [.., N / 2] = swiglu(gate, up, swiglu_limit) of the fp32 products.
  bool gated = false;  // N a multiple of 16
  float swiglu_limit = 0.f;
  // Masked: the rows the caller expects over all experts (the sum of counts), 0 if unknown. It only
  // sizes the CUDA grid (moe_gemm_sm90.h: balanced_ctas); any value gives the same result.
  int64_t expected_rows = 0;
  LCATTN_HD int out_cols() const { return gated ? N / 2 : N; }
  // Expert e's rows [begin, begin + rows) of x and y: from offsets (contiguous) or counts (masked,
  // begin = e M), clamped into [0, M] so that no value reaches outside x or y.
  LCATTN_HD void expert_rows(int e, int64_t& begin, int& rows) const {
    auto clamp = [](int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); };
    if (counts) {
      begin = int64_t(e) * M;
      rows = clamp(counts[e], 0, M);
    } else {
      const int lo = clamp(offsets[e], 0, M);
      begin = lo;
      rows = clamp(offsets[e + 1], lo, M) - lo;
    }
  }
};

// Row of the interleaved gate+up weight [2I, D] that holds gate (up = false) or up feature i < I:
// rows 16b .. 16b + 7 are gate features 8b .. 8b + 7 and the next 8 rows their up features.
LCATTN_HD int gate_up_row(int i, bool up) { return i / 8 * 16 + (up ? 8 : 0) + i % 8; }

// MoE routing (SPEC 6): s = sqrt(softplus(logits)); biased top-k or hash lookup.
struct RouteParams {
  const float* logits;       // [T, E]
  const float* bias;         // [E] selection bias, or null
  const int* tid2eid;        // [V, k] hash table, or null
  const int64_t* token_ids;  // [T] with tid2eid
  float* weights;            // [T, k] s[idx] / sum(s[idx]) * route_scale
  int* indices;              // [T, k] expert ids, best first (table order for hash)
  int T, E, k, V;
  float route_scale;
};

// Permute token rows into expert-contiguous order (stable: by expert, then by slot t*k+j).
// A slot whose expert lies outside [0, E) (-1 from hash routing, or unchecked input) is routed
// nowhere: it takes no row (rows = -1) and adds nothing to its token's output.
struct PermuteParams {
  const bf16* x;       // [T, D]
  const int* indices;  // [T, k] in [0, E)
  bf16* x_perm;        // [T * k, D]; rows past offsets[E] unused
  int* offsets;        // [E + 1]
  int* rows;           // [T, k] row of x_perm that holds slot (t, j), or -1
  int* counts;         // [E] rows per expert, counted before offsets (CUDA only)
  int T, k, E, D;
  LCATTN_HD bool routed(int64_t slot) const { return indices[slot] >= 0 && indices[slot] < E; }
};

// out[t] = sum_j weights[t, j] * y[rows[t, j]] (weight 1 when weights is null), fp32 sum.
struct UnpermuteParams {
  const bf16* y;         // [R, D]
  const int* rows;       // [T, k] in [0, R); any other value adds nothing
  const float* weights;  // [T, k] or null
  bf16* out;             // [T, D]
  int T, k, D, R;
};

// The routed experts of a MoE block (SPEC 6), routing given:
//   out[t] = sum_j weights[t, j] * down_e(swiglu(gate_up_e(x[t]))), e = indices[t, j],
// swiglu(g, u) = silu(min(g, limit)) * clamp(u, -limit, limit), gate_up and down bf16 GEMMs with
// fp32 accumulation. Runs as permute -> grouped GEMM -> SwiGLU -> grouped GEMM -> weighted unpermute.
struct MoeExpertsParams {
  const bf16* x;          // [T, D]
  const float* weights;   // [T, k] routing weights, or null for 1
  const int* indices;     // [T, k] experts in [0, E)
  const bf16* w_gate_up;  // [E, 2I, D], gate and up rows interleaved in blocks of 8 (gate_up_row)
  const bf16* w_down;     // [E, D, I]
  bf16* out;              // [T, D]
  void* workspace;        // moe_experts_workspace_bytes(p, cuda): permuted rows, activations, GEMM problems
  int T, k, E, D, I;      // D and I multiples of 8
  float swiglu_limit;
  // SwiGLU in the gate+up GEMM's epilogue (no [T * k, 2I] intermediate); else a separate pass over
  // the GEMM's output. The adapter sets it from LCATTN_MOE_FUSED_SWIGLU=1: off by default, as the
  // fused epilogue measured slower than the separate pass (csrc/kernels/NOTES.md).
  bool fused_swiglu = false;
};

// h[r, i] = swiglu(gate, up) of row r of the gate+up GEMM's output (gate_up_row order), in fp32,
// rounded to bf16.
struct SwigluParams {
  const bf16* gate_up;  // [R, 2I]
  bf16* h;              // [R, I]
  int64_t R;
  int I;  // multiple of 8
  float swiglu_limit;
};

// The mHC mixing matrix of each token and site (SPEC 7): A = softmax over each row of logits, + eps,
// then columns normalised, then iters - 1 rounds of rows then columns (each divided by its sum + eps).
struct SinkhornParams {
  const float* logits;  // [M, n, n]
  float* out;           // [M, n, n]
  int64_t M;
  int n, iters;  // 1 <= n <= kHcMaxStreams, iters >= 1
  float eps;
};
constexpr int kHcMaxStreams = 8;  // the most residual streams n the mHC ops take

// Per token, m = sums() weighted sums of the n residual streams (SPEC 7), summed in fp32 and rounded
// once to the streams' type (bf16 or fp32: `bf16_streams`): y_j = post_j * out + sum_i comb_ij X_i for
// j < m. A site's new streams (hc_post): m = n. The sublayer input h = sum_i pre_i X_i (hc_collapse):
// post and out null (no first term), so m = 1 and comb = pre.
struct HcMixParams {
  const void* streams;  // [T, n, D] X
  const void* out;      // [T, D] the sublayer's output f(h), the streams' type; or null
  const float* post;    // [T, m]; null with out
  const float* comb;    // [T, n, m]: comb[i][j] weighs stream i in sum j
  void* y;              // [T, m, D]
  int64_t T;
  int n, D;  // 1 <= n <= kHcMaxStreams
  bool bf16_streams;
  LCATTN_HD int sums() const { return post ? n : 1; }
};

}  // namespace lcattn
