// Gated grouped GEMM config n128 (gate+up with SwiGLU in the epilogue): tiles of 256 features x 128 rows x 64 K.
#include "moe_gemm_sm90.cuh"

LCATTN_GROUPED_GEMM_SM90(n128_gated, 256, 128, 64, 1, true)
