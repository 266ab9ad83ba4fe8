// Gated grouped GEMM config n32 (gate+up with SwiGLU in the epilogue): tiles of 128 features x 32 rows x 128 K,
// clusters of 1 along the features.
#include "moe_gemm_sm90.cuh"

LCATTN_GROUPED_GEMM_SM90(n32_gated, 128, 32, 128, 1, true)
