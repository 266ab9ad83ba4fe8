// Per-element definitions that the CPU and CUDA implementations share, so the two cannot drift.
#pragma once
#include <cmath>

#include "lcattn/params.h"

namespace lcattn {

// SPEC 4's ReLU, as torch's: negatives to 0, NaN stays NaN (fmaxf would make it 0). On the GPU one
// FMNMX.NAN.
LCATTN_HD float relu(float x) {
#ifdef __CUDA_ARCH__
  float r;
  asm("max.NaN.f32 %0, %1, 0f00000000;" : "=f"(r) : "f"(x));
  return r;
#else
  return x < 0.f ? 0.f : x;
#endif
}

// Compressed entries visible to a query at position pos (SPEC 4, 5): those whose block of `ratio`
// positions ends at or before pos, at most N.
LCATTN_HD int visible_entries(int pos, int ratio, int N) {
  const int v = (pos + 1) / ratio;
  return v < N ? v : N;
}

// The key set of one attention query of sequence b at position pos (SPEC 5): the raw-window rows of
// positions [window_lo, window_lo + n_window), then n_entries compressed entries (the K selected
// ones, or the visible prefix of a dense layer with ratio > 0).
struct AttentionKeys {
  int window_lo, n_window, n_entries;
};
LCATTN_HD AttentionKeys attention_keys(const AttentionParams& p, int b, int pos) {
  const int kv0 = p.kv_start[b], last = kv0 + p.L - 1;
  int lo = pos - p.window + 1;
  lo = lo > 0 ? lo : 0;
  lo = lo > kv0 ? lo : kv0;
  const int hi = pos < last ? pos : last;
  AttentionKeys keys;
  keys.window_lo = lo;
  keys.n_window = hi >= lo ? hi - lo + 1 : 0;
  keys.n_entries = p.indices ? p.K : (p.ratio > 0 ? visible_entries(pos, p.ratio, p.N) : 0);
  return keys;
}

// Raw row of position s of sequence b: from the chunk when s is new, else from the ring (SPEC 3).
LCATTN_HD const float* compress_row(const CompressParams& p, const float* chunk, const float* ring, int b, int s) {
  const int s0 = p.start(b);
  return s >= s0 ? chunk + (int64_t(b) * p.S + (s - s0)) * p.width()
                 : ring + (int64_t(b) * p.ring() + s % p.ring()) * p.width();
}

// Channel ch of entry i before RMSNorm: softmax over the candidates' logits z + ape of their a.
// CSA pools the A halves of block i-1 (absent for i = 0) and the B halves of block i.
LCATTN_HD float compress_pool_channel(const CompressParams& p, int b, int i, int ch) {
  const int ratio = p.ratio, W = p.width();
  float mx = -INFINITY, sum = 0.f, acc = 0.f;
  auto visit = [&](int s, int col) {
    const float z = compress_row(p, p.score, p.ring_score, b, s)[col] + p.ape[(s % ratio) * W + col];
    const float a = compress_row(p, p.kv, p.ring_kv, b, s)[col];
    const float nm = fmaxf(mx, z);
    const float scale = expf(mx - nm), e = expf(z - nm);
    sum = sum * scale + e;
    acc = acc * scale + e * a;
    mx = nm;
  };
  if (p.overlap) {
    if (i > 0)
      for (int r = 0; r < ratio; ++r) visit((i - 1) * ratio + r, ch);
    for (int r = 0; r < ratio; ++r) visit(i * ratio + r, p.c + ch);
  } else {
    for (int r = 0; r < ratio; ++r) visit(i * ratio + r, ch);
  }
  return acc / sum;
}

// The experts' clamped SwiGLU (SPEC 6): silu(min(g, limit)) * clamp(u, -limit, limit); NaN stays NaN.
LCATTN_HD float swiglu(float g, float u, float limit) {
  g = g > limit ? limit : g;
  u = u > limit ? limit : (u < -limit ? -limit : u);
  return g / (1.f + expf(-g)) * u;
}

LCATTN_HD float sqrt_softplus(float u) { return sqrtf(u > 20.f ? u : log1pf(expf(u))); }

// Routes token t (SPEC 6). Biased selection takes k times the best key after the previous pick
// in (key desc, expert asc) order; a NaN key counts as -inf, so k distinct experts always come out.
// Selection key of expert e for token t: sqrt_softplus(logit) + bias, with NaN as -inf.
LCATTN_HD float route_key(const RouteParams& p, int64_t t, int e) {
  const float key = sqrt_softplus(p.logits[t * p.E + e]) + (p.bias ? p.bias[e] : 0.f);
  return key != key ? -INFINITY : key;
}

// The routing weights of token t's chosen experts (indices already written).
LCATTN_HD void route_weights(const RouteParams& p, int64_t t) {
  const float* u = p.logits + t * p.E;
  const int* idx = p.indices + t * p.k;
  float* w = p.weights + t * p.k;
  float total = 0.f;
  bool any = false;  // an expert at all (hash routing gives -1 for none)
  for (int j = 0; j < p.k; ++j) {
    any |= idx[j] >= 0;
    total += w[j] = idx[j] >= 0 ? sqrt_softplus(u[idx[j]]) : 0.f;
  }
  for (int j = 0; j < p.k; ++j) w[j] = any ? w[j] / total * p.route_scale : 0.f;
}

// Experts of token t, best first: by key, a tie to the lower id; or the hash table's row. A token id
// outside [0, V) or a table entry outside [0, E) (unchecked input) gives -1, no expert, weight 0.
LCATTN_HD void route_token(const RouteParams& p, int64_t t) {
  int* idx = p.indices + t * p.k;
  if (p.tid2eid) {
    const int64_t token = p.token_ids[t];
    for (int j = 0; j < p.k; ++j) {
      const int e = token >= 0 && token < p.V ? p.tid2eid[token * p.k + j] : -1;
      idx[j] = e >= 0 && e < p.E ? e : -1;
    }
  } else {
    float prev_key = INFINITY;
    int prev = -1;
    for (int j = 0; j < p.k; ++j) {
      float best_key = -INFINITY;
      int best = -1;
      for (int e = 0; e < p.E; ++e) {
        const float key = route_key(p, t, e);
        const bool after_prev = key < prev_key || (key == prev_key && e > prev);
        if (after_prev && (best < 0 || key > best_key)) {
          best_key = key;
          best = e;
        }
      }
      idx[j] = best;
      prev_key = best_key;
      prev = best;
    }
  }
  route_weights(p, t);
}

// Sinkhorn normalisation of one n x n mHC matrix (SPEC 7), n <= N: with N a compile-time bound the
// matrix stays in registers. Each row or column is scaled by 1 / (sum + eps): one division per line.
template <int N>
LCATTN_HD void hc_sinkhorn_matrix(const float* logits, float* out, int n, int iters, float eps) {
  float a[N][N] = {};
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    float mx = -INFINITY, sum = 0.f;
    for (int j = 0; j < N; ++j)
      if (j < n) mx = fmaxf(mx, logits[i * n + j]);
    for (int j = 0; j < N; ++j)
      if (j < n) sum += (a[i][j] = expf(logits[i * n + j] - mx));
    const float inv = 1.f / sum;
    for (int j = 0; j < N; ++j) a[i][j] = a[i][j] * inv + eps;
  }
  for (int it = 0; it < iters; ++it) {
    if (it > 0) {  // rows (the first round has the softmax's)
      for (int i = 0; i < N; ++i) {
        float sum = 0.f;
        for (int j = 0; j < N; ++j)
          if (j < n) sum += a[i][j];
        const float inv = 1.f / (sum + eps);
        for (int j = 0; j < N; ++j) a[i][j] *= inv;
      }
    }
    for (int j = 0; j < N; ++j) {  // columns
      float sum = 0.f;
      for (int i = 0; i < N; ++i)
        if (i < n) sum += a[i][j];
      const float inv = 1.f / (sum + eps);
      for (int i = 0; i < N; ++i) a[i][j] *= inv;
    }
  }
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j)
      if (i < n && j < n) out[i * n + j] = a[i][j];
}

// Matrix m of p: V4's n = 4 on its own path, any other n up to kHcMaxStreams on the general one.
LCATTN_HD void hc_sinkhorn(const SinkhornParams& p, int64_t m) {
  const float* in = p.logits + m * p.n * p.n;
  float* out = p.out + m * p.n * p.n;
  if (p.n == 4)
    hc_sinkhorn_matrix<4>(in, out, 4, p.iters, p.eps);
  else
    hc_sinkhorn_matrix<kHcMaxStreams>(in, out, p.n, p.iters, p.eps);
}

// Sum j of one element (HcMixParams): post_j * out (when post) + sum_i comb_ij x_i over i < n, in that
// order; N >= n is a compile-time bound, so that x can stay in registers.
template <int N>
LCATTN_HD float hc_mix_element(const float* post, const float* comb, int n, int m, int j, float out, const float* x) {
  float acc = post ? post[j] * out : 0.f;
  for (int i = 0; i < N; ++i)
    if (i < n) acc += comb[i * m + j] * x[i];
  return acc;
}

}  // namespace lcattn
