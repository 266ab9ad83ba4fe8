// Gated grouped GEMM config n256_pingpong (gate+up with SwiGLU in the epilogue): tiles of 64 features x
// 256 rows x 64 K, one per consumer warpgroup (pingpong), clusters of 2 along the features.
#include "moe_gemm_sm90.cuh"

LCATTN_GROUPED_GEMM_SM90(n256_pingpong_gated, 64, 256, 64, 2, true, pingpong)
