// Grouped GEMM config n128: tiles of 256 features x 128 rows x 64 K (weights two thirds of a stage).
#include "moe_gemm_sm90.cuh"

LCATTN_GROUPED_GEMM_SM90(n128, 256, 128, 64, 1, false)
