// Grouped GEMM config n256: tiles of 128 features x 256 rows x 64 K, clusters of 2 along the features.
#include "moe_gemm_sm90.cuh"

LCATTN_GROUPED_GEMM_SM90(n256, 128, 256, 64, 2, false)
