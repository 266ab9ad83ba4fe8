// Grouped GEMM for MoE on sm_90a (SPEC 6) with CUTLASS 3.x: TMA loads, WGMMA, warp-specialized
// persistent kernels over all experts' tiles, fp32 accumulate, bf16 out. Each config is
// instantiated in its own moe_gemm_sm90_<tile>.cu (one CUTLASS kernel per file keeps the build's
// memory and time per file low).
//
// The product runs swapped: y_e^T [N, rows_e] = w_e [N, K] . x_e^T [K, rows_e]. An expert's output
// features (N, thousands) are the tile's M and its token rows (a few in decode, hundreds in prefill)
// the tile's N, so a decode tile wastes no tensor-core work on padding rows and its shared memory
// goes to weights in flight. All three operands stay in their natural layouts: w_e and x_e are
// K-major, and y_e^T column-major is y_e row-major.
//
// The per-expert problems are written on the device from offsets or counts by each CTA of
// grouped_gemm_kernel before the CUTLASS kernel runs in it (one launch per call, no host sync, so a
// call replays in a CUDA graph with new offsets); CUTLASS reads them there (no host problem shapes)
// and updates its TMA descriptors per expert.
//
// Gated (p.gated, moe_experts' gate+up projection): w_e's rows hold gate and up interleaved in
// blocks of 8, so a WGMMA accumulator thread holds the gate of feature f (tile row r, r % 16 < 8) and
// its up (row r + 8) side by side; SwigluEpilogue combines them in registers and writes h_e [rows_e,
// N/2] directly, with no [rows_e, N] intermediate.
#pragma once
#include <cuda_runtime_api.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "cutlass/epilogue/collective/detail.hpp"
#include "common/device.h"
#include "lcattn/params.h"
#include "lcattn/shared_math.h"
#include "lcattn/switches.h"
#include "moe_gemm_sm90.h"

namespace lcattn::moe_sm90 {

using namespace cute;

// Collective epilogue (operator-style, stores from registers) for the gated product: out feature
// f = 8 (r / 16) + r % 8 of tile row r gets swiglu(acc[r], acc[r + 8]) for r % 16 < 8.
template <class StrideD_>
class SwigluEpilogue {
 public:
  using EpilogueSchedule = cutlass::epilogue::PtrArrayNoSmemWarpSpecialized;
  using DispatchPolicy = EpilogueSchedule;
  using ThreadEpilogueOp = void;
  using ElementAccumulator = float;
  using ElementC = void;
  using StrideC = StrideD_;
  using InternalStrideC = cute::remove_pointer_t<StrideC>;
  using ElementD = cutlass::bfloat16_t;
  using StrideD = StrideD_;
  using InternalStrideD = cute::remove_pointer_t<StrideD>;
  using GmemTiledCopyC = void;
  using GmemTiledCopyD = void;
  struct SharedStorage {};
  using TensorMapStorage = SharedStorage;

  struct Arguments {
    float swiglu_limit = 0.f;
    ElementD** ptr_D = nullptr;  // per expert: h_e [rows_e, N / 2] row-major
    StrideD dD{};                // per expert: (1, N / 2, 0), i.e. h_e^T column-major
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&, int) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*, cudaStream_t,
                                              cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }
  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const&) {
    return true;
  }

  CUTLASS_HOST_DEVICE SwigluEpilogue(Params const& params) : params(params) {}
  CUTLASS_DEVICE bool is_source_needed() { return false; }

  // accumulators: (MMA, MMA_M, MMA_N) with MMA = (2 columns, 2 row halves 8 apart, N / 8 column
  // blocks), the sm90 WGMMA register layout; the tile's M offset is a multiple of 16.
  template <class ProblemShapeMNKL, class BlockShapeMNK, class BlockCoordMNKL, class FrgEngine, class FrgLayout,
            class TiledMma, class ResidueMNK>
  CUTLASS_DEVICE void operator()(ProblemShapeMNKL problem_mnkl, BlockShapeMNK blk_shape, BlockCoordMNKL blk_coord,
                                 cute::Tensor<FrgEngine, FrgLayout> const& acc, TiledMma tiled_mma, ResidueMNK,
                                 int thread_idx, char*) {
    static_assert(is_static<FrgLayout>::value && rank<0>(FrgLayout{}) == 3, "WGMMA accumulator layout expected");
    static_assert(size<0, 0>(FrgLayout{}) == 2 && size<0, 1>(FrgLayout{}) == 2, "WGMMA accumulator layout expected");
    const int M = get<0>(problem_mnkl), N = get<1>(problem_mnkl);
    const int l = get<3>(blk_coord);
    ElementD* out = params.ptr_D[l];
    const int64_t ld = get<1>(params.dD[l]);
    Tensor coords = local_tile(make_identity_tensor(make_shape(M, N)), take<0, 2>(blk_shape),
                               make_coord(get<0>(blk_coord), get<1>(blk_coord)));
    Tensor thr_coords = tiled_mma.get_thread_slice(thread_idx).partition_C(coords);
    CUTLASS_PRAGMA_UNROLL
    for (int mm = 0; mm < size<1>(acc); ++mm) {
      CUTLASS_PRAGMA_UNROLL
      for (int nn = 0; nn < size<2>(acc); ++nn) {
        CUTLASS_PRAGMA_UNROLL
        for (int j = 0; j < size<0, 2>(acc); ++j) {
          CUTLASS_PRAGMA_UNROLL
          for (int c = 0; c < 2; ++c) {
            const auto gate = make_coord(make_coord(c, 0, j), mm, nn);
            const auto up = make_coord(make_coord(c, 1, j), mm, nn);
            const int r = get<0>(thr_coords(gate)), n = get<1>(thr_coords(gate));
            if (r < M && n < N)
              out[n * ld + r / 16 * 8 + r % 8] = ElementD(swiglu(acc(gate), acc(up), params.swiglu_limit));
          }
        }
      }
    }
  }

 protected:
  Params params;
};

// TileShape (features, rows, K); cluster along features, so the CTAs of a cluster share (multicast)
// the token rows they read.
template <class TileShape, class ClusterShape, bool Gated>
struct GroupedGemm {
  using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // (N, rows_e, K) per expert
  using Element = cutlass::bfloat16_t;
  using LayoutA = cutlass::layout::RowMajor;     // w_e [N, K]
  using LayoutB = cutlass::layout::ColumnMajor;  // x_e^T [K, rows_e], i.e. x_e [rows_e, K] row-major
  using LayoutD = cutlass::layout::ColumnMajor;  // y_e^T [N, rows_e], i.e. y_e [rows_e, N] row-major
  static constexpr int kAlign = 8;               // 16 bytes: K and N multiples of 8
  using StoreEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD*, kAlign, Element, LayoutD*, kAlign,
      cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
      cutlass::epilogue::fusion::LinearCombination<Element, float, void>>::CollectiveOp;
  using Epilogue = cute::conditional_t<Gated,
                                       cutlass::epilogue::collective::detail::Sm90TmaWarpSpecializedAdapter<
                                           SwigluEpilogue<cutlass::detail::TagToStrideC_t<LayoutD*>>>,
                                       StoreEpilogue>;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlign, Element, LayoutB*, kAlign, float,
      TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Tile = TileShape;
  using Cluster = ClusterShape;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
  using Shape3 = typename ProblemShape::UnderlyingProblemShape;

  // Per-expert arrays grouped_gemm_kernel fills, carved from the front of the workspace; CUTLASS's own
  // workspace (its per-SM TMA descriptors) follows.
  struct Arrays {
    Shape3* shapes;
    const Element** a;
    const Element** b;
    Element** d;
    StrideA* stride_a;
    StrideB* stride_b;
    StrideD* stride_d;
    void* cutlass;
  };

  static size_t align(size_t n) { return (n + 255) / 256 * 256; }

  static Arrays carve(void* workspace, int E) {
    char* at = static_cast<char*>(workspace);
    auto take = [&](size_t bytes) {
      char* here = at;
      at += align(bytes * size_t(E));
      return here;
    };
    Arrays arr;
    arr.shapes = reinterpret_cast<Shape3*>(take(sizeof(Shape3)));
    arr.a = reinterpret_cast<const Element**>(take(sizeof(void*)));
    arr.b = reinterpret_cast<const Element**>(take(sizeof(void*)));
    arr.d = reinterpret_cast<Element**>(take(sizeof(void*)));
    arr.stride_a = reinterpret_cast<StrideA*>(take(sizeof(StrideA)));
    arr.stride_b = reinterpret_cast<StrideB*>(take(sizeof(StrideB)));
    arr.stride_d = reinterpret_cast<StrideD*>(take(sizeof(StrideD)));
    arr.cutlass = at;
    return arr;
  }

  static size_t arrays_bytes(int E) {
    return align(sizeof(Shape3) * E) + 3 * align(sizeof(void*) * E) + align(sizeof(StrideA) * E) +
           align(sizeof(StrideB) * E) + align(sizeof(StrideD) * E);
  }

  static typename Kernel::Arguments arguments(const GroupedGemmParams& p, const Arrays& arr, int device, int num_sms) {
    cutlass::KernelHardwareInfo hw;
    hw.device_id = device;
    hw.sm_count = num_sms;
    typename Kernel::Arguments args{cutlass::gemm::GemmUniversalMode::kGrouped,
                                    {p.E, arr.shapes, nullptr},
                                    {arr.a, arr.stride_a, arr.b, arr.stride_b},
                                    {},
                                    hw};
    // The scheduler walks an expert's row tiles before its feature tiles (CUTLASS's grouped default
    // walks the features first), so the row tiles that read one weight tile run side by side and the
    // later ones find it in L2 rather than streaming it again from HBM. LCATTN_GROUPED_GEMM_RASTER=m
    // takes CUTLASS's order (read per call, to compare the two).
    using Raster = decltype(args.scheduler.raster_order);
    args.scheduler.raster_order = env_is("LCATTN_GROUPED_GEMM_RASTER", "m") ? Raster::AlongM : Raster::AlongN;
    if constexpr (Gated) {
      args.epilogue = {p.swiglu_limit, arr.d, arr.stride_d};
    } else {
      args.epilogue = {{}, nullptr, nullptr, arr.d, arr.stride_d};
      args.epilogue.thread.alpha = 1.f;
      args.epilogue.thread.beta = 0.f;
    }
    return args;
  }

  static size_t workspace_bytes(const GroupedGemmParams& p, int device, int num_sms) {
    const Arrays none = carve(nullptr, p.E);
    return arrays_bytes(p.E) + Kernel::get_workspace_size(arguments(p, none, device, num_sms));
  }
};

// Expert e's problem (N, rows, K), operand pointers and strides, written into group e of the arrays
// CUTLASS reads. Rows come from p.expert_rows, so no offset or count makes the GEMM touch memory
// outside x or y.
template <class G>
struct ProblemWriter {
  GroupedGemmParams p;
  typename G::Arrays arr;
  typename G::StrideA stride_a;
  typename G::StrideB stride_b;
  typename G::StrideD stride_d;

  __device__ void write(int e) const {
    int64_t begin;
    int rows;
    p.expert_rows(e, begin, rows);
    arr.shapes[e] = typename G::Shape3(p.N, rows, p.K);
    arr.a[e] = reinterpret_cast<const typename G::Element*>(p.w) + int64_t(e) * p.N * p.K;
    arr.b[e] = reinterpret_cast<const typename G::Element*>(p.x) + begin * p.K;
    arr.d[e] = reinterpret_cast<typename G::Element*>(p.y) + begin * p.out_cols();
    arr.stride_a[e] = stride_a;
    arr.stride_b[e] = stride_b;
    arr.stride_d[e] = stride_d;
  }

  // The masked layout's rows [counts[e], M) of y_e are zeros: 8 bf16 at a time (p.out_cols() % 8 ==
  // 0), thread `t` of `threads` taking every threads-th piece of expert e's tail.
  __device__ void zero_tail(int e, int64_t t, int64_t threads) const {
    int64_t begin;
    int rows;
    p.expert_rows(e, begin, rows);
    uint4* tail = reinterpret_cast<uint4*>(p.y + (begin + rows) * p.out_cols());
    const int64_t n = int64_t(p.M - rows) * p.out_cols() / 8;
    for (int64_t i = t; i < n; i += threads) tail[i] = make_uint4(0, 0, 0, 0);
  }
};

// The CUTLASS kernel with the setup in front, one launch per call: every CTA writes every expert's
// problem (the same values), so whichever groups CUTLASS's scheduler reads, this CTA's own writes,
// ordered by the barrier, have put this call's problems there; CTA c zeroes the masked tails of
// experts c, c + gridDim.x, ... (rows the GEMM does not write).
template <class G>
__global__ void __launch_bounds__(G::Kernel::MaxThreadsPerBlock, G::Kernel::MinBlocksPerMultiprocessor)
    grouped_gemm_kernel(CUTLASS_GRID_CONSTANT typename G::Kernel::Params const params, const ProblemWriter<G> writer) {
  const int ctas = gridDim.x * gridDim.y, cta = blockIdx.y * gridDim.x + blockIdx.x;
  for (int e = threadIdx.x; e < writer.p.E; e += blockDim.x) writer.write(e);
  if (writer.p.counts)
    for (int e = cta; e < writer.p.E; e += ctas) writer.zero_tail(e, threadIdx.x, blockDim.x);
  __syncthreads();
  extern __shared__ char smem[];
  typename G::Kernel op;
  op(params, smem);
}

template <class G>
size_t workspace_bytes(const GroupedGemmParams& p) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  return G::workspace_bytes(p, device, device_sm_count(device));
}

template <class G>
cudaError_t run(const GroupedGemmParams& p, cudaStream_t stream) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const int num_sms = device_sm_count(device);
  if (num_sms == 0) return cudaErrorInvalidDevice;
  const typename G::Arrays arr = G::carve(p.workspace, p.E);
  const ProblemWriter<G> writer{
      p, arr, cutlass::make_cute_packed_stride(typename G::StrideA{}, make_shape(p.N, p.K, 1)),
      cutlass::make_cute_packed_stride(typename G::StrideB{}, make_shape(p.M, p.K, 1)),
      cutlass::make_cute_packed_stride(typename G::StrideD{}, make_shape(p.out_cols(), p.M, 1))};
  const int ctas =
      grid_ctas(p, size<0>(typename G::Tile{}), size<1>(typename G::Tile{}), size<0>(typename G::Cluster{}), num_sms);
  const auto args = G::arguments(p, arr, device, ctas);
  using Kernel = typename G::Kernel;
  if (!Kernel::can_implement(args)) return cudaErrorInvalidValue;
  if (Kernel::initialize_workspace(args, arr.cutlass, stream) != cutlass::Status::kSuccess)
    return cudaErrorInvalidValue;
  typename Kernel::Params params = Kernel::to_underlying_arguments(args, arr.cutlass);
  const void* kernel = reinterpret_cast<const void*>(grouped_gemm_kernel<G>);
  static PerDevice<cudaError_t> smem_limit;
  if ((err = allow_dynamic_smem(smem_limit, kernel, Kernel::SharedStorageSize)) != cudaSuccess) return err;
  cudaLaunchConfig_t config = {};
  config.gridDim = Kernel::get_grid_shape(params);
  config.blockDim = Kernel::get_block_shape();
  config.dynamicSmemBytes = Kernel::SharedStorageSize;
  config.stream = stream;
  cudaLaunchAttribute cluster;  // CTAs along the features that multicast the rows they share
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = size<0>(typename G::Cluster{});
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  config.attrs = &cluster;
  config.numAttrs = cluster.val.clusterDim.x > 1 ? 1 : 0;
  void* kernel_params[] = {&params, const_cast<ProblemWriter<G>*>(&writer)};
  return cudaLaunchKernelExC(&config, kernel, kernel_params);
}

}  // namespace lcattn::moe_sm90

// One config per file: defines grouped_gemm_<name> and grouped_gemm_workspace_<name>.
#define LCATTN_GROUPED_GEMM_SM90(name, TILE_M, TILE_N, TILE_K, CLUSTER_M, GATED)                                       \
  namespace lcattn::moe_sm90 {                                                                                         \
  using Gemm_##name = GroupedGemm<Shape<Int<TILE_M>, Int<TILE_N>, Int<TILE_K>>, Shape<Int<CLUSTER_M>, _1, _1>, GATED>; \
  cudaError_t grouped_gemm_##name(const GroupedGemmParams& p, cudaStream_t stream) {                                   \
    return run<Gemm_##name>(p, stream);                                                                                \
  }                                                                                                                    \
  size_t grouped_gemm_workspace_##name(const GroupedGemmParams& p) { return workspace_bytes<Gemm_##name>(p); }         \
  }
