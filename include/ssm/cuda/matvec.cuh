#pragma once
// Matrix-vector products for decoding, where a step multiplies each weight matrix by a few rows only
// and a general GEMM's launch and ramp-up cost more than the bytes: y[b, o] = Σ_i W[o, i]·x[b, i]
// (+ bias[o]) for rows b < batch, W (outs, ins) stored as X (float or bf16), accumulation in float.
// x is formed in shared memory by an input policy (rows of matrices, or a normalized residual row) and
// rounded to X, as the GEMM path rounds a product's input; each y goes to an output policy (a store,
// an add to the residual stream, or a convolution step), so the layers around a product run in it.
//
// A warp per output row, weights read once in 16-byte loads; a warp requests its first row before
// waiting for the previous kernel (launch_overlapped), so that the weight traffic of a decoding step
// overlaps the small kernels it alternates with.
#include <cuda_runtime.h>

#include <algorithm>
#include <concepts>

#include "../core/math.hpp"
#include "../core/storage.hpp"
#include "layers.cuh"
#include "selective_scan.cuh"

namespace ssm::cuda {

inline constexpr int matvec_warps = 4;        // warps a block
inline constexpr int matvec_tile = 8;         // batch rows a block serves: accumulators a lane
inline constexpr int matvec_prefetch = 8;     // 16-byte loads a lane has in flight
inline constexpr index_t matvec_shared = 48 * 1024;

// A float rounded to X and back: the value a product with X inputs sees.
template <class X>
__device__ inline float rounded_to(float v) {
    return to_float(from_float<X>(v));
}

// Input policies: value(b, i) is input i of batch row b; `norm` (weight, ε) when the rows are then
// RMS-normalized, x = value / sqrt(mean(value²) + ε) · weight (RMSNorm's weight null: taken as they are).
struct rms_norm {
    const float* weight = nullptr;
    float epsilon = 0.0f;
};

// Rows of a float matrix (row stride `stride`); with `second`, columns from `split` on come from a
// second matrix (row stride second_stride): the two inputs of products summed as one.
struct rows_input {
    const float* first;
    index_t stride;
    const float* second = nullptr;
    index_t second_stride = 0, split = 0;
    rms_norm norm{};

    __device__ float operator()(index_t b, index_t i) const {
        return second && i >= split ? second[b * second_stride + i - split] : first[b * stride + i];
    }
};

// RMSNorm of residual stream rows (row stride `stride`).
struct rms_normed_input {
    const float* hidden;
    index_t stride;
    rms_norm norm;

    __device__ float operator()(index_t b, index_t i) const { return hidden[b * stride + i]; }
};

// Mamba-2's gated norm: y·SiLU(z), normalized; y with row stride y_stride, z with z_stride.
struct gated_normed_input {
    const float* y;
    index_t y_stride;
    const float* z;
    index_t z_stride;
    rms_norm norm;

    __device__ float operator()(index_t b, index_t i) const { return y[b * y_stride + i] * math::silu(z[b * z_stride + i]); }
};

// x (rows, ins) = the input policy's values of batch rows b0.., normalized when the policy says so,
// rounded to X. All threads of the block call it; each keeps several loads in flight.
template <class X, class Input>
__device__ void load_inputs(const Input& input, float* x, index_t b0, int rows, int ins) {
    constexpr int ahead = 8;
    const int count = rows * ins, threads = int(blockDim.x);
    for (int base = int(threadIdx.x); base < count; base += ahead * threads) {
        float v[ahead];
#pragma unroll
        for (int u = 0; u < ahead; ++u) {
            const int k = base + u * threads;
            if (k < count) v[u] = input(b0 + k / ins, k % ins);
        }
#pragma unroll
        for (int u = 0; u < ahead; ++u) {
            const int k = base + u * threads;
            if (k < count) x[k] = v[u];
        }
    }
    __syncthreads();
    const rms_norm norm = input.norm;
    if (!norm.weight) {
        for (int k = int(threadIdx.x); k < count; k += threads) x[k] = rounded_to<X>(x[k]);
        return;
    }
    __shared__ float partial[matvec_tile][matvec_warps];
    const int warp = int(threadIdx.x / 32), lane = int(threadIdx.x % 32);
    for (int r = 0; r < rows; ++r) {
        float squares = 0.0f;
        for (int i = int(threadIdx.x); i < ins; i += threads) squares += x[r * ins + i] * x[r * ins + i];
        squares = lanes_sum(squares, 32);
        if (lane == 0) partial[r][warp] = squares;
    }
    __syncthreads();
    for (int r = 0; r < rows; ++r) {
        float squares = 0.0f;
        for (int w = 0; w < matvec_warps; ++w) squares += partial[r][w];
        const float scale = rsqrtf(squares / float(ins) + norm.epsilon);
        for (int i = int(threadIdx.x); i < ins; i += threads)
            x[r * ins + i] = rounded_to<X>(x[r * ins + i] * scale * norm.weight[i]);
    }
}

// Output policies: (b, o, y) for each output, called once each.

struct store_output {
    float* y;
    index_t stride;
    __device__ void operator()(index_t b, index_t o, float v) const { y[b * stride + o] = v; }
};

// The residual connection: the product is added to the residual stream.
struct residual_output {
    float* hidden;
    index_t stride;
    __device__ void operator()(index_t b, index_t o, float v) const { hidden[b * stride + o] += v; }
};

// An in_proj of a decoding step: every output is stored in `projected`; those of the convolved columns
// [first, first + channels) also take a step of their channel's causal conv (+ SiLU) into `convolved`
// (row stride channels) and, with a global window (Mamba-1's global selection), that value a step of
// the global conv (no SiLU) into `window`.
struct conv_step_output {
    float* projected;
    index_t stride, first, channels, kernel;
    const float* weight;
    const float* bias;  // or null
    float* state;       // (batch, channels, kernel - 1)
    float* convolved;
    index_t global_kernel = 0;
    const float* global_weight = nullptr;
    float* global_state = nullptr;
    float* window = nullptr;

    __device__ void operator()(index_t b, index_t o, float v) const {
        projected[b * stride + o] = v;
        const index_t c = o - first;
        if (c < 0 || c >= channels) return;
        const index_t bc = b * channels + c;
        const float x =
            conv_step(v, weight + c * kernel, bias ? bias[c] : 0.0f, state + bc * (kernel - 1), kernel, true);
        convolved[bc] = x;
        if (global_kernel > 0)
            window[bc] = conv_step(x, global_weight + c * global_kernel, 0.0f, global_state + bc * (global_kernel - 1),
                                   global_kernel, false);
    }
};

template <class X>
__device__ inline void unpack(const uint4& v, float (&out)[16 / sizeof(X)]) {
    const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        if constexpr (std::same_as<X, float>) {
            out[k] = __uint_as_float(words[k]);
        } else {  // two bf16, the lower half first
            out[2 * k] = __uint_as_float(words[k] << 16);
            out[2 * k + 1] = __uint_as_float(words[k] & 0xffff0000u);
        }
    }
}

// Grid: (blocks over the output rows, tiles of `tile` batch rows); warps take output rows in turn.
// Rows of W whose bytes are not a multiple of 16 are read element by element.
template <class X, class Input, class Output>
__global__ void __launch_bounds__(matvec_warps * 32)
    matvec_kernel(const X* weight, const float* bias, index_t outs, index_t ins, index_t batch, int tile, Input input,
                  Output output) {
    extern __shared__ float x[];  // (rows, ins)
    constexpr int per_load = 16 / sizeof(X);
    const int lane = int(threadIdx.x % 32);
    const index_t loads = ins % per_load == 0 ? ins / per_load : 0;  // 16-byte loads a row
    const index_t first = index_t(blockIdx.x) * matvec_warps + threadIdx.x / 32;
    const index_t step = index_t(gridDim.x) * matvec_warps;
    const auto* w4 = reinterpret_cast<const uint4*>(weight);
    uint4 ahead[matvec_prefetch];
#pragma unroll
    for (int k = 0; k < matvec_prefetch; ++k) {
        const index_t j = lane + 32 * k;
        if (first < outs && j < loads) ahead[k] = __ldg(w4 + first * loads + j);
    }
    let_next_kernel_start();
    wait_for_previous_kernel();
    const index_t b0 = index_t(blockIdx.y) * tile;
    const int rows = batch - b0 < tile ? int(batch - b0) : tile;
    load_inputs<X>(input, x, b0, rows, int(ins));
    __syncthreads();
    for (index_t o = first; o < outs; o += step) {
        float acc[matvec_tile] = {};
        for (index_t j0 = 0; j0 < loads; j0 += 32 * matvec_prefetch) {
            uint4 w[matvec_prefetch];
            const bool fetched = o == first && j0 == 0;
#pragma unroll
            for (int k = 0; k < matvec_prefetch; ++k) {
                const index_t j = j0 + lane + 32 * k;
                if (j < loads) w[k] = fetched ? ahead[k] : __ldg(w4 + o * loads + j);
            }
#pragma unroll
            for (int k = 0; k < matvec_prefetch; ++k) {
                const index_t j = j0 + lane + 32 * k;
                if (j >= loads) continue;
                float wf[per_load];
                unpack<X>(w[k], wf);
#pragma unroll
                for (int r = 0; r < matvec_tile; ++r) {
                    if (r >= rows) continue;
                    const float* xr = x + r * ins + j * per_load;
#pragma unroll
                    for (int e = 0; e < per_load; ++e) acc[r] += wf[e] * xr[e];
                }
            }
        }
        for (index_t i = loads * per_load + lane; i < ins; i += 32) {
            const float wi = to_float(weight[o * ins + i]);
#pragma unroll
            for (int r = 0; r < matvec_tile; ++r)
                if (r < rows) acc[r] += wi * x[r * ins + i];
        }
        float mine = 0.0f;  // lane r reduces and writes batch row r
#pragma unroll
        for (int r = 0; r < matvec_tile; ++r) {
            if (r >= rows) continue;  // rows is the same in the whole warp
            const float sum = lanes_sum(acc[r], 32);
            if (lane == r) mine = sum;
        }
        if (lane < rows) output(b0 + lane, o, mine + (bias ? bias[o] : 0.0f));
    }
}

// Queues y = x·Wᵀ (+ bias) for `batch` rows, launched overlapped. ins is at most 12,288 (one row of x
// in shared memory). Grids stop at what the device holds at once; warps then take further rows.
template <class X, class Input, class Output>
void matvec(const cuda_exec& exec, const X* weight, const float* bias, index_t outs, index_t ins, index_t batch,
            const Input& input, const Output& output) {
    detail::require(ins > 0 && ins * index_t(sizeof(float)) <= matvec_shared, "matvec: ", ins,
                    " input features do not fit in shared memory (at most ", matvec_shared / index_t(sizeof(float)),
                    ")");
    if (outs == 0 || batch == 0) return;
    const int tile = int(std::min<index_t>({matvec_tile, batch, matvec_shared / (ins * index_t(sizeof(float)))}));
    const index_t tiles = (batch + tile - 1) / tile;
    const std::size_t shared_bytes = std::size_t(tile * ins) * sizeof(float);
    const auto kernel = matvec_kernel<X, Input, Output>;
    int device = 0, processors = 0, resident = 0;
    check(cudaGetDevice(&device), "matvec: device");
    check(cudaDeviceGetAttribute(&processors, cudaDevAttrMultiProcessorCount, device), "matvec: device attribute");
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, matvec_warps * 32, shared_bytes),
          "matvec: occupancy");
    const index_t wanted = (outs + matvec_warps - 1) / matvec_warps;
    const index_t blocks = std::clamp<index_t>(index_t(processors) * resident / tiles, 1, wanted);
    detail::require(tiles <= 65535, "matvec: ", batch, " rows exceed the grid");
    launch_overlapped("matvec: launch", kernel, dim3(unsigned(blocks), unsigned(tiles)), dim3(matvec_warps * 32),
                      shared_bytes, exec.stream, weight, bias, outs, ins, batch, tile, input, output);
}

}  // namespace ssm::cuda
