// Grouped GEMM config n128: tiles of 128 features x 128 rows x 64 K, clusters of 2 along the features.
#include "moe_gemm_sm90.cuh"

LCATTN_GROUPED_GEMM_SM90(n128, 128, 128, 64, 2, false)
