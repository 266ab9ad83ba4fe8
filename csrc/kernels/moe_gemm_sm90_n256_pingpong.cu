// Grouped GEMM config n256_pingpong: tiles of 64 features x 256 rows x 64 K, one per consumer
// warpgroup (pingpong), clusters of 2 along the features.
#include "moe_gemm_sm90.cuh"

LCATTN_GROUPED_GEMM_SM90(n256_pingpong, 64, 256, 64, 2, false, pingpong)
