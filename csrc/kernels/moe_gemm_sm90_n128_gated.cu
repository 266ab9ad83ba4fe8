// Gated grouped GEMM config n128 (gate+up with SwiGLU in the epilogue): tiles of 128 features x 128 rows x 64 K,
// clusters of 2 along the features.
#include "moe_gemm_sm90.cuh"

LCATTN_GROUPED_GEMM_SM90(n128_gated, 128, 128, 64, 2, true)
