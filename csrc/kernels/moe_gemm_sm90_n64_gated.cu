// Gated grouped GEMM config n64 (gate+up with SwiGLU in the epilogue): tiles of 256 features x 64 rows x 64 K,
// clusters of 1 along the features.
#include "moe_gemm_sm90.cuh"

LCATTN_GROUPED_GEMM_SM90(n64_gated, 256, 64, 64, 1, true)
