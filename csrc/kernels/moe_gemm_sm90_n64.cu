// Grouped GEMM config n64: tiles of 256 features x 64 rows x 64 K, clusters of 1 along the features.
#include "moe_gemm_sm90.cuh"

LCATTN_GROUPED_GEMM_SM90(n64, 256, 64, 64, 1, false)
