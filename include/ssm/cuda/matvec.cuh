#pragma once
// Matrix-vector products for decoding, where a step multiplies each weight matrix by a few rows only
// and a general GEMM's launch and ramp-up cost more than the bytes: y[b, o] = Σ_i W[o, i]·x[b, i]
// (+ bias[o]) for rows b < batch, W (outs, ins) stored as X (float or bf16), accumulation in float.
// x is formed in shared memory by an input policy (rows of matrices, or a normalized residual row) and
// rounded to X, as the GEMM path rounds a product's input; each y goes to an output policy (a store,
// an add to the residual stream, or a convolution step), so the layers around a product run in it.
//
// Each block copies a group of W's rows into shared memory before waiting for the previous kernel
// (launch_overlapped), so that the weight traffic of a decoding step overlaps the small kernels it
// alternates with; warps then take the group's rows, lanes 16-byte pieces of a row.
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <concepts>
#include <cstdint>

#include "../core/math.hpp"
#include "../core/storage.hpp"
#include "layers.cuh"
#include "selective_scan.cuh"

namespace ssm::cuda {

inline constexpr int matvec_warps = 4;               // warps a block
inline constexpr int matvec_tile = 8;                // batch rows a block serves: accumulators a lane
inline constexpr int matvec_group = 64;              // most rows of W a block takes
inline constexpr index_t matvec_rows_bytes = 24 * 1024;  // bytes of W a block takes, one row at least
inline constexpr index_t matvec_shared = 160 * 1024;  // dynamic shared memory a block at most

SSM_HOST_DEVICE constexpr std::size_t aligned_bytes(std::size_t bytes) { return (bytes + 15) / 16 * 16; }

// A float rounded to X and back: the value a product with X inputs sees.
template <class X>
__device__ inline float rounded_to(float v) {
    return to_float(from_float<X>(v));
}

// Input policies: input.value(input.load(b, i)) is input i of batch row b — what load reads, value
// computes from it, so that a block issues all its loads before any arithmetic that might hold them
// back (SiLU's exp in between kept Mamba-2's gated-norm loads to about one round trip at a time) — and
// `norm` (weight, ε) says whether the rows are then RMS-normalized, x = value / sqrt(mean(value²) + ε)
// · weight, or (weight null) taken as they are.
struct rms_norm {
    const float* weight = nullptr;
    float epsilon = 0.0f;
};

// Rows of a float matrix (row stride `stride`).
struct rows_input {
    const float* x;
    index_t stride;
    rms_norm norm{};

    __device__ float load(index_t b, index_t i) const { return x[b * stride + i]; }
    __device__ static float value(float v) { return v; }
};

// RMSNorm of residual stream rows (row stride `stride`).
struct rms_normed_input {
    const float* hidden;
    index_t stride;
    rms_norm norm;

    __device__ float load(index_t b, index_t i) const { return hidden[b * stride + i]; }
    __device__ static float value(float v) { return v; }
};

// Mamba-2's gated norm: y·SiLU(z), normalized; y with row stride y_stride, z with z_stride.
struct gated_normed_input {
    const float* y;
    index_t y_stride;
    const float* z;
    index_t z_stride;
    rms_norm norm;

    __device__ float2 load(index_t b, index_t i) const { return {y[b * y_stride + i], z[b * z_stride + i]}; }
    __device__ static float value(float2 yz) { return yz.x * math::silu(yz.y); }
};

// Copies count elements to shared memory: asynchronously in 16-byte pieces when `pieces` (count a
// multiple of 16 bytes, both ends aligned; the caller commits and waits), else one by one.
template <class T>
__device__ void stage(T* to, const T* from, int count, bool pieces) {
    if (pieces) {
        for (int k = int(threadIdx.x); k < count * int(sizeof(T)) / 16; k += int(blockDim.x))
            __pipeline_memcpy_async(reinterpret_cast<uint4*>(to) + k, reinterpret_cast<const uint4*>(from) + k, 16);
    } else {
        for (int k = int(threadIdx.x); k < count; k += int(blockDim.x)) to[k] = from[k];
    }
}

// x (rows, ins) = the input policy's values of batch rows b0.., normalized with norm_weight (staged in
// shared memory) when the policy has a norm, rounded to X. All threads of the block call it; each
// keeps several loads in flight.
template <class X, class Input>
__device__ void load_inputs(const Input& input, const float* norm_weight, float* x, index_t b0, int rows, int ins) {
    constexpr int ahead = 16;  // 1536 inputs of a row in one round trip
    const int count = rows * ins, threads = int(blockDim.x);
    for (int base = int(threadIdx.x); base < count; base += ahead * threads) {
        decltype(input.load(0, 0)) v[ahead];
#pragma unroll
        for (int u = 0; u < ahead; ++u) {
            const int k = base + u * threads;
            if (k < count) v[u] = input.load(b0 + k / ins, k % ins);
        }
#pragma unroll
        for (int u = 0; u < ahead; ++u) {
            const int k = base + u * threads;
            if (k < count) x[k] = input.value(v[u]);
        }
    }
    __pipeline_wait_prior(1);  // the norm's weight, staged before W
    __syncthreads();
    if (!norm_weight) {
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
        const float scale = rsqrtf(squares / float(ins) + input.norm.epsilon);
        for (int i = int(threadIdx.x); i < ins; i += threads)
            x[r * ins + i] = rounded_to<X>(x[r * ins + i] * scale * norm_weight[i]);
    }
}

// Output policies: (b, o, y) for each output, called once each; prefetch(b0, rows, o0, outs), called by
// every thread of a block before the previous kernel has finished, may start loads of what no kernel
// writes (or hint lines into L2) for the outputs [o0, o0 + outs) of batch rows [b0, b0 + rows).

struct store_output {
    float* y;
    index_t stride;
    __device__ void prefetch(index_t, int, index_t, int) const {}
    __device__ void operator()(index_t b, index_t o, float v) const { y[b * stride + o] = v; }
};

// The residual connection: the product is added to the residual stream.
struct residual_output {
    float* hidden;
    index_t stride;
    __device__ void prefetch(index_t, int, index_t, int) const {}
    __device__ void operator()(index_t b, index_t o, float v) const { hidden[b * stride + o] += v; }
};

// An in_proj of a decoding step: every output is stored in `projected`; those of the convolved columns
// [first, first + channels) also take a step of their channel's causal conv (+ SiLU) into `convolved`
// (row stride channels) and, with Mamba-1's global selection, a step of the global conv (+ SiLU) into
// `gate`.
struct conv_step_output {
    float* projected;
    index_t stride, first, channels, kernel;
    const float* weight;
    const float* bias;  // or null
    float* state;       // (batch, channels, kernel - 1)
    float* convolved;
    index_t global_kernel = 0;
    const float* global_weight = nullptr;
    const float* global_bias = nullptr;
    float* global_state = nullptr;
    float* gate = nullptr;

    // The taps and states of the convolved channels among the outputs: a memory round trip less.
    __device__ void prefetch(index_t b0, int rows, index_t o0, int outs) const {
        const index_t c0 = o0 > first ? o0 - first : 0;
        const index_t c1 = o0 + outs - first < channels ? o0 + outs - first : channels;
        if (c0 >= c1) return;
        const int bytes = int((c1 - c0) * index_t(sizeof(float)));  // a float of each channel
        const auto taps = [&](const float* w, const float* s, index_t k) {
            prefetch_rows_l2(w + c0 * k, 1, 0, bytes * int(k));
            prefetch_rows_l2(s + (b0 * channels + c0) * (k - 1), rows, channels * (k - 1) * index_t(sizeof(float)),
                             bytes * int(k - 1));
        };
        taps(weight, state, kernel);
        if (global_kernel > 0) taps(global_weight, global_state, global_kernel);
    }
    __device__ void operator()(index_t b, index_t o, float v) const {
        projected[b * stride + o] = v;
        const index_t c = o - first;
        if (c < 0 || c >= channels) return;
        const index_t bc = b * channels + c;
        convolved[bc] = conv_step(v, weight + c * kernel, bias ? bias[c] : 0.0f, state + bc * (kernel - 1), kernel);
        if (global_kernel > 0)
            gate[bc] = conv_step(v, global_weight + c * global_kernel, global_bias ? global_bias[c] : 0.0f,
                                 global_state + bc * (global_kernel - 1), global_kernel);
    }
};

// Mamba-1's in_proj of a decoding step: conv_step_output, and x_proj (x_proj_rows, channels) of the
// convolved channels, each block adding its share of every product to `x_sums` (batch, x_proj_rows)
// with atomic adds — which saves x_proj a kernel of its own; x_sums must be zero before
// (step_product_kernel clears it after use), and the order of the adds, so the sums' last bits, may
// differ between runs.
struct conv_x_proj_output : conv_step_output {
    const float* x_proj;
    index_t x_proj_rows;
    float* x_sums;

    __device__ void prefetch(index_t b0, int rows, index_t o0, int outs) const {
        conv_step_output::prefetch(b0, rows, o0, outs);
        const index_t c0 = o0 > first ? o0 - first : 0;
        const index_t c1 = o0 + outs - first < channels ? o0 + outs - first : channels;
        if (c0 < c1)
            prefetch_rows_l2(x_proj + c0, int(x_proj_rows), channels * index_t(sizeof(float)),
                             int((c1 - c0) * index_t(sizeof(float))));
    }
    // After every output of the block (and a barrier): its share of x_proj's products.
    __device__ void finish(index_t b0, int rows, index_t o0, int outs) const {
        const index_t c0 = o0 > first ? o0 - first : 0;
        const index_t c1 = o0 + outs - first < channels ? o0 + outs - first : channels;
        for (index_t k = threadIdx.x; k < rows * x_proj_rows && c0 < c1; k += blockDim.x) {
            const index_t b = b0 + k / x_proj_rows, r = k % x_proj_rows;
            float sum = 0.0f;
            for (index_t c = c0; c < c1; ++c) sum += x_proj[r * channels + c] * convolved[b * channels + c];
            atomicAdd(x_sums + b * x_proj_rows + r, sum);
        }
    }
};

// Where a block's dynamic shared memory holds a group of W's rows, the norm's weight (inputs with a
// norm) and the tile of x: byte offsets, 16-byte aligned.
struct matvec_layout {
    std::size_t norm = 0, x = 0, bytes = 0;
};

// Grid: (groups of `group` output rows, tiles of `tile` batch rows). A block copies its rows of W (and
// the norm's weight) to shared memory asynchronously before it waits for the previous kernel, so that
// the bytes are in flight without holding registers; then it stages x, each warp takes rows of the
// group (lanes 16-byte pieces of a row), and last the outputs go to the output policy all at once.
// With `pieces` false (rows not whole 16-byte pieces, or W not aligned) W is copied and read element
// by element.
template <class X, class Input, class Output>
__global__ void __launch_bounds__(matvec_warps * 32)
    matvec_kernel(const X* weight, const float* bias, index_t outs, index_t ins, index_t batch, int group, int tile,
                  bool pieces, matvec_layout layout, Input input, Output output) {
    extern __shared__ __align__(16) unsigned char staged[];
    __shared__ float results[matvec_group * matvec_tile];
    constexpr int per_load = 16 / sizeof(X);
    X* w = reinterpret_cast<X*>(staged);  // (group, ins)
    float* norm_weight = input.norm.weight ? reinterpret_cast<float*>(staged + layout.norm) : nullptr;
    float* x = reinterpret_cast<float*>(staged + layout.x);  // (tile, ins)
    const index_t o0 = index_t(blockIdx.x) * group;
    const int here = outs - o0 < group ? int(outs - o0) : group;
    // Two groups of copies: the norm's weight (possibly none), then W, which may still be in flight
    // while x is staged.
    if (norm_weight)
        stage(norm_weight, input.norm.weight, int(ins),
              ins % 4 == 0 && reinterpret_cast<std::uintptr_t>(input.norm.weight) % 16 == 0);
    __pipeline_commit();
    stage(w, weight + o0 * ins, here * int(ins), pieces);
    __pipeline_commit();
    const index_t b0 = index_t(blockIdx.y) * tile;
    const int rows = batch - b0 < tile ? int(batch - b0) : tile;
    output.prefetch(b0, rows, o0, here);
    let_next_kernel_start();  // its launch and weight copies may overlap this kernel from here on
    wait_for_previous_kernel();
    load_inputs<X>(input, norm_weight, x, b0, rows, int(ins));
    __pipeline_wait_prior(0);
    __syncthreads();
    const int lane = int(threadIdx.x % 32), loads = pieces ? int(ins) / per_load : 0;
    for (int r = int(threadIdx.x / 32); r < here; r += matvec_warps) {
        const X* wr = w + r * ins;
        float acc[matvec_tile] = {};
        for (int j = lane; j < loads; j += 32) {
            float wf[per_load];
            unpack<X>(reinterpret_cast<const uint4*>(wr)[j], wf);
#pragma unroll
            for (int b = 0; b < matvec_tile; ++b) {
                if (b >= rows) continue;  // x's rows are 16-byte aligned when W's are whole pieces
                const float4* xb = reinterpret_cast<const float4*>(x + b * ins) + j * (per_load / 4);
#pragma unroll
                for (int q = 0; q < per_load / 4; ++q) {
                    const float4 v = xb[q];
                    acc[b] += wf[4 * q] * v.x + wf[4 * q + 1] * v.y + wf[4 * q + 2] * v.z + wf[4 * q + 3] * v.w;
                }
            }
        }
        for (int i = loads * per_load + lane; i < ins; i += 32) {
            const float wi = to_float(wr[i]);
#pragma unroll
            for (int b = 0; b < matvec_tile; ++b)
                if (b < rows) acc[b] += wi * x[b * ins + i];
        }
#pragma unroll
        for (int b = 0; b < matvec_tile; ++b) {
            if (b >= rows) continue;  // rows is the same in the whole warp
            const float sum = lanes_sum(acc[b], 32);
            if (lane == 0) results[r * rows + b] = sum + (bias ? bias[o0 + r] : 0.0f);
        }
    }
    __syncthreads();
    for (int k = int(threadIdx.x); k < here * rows; k += int(blockDim.x))
        output(b0 + k % rows, o0 + k / rows, results[k]);
    if constexpr (requires { output.finish(b0, rows, o0, here); }) {
        __syncthreads();
        output.finish(b0, rows, o0, here);
    }
}

// Queues y = x·Wᵀ (+ bias) for `batch` rows, launched overlapped. A block's shared memory holds a row
// of W, one of x and the norm's weight at least: ins·(sizeof(X) + 8) bytes may not exceed
// matvec_shared (13,653 inputs in float32).
template <class X, class Input, class Output>
void matvec(const cuda_exec& exec, const X* weight, const float* bias, index_t outs, index_t ins, index_t batch,
            const Input& input, const Output& output) {
    const auto bytes = [](index_t count, std::size_t size) {
        return index_t(aligned_bytes(std::size_t(count) * size));
    };
    const index_t row = bytes(ins, sizeof(X)), x_row = bytes(ins, sizeof(float));
    const index_t norm = input.norm.weight ? x_row : 0;
    detail::require(ins > 0 && row + norm + x_row <= matvec_shared, "matvec: ", ins,
                    " input features do not fit in shared memory (a row of the ", storage_name<X>,
                    " matrix, one of x and the norm's weight: ", row + norm + x_row, " bytes, at most ", matvec_shared,
                    ")");
    if (outs == 0 || batch == 0) return;
    // x takes up to half the space, W's rows the rest, in groups small enough for two blocks a
    // multiprocessor where the matrix allows it.
    index_t tile = std::clamp<index_t>(matvec_shared / 2 / x_row, 1, std::min<index_t>(matvec_tile, batch));
    while (tile > 1 && row + norm + tile * x_row > matvec_shared) --tile;
    const int processors = device_attribute(cudaDevAttrMultiProcessorCount, "matvec: multiprocessors");
    const index_t spread = std::clamp<index_t>(outs / (2 * index_t(processors)), 1, matvec_group);
    const index_t room = std::min(matvec_rows_bytes, matvec_shared - norm - tile * x_row);
    const index_t group = std::clamp<index_t>(room / row, 1, spread);
    const index_t groups = (outs + group - 1) / group, tiles = (batch + tile - 1) / tile;
    detail::require(groups < (index_t(1) << 31) && tiles <= 65535, "matvec: ", outs, " outputs of ", batch,
                    " rows exceed the grid");
    const bool pieces = ins % (16 / index_t(sizeof(X))) == 0 && reinterpret_cast<std::uintptr_t>(weight) % 16 == 0;
    matvec_layout layout;
    layout.norm = std::size_t(bytes(group * ins, sizeof(X)));
    layout.x = layout.norm + std::size_t(norm);
    layout.bytes = layout.x + std::size_t(tile * x_row);
    const auto kernel = matvec_kernel<X, Input, Output>;
    if (layout.bytes > 48 * 1024)  // beyond the default, shared memory must be asked for
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(layout.bytes)),
              "matvec: shared memory");
    launch_overlapped("matvec: launch", kernel, dim3(unsigned(groups), unsigned(tiles)), dim3(matvec_warps * 32),
                      layout.bytes, exec.stream, weight, bias, outs, ins, batch, int(group), int(tile), pieces, layout,
                      input, output);
}

// The product a decoding step's outputs feed at once (see step_product_kernel): hidden[b, o] +=
// Σ_c W[o, c]·y[b, c] (+ bias[o]), y the step's outputs, W (outs, channels) stored as X.
template <class X>
struct split_product {
    const X* weight;
    const float* bias;  // or null
    index_t outs;
    float* hidden;      // (batch, stride)
    index_t stride;
};

// Rows a previous kernel accumulated with atomic adds for a step (conv_x_proj_output's x_sums), to be
// cleared once every block has read them; `arrivals` counts the blocks done reading (zero between
// steps). Null data: nothing to clear.
struct consumed_sums {
    float* data = nullptr;
    index_t count = 0;
    unsigned* arrivals = nullptr;
};

// A decoding step and the product of its outputs in one kernel (Mamba-1's scan step and out_proj): a
// block advances `channels` consecutive channels of batch row blockIdx.y (channel_step, `lanes`
// threads each), rounds their outputs to X as a product's input, and adds their share of every
// output of the product to `hidden` with atomic adds (four outputs an add where `vector_adds`): the
// product is split over the step's channels, so no block holds a whole output and no kernel boundary
// lies between the step and the product; the order of the adds, so the last bits of the residual
// stream, may differ between runs. W's columns for the block's channels are staged in shared memory
// before the wait (16-byte pieces where `pieces` and the block has all its channels): rows of
// channels·sizeof(X) bytes, piece q of row o at place q ^ swizzle(o), so that the threads, four rows
// each, read their rows' pieces from different banks.
template <int S, class Ssm, class Token, class X>
__global__ void __launch_bounds__(256)
    step_product_kernel(Ssm model, scan_problem<float> p, int lanes, int channels, bool pieces, bool vector_adds,
                        Token token, split_product<X> product, consumed_sums sums) {
    extern __shared__ __align__(16) unsigned char staged[];
    constexpr int per_load = 16 / sizeof(X);
    const index_t outs = product.outs, ins = p.shape.channels, b = blockIdx.y, c0 = index_t(blockIdx.x) * channels;
    uint4* w = reinterpret_cast<uint4*>(staged);  // (outs, row_pieces) pieces of 16 bytes
    float* y = reinterpret_cast<float*>(staged + aligned_bytes(std::size_t(outs * channels) * sizeof(X)));
    const int here = ins - c0 < channels ? int(ins - c0) : channels, row_pieces = channels / per_load;
    const auto place = [&](index_t o, int q) { return o * row_pieces + (q ^ int((o / 4) % row_pieces)); };
    if (pieces && here == channels) {
        for (index_t k = threadIdx.x; k < outs * row_pieces; k += blockDim.x) {
            const index_t o = k / row_pieces;
            const int q = int(k % row_pieces);
            __pipeline_memcpy_async(w + place(o, q), product.weight + o * ins + c0 + q * per_load, 16);
        }
    } else {
        for (index_t k = threadIdx.x; k < outs * channels; k += blockDim.x) {
            const index_t o = k / channels, c = k % channels;
            reinterpret_cast<X*>(w + place(o, int(c) / per_load))[c % per_load] =
                c < here ? product.weight[o * ins + c0 + c] : from_float<X>(0.0f);
        }
    }
    __pipeline_commit();
    const int lane = int(threadIdx.x) % lanes, local = int(threadIdx.x) / lanes;
    const bool active = local < here;
    channel_step<S, Ssm, float, Token> step(model, p, token, b, active ? c0 + local : 0, lane, lanes, active);
    let_next_kernel_start();
    wait_for_previous_kernel();
    const float ch = lanes_sum(step.advance(), lanes);
    if (lane == 0) y[local] = active ? rounded_to<X>(step.output(ch)) : 0.0f;
    __pipeline_wait_prior(0);
    __syncthreads();
    if (sums.data && threadIdx.x == 0) {  // every load of the sums in this block has returned
        __threadfence();
        if (atomicAdd(sums.arrivals, 1u) == gridDim.x * gridDim.y - 1) {
            for (index_t k = 0; k < sums.count; ++k) sums.data[k] = 0.0f;
            *sums.arrivals = 0;
        }
    }
    // Each thread takes four consecutive rows: no shuffles, one add of four where the rows allow.
    float* const hidden = product.hidden + b * product.stride;
    for (index_t o0 = 4 * index_t(threadIdx.x); o0 < outs; o0 += 4 * index_t(blockDim.x)) {
        float sum[4] = {};
        for (int q = 0; q < row_pieces; ++q) {
            float yq[per_load];
#pragma unroll
            for (int j = 0; j < per_load; ++j) yq[j] = y[q * per_load + j];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                if (o0 + i >= outs) continue;
                float wf[per_load];
                unpack<X>(w[place(o0 + i, q)], wf);
#pragma unroll
                for (int j = 0; j < per_load; ++j) sum[i] += wf[j] * yq[j];
            }
        }
        if (product.bias && blockIdx.x == 0)
            for (int i = 0; i < 4; ++i)
                if (o0 + i < outs) sum[i] += product.bias[o0 + i];
        if (vector_adds) {
            atomicAdd(reinterpret_cast<float4*>(hidden + o0), make_float4(sum[0], sum[1], sum[2], sum[3]));
        } else {
            for (int i = 0; i < 4; ++i)
                if (o0 + i < outs) atomicAdd(hidden + o0 + i, sum[i]);
        }
    }
}

// Queues step_product_kernel for a length-1 problem p (float, its state read and written in place as
// p's initial and final state): 8 to 32 channels a block (at most 256 threads, at least a warp), fewer
// where W's columns would not fit in shared memory.
template <class Ssm, class Token, class X>
void step_product(const cuda_exec& exec, const Ssm& model, const scan_problem<float>& p, const Token& token,
                  const split_product<X>& product, const consumed_sums& sums) {
    const int S = p.shape.state <= 32 ? 1 : p.shape.state <= 128 ? 4 : 8;
    int lanes = 1;
    while (lanes * S < p.shape.state) lanes *= 2;
    int channels = std::clamp(256 / lanes, 8, 32);
    const auto bytes = [&](int c) { return aligned_bytes(std::size_t(product.outs * c) * sizeof(X)) + c * sizeof(float); };
    while (bytes(channels) > std::size_t(matvec_shared) && channels > 8 && channels / 2 * lanes >= 32) channels /= 2;
    detail::require(bytes(channels) <= std::size_t(matvec_shared), "step_product: ", product.outs, " outputs of ",
                    channels, " channels (", bytes(channels), " bytes of ", storage_name<X>,
                    " weights) do not fit in shared memory (at most ", matvec_shared, ")");
    if (product.outs == 0 || p.shape.batch == 0 || p.shape.channels == 0) return;
    const index_t blocks = (p.shape.channels + channels - 1) / channels;
    detail::require(blocks < (index_t(1) << 31) && p.shape.batch <= 65535, "step_product: ", p.shape.channels,
                    " channels of ", p.shape.batch, " rows exceed the grid");
    const bool pieces = p.shape.channels % (16 / index_t(sizeof(X))) == 0 &&
                        reinterpret_cast<std::uintptr_t>(product.weight) % 16 == 0;
    const bool vector_adds = product.outs % 4 == 0 && product.stride % 4 == 0 &&
                             reinterpret_cast<std::uintptr_t>(product.hidden) % 16 == 0;
    const auto launch = [&](auto kernel) {
        if (bytes(channels) > 48 * 1024)
            check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes(channels))),
                  "step_product: shared memory");
        launch_overlapped("step_product: launch", kernel, dim3(unsigned(blocks), unsigned(p.shape.batch)),
                          dim3(unsigned(channels * lanes)), bytes(channels), exec.stream, model, p, lanes, channels,
                          pieces, vector_adds, token, product, sums);
    };
    if (S == 1) launch(step_product_kernel<1, Ssm, Token, X>);
    else if (S == 4) launch(step_product_kernel<4, Ssm, Token, X>);
    else launch(step_product_kernel<8, Ssm, Token, X>);
}

}  // namespace ssm::cuda
