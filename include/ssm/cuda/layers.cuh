#pragma once
// Device kernels for the layers around the scan in Mamba models: embedding lookup, the residual add
// fused with RMSNorm, the causal depthwise convolution with its state, Mamba-2's Δ and its gated
// RMSNorm. Activations are float32, row-major (batch·length, features); the kernels whose output
// feeds a matrix product write it in the product's input type X (float32 or bf16).
#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

#include <cstdint>

#include "../core/math.hpp"
#include "../core/storage.hpp"
#include "selective_scan.cuh"

namespace ssm::cuda {

inline constexpr int row_threads = 256;

// hidden[r] = table[token r]; a token outside the vocabulary gives a row of NaN, so that it cannot
// pass unnoticed (host callers check the ids before they upload them).
template <class W>
__global__ void embedding_kernel(const std::int32_t* tokens, const W* table, index_t vocab, index_t width,
                                 float* hidden) {
    const index_t r = blockIdx.x;
    const std::int32_t token = tokens[r];
    const bool valid = token >= 0 && token < vocab;
    for (index_t i = threadIdx.x; i < width; i += blockDim.x)
        hidden[r * width + i] = valid ? to_float(table[token * width + i]) : NAN;
}

// The rows a row kernel reads: row r of its output comes from input row r·step + offset (step 1,
// offset 0 for all rows; step = length, offset = length - 1 for the last position of each sequence).
struct row_selection {
    index_t step = 1, offset = 0;
    SSM_HOST_DEVICE index_t operator()(index_t r) const { return r * step + offset; }
};

template <class V>
__device__ V block_sum(V value) {
    using reduce = cub::BlockReduce<V, row_threads>;
    __shared__ typename reduce::TempStorage storage;
    __shared__ V total;
    const V sum = reduce(storage).Sum(value);
    if (threadIdx.x == 0) total = sum;
    __syncthreads();
    const V result = total;
    __syncthreads();  // storage and total may be used again
    return result;
}

// For each selected row: hidden += mixed (when mixed is given, stored back), then
// out = hidden / sqrt(mean(hidden²) + ε) · weight. One block per output row.
template <class X>
__global__ void __launch_bounds__(row_threads) residual_rms_norm_kernel(float* hidden, const float* mixed,
                                                                        const float* weight, float epsilon,
                                                                        index_t width, row_selection rows, X* out) {
    const index_t r = blockIdx.x, in = rows(r);
    float squares = 0.0f;
    for (index_t i = threadIdx.x; i < width; i += row_threads) {
        float h = hidden[in * width + i];
        if (mixed) hidden[in * width + i] = h += mixed[in * width + i];
        squares += h * h;
    }
    const float scale = rsqrtf(block_sum(squares) / float(width) + epsilon);
    for (index_t i = threadIdx.x; i < width; i += row_threads)
        out[r * width + i] = from_float<X>(hidden[in * width + i] * scale * weight[i]);
}

// Mamba-2's gated norm, over whole rows: g = y·SiLU(z), out = g / sqrt(mean(g²) + ε) · weight.
// z has row stride z_stride.
template <class X>
__global__ void __launch_bounds__(row_threads) gated_rms_norm_kernel(const float* y, const float* z,
                                                                     index_t z_stride, const float* weight,
                                                                     float epsilon, index_t width, X* out) {
    const index_t r = blockIdx.x;
    float squares = 0.0f;
    for (index_t i = threadIdx.x; i < width; i += row_threads) {
        const float g = y[r * width + i] * math::silu(z[r * z_stride + i]);
        squares += g * g;
    }
    const float scale = rsqrtf(block_sum(squares) / float(width) + epsilon);
    for (index_t i = threadIdx.x; i < width; i += row_threads) {
        const float g = y[r * width + i] * math::silu(z[r * z_stride + i]);
        out[r * width + i] = from_float<X>(g * scale * weight[i]);
    }
}

// Causal depthwise convolution over `channels` columns of x (row stride x_stride) followed by SiLU:
// y[b, t, c] = SiLU(bias[c] + Σ_k weight[c, k]·x[b, t - K + 1 + k, c]), where inputs before t = 0 come
// from state (batch, channels, K - 1), the sequence's last K - 1 inputs so far. One thread per output.
struct conv_geometry {
    index_t batch, length, channels, kernel, x_stride;
};

template <class T>
__global__ void causal_conv1d_silu_kernel(const T* x, const float* weight, const float* bias, const T* state,
                                          conv_geometry g, T* y) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= g.batch * g.length * g.channels) return;
    const index_t c = i % g.channels, t = i / g.channels % g.length, b = i / g.channels / g.length;
    const index_t past = g.kernel - 1;
    float acc = bias ? bias[c] : 0.0f;
    for (index_t k = 0; k < g.kernel; ++k) {
        const index_t source = t - past + k;
        const float v = to_float(source >= 0 ? x[(b * g.length + source) * g.x_stride + c]
                                             : state[(b * g.channels + c) * past + past + source]);
        acc += weight[c * g.kernel + k] * v;
    }
    y[i] = from_float<T>(math::silu(acc));
}

// After causal_conv1d_silu_kernel: state becomes the last K - 1 inputs (older state entries shift
// down when the call had fewer than K - 1 tokens). One thread per (batch, channel).
template <class T>
__global__ void conv_state_update_kernel(const T* x, conv_geometry g, T* state) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= g.batch * g.channels) return;
    const index_t c = i % g.channels, b = i / g.channels, past = g.kernel - 1;
    T* s = state + i * past;
    for (index_t j = 0; j < past; ++j) {  // ascending j reads s[j + length] before it is overwritten
        const index_t t = g.length - past + j;
        s[j] = t >= 0 ? x[(b * g.length + t) * g.x_stride + c] : s[j + g.length];
    }
}

// Both of the above for one token (length 1) in one pass: one thread per (batch, channel).
template <class T>
__global__ void causal_conv1d_silu_step_kernel(const T* x, const float* weight, const float* bias, conv_geometry g,
                                               T* state, T* y) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= g.batch * g.channels) return;
    const index_t c = i % g.channels, b = i / g.channels, past = g.kernel - 1;
    T* s = state + i * past;
    const float input = to_float(x[b * g.x_stride + c]);
    float acc = bias ? bias[c] : 0.0f;
    for (index_t k = 0; k < past; ++k) {
        const float v = to_float(s[k]);
        acc += weight[c * g.kernel + k] * v;
        if (k > 0) s[k - 1] = from_float<T>(v);
    }
    acc += weight[c * g.kernel + past] * input;
    if (past > 0) s[past - 1] = from_float<T>(input);
    y[i] = from_float<T>(math::silu(acc));
}

// Mamba-2's Δ: delta[r, h] = clamp(softplus(dt[r, h] + bias[h]), low, high), dt with row stride.
template <class T>
__global__ void clamped_delta_kernel(const T* dt, index_t dt_stride, const float* bias, float low, float high,
                                     index_t rows, index_t heads, T* delta) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= rows * heads) return;
    const index_t r = i / heads, h = i % heads;
    delta[i] = from_float<T>(fminf(fmaxf(math::softplus(to_float(dt[r * dt_stride + h]) + bias[h]), low), high));
}

// y[r, c] += bias[c].
template <class T>
__global__ void add_bias_kernel(T* y, index_t rows, index_t cols, const float* bias) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < rows * cols) y[i] = from_float<T>(to_float(y[i]) + bias[i % cols]);
}

template <class X>
__global__ void convert_kernel(const float* in, index_t count, X* out) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < count) out[i] = from_float<X>(in[i]);
}

// Decoding's matrix-vector products, y[b, o] = bias[o] + Σ_i W[o, i]·x_b[i] for the few rows b of a
// decode batch, where x_b is made by a prologue that every block runs into shared memory: the norm or
// the convolution before a projection then needs no kernel of its own. A prologue is called by all
// threads of the block as prologue(b, x) and fills x[0, in).
inline constexpr int gemv_threads = row_threads;
inline constexpr int gemv_rows = 4;  // rows of x in shared memory at a time

template <class W, class Prologue>
__global__ void __launch_bounds__(gemv_threads) fused_gemv_kernel(Prologue prologue, const W* weight,
                                                                  const float* bias, index_t out, index_t in,
                                                                  index_t rows, float* y) {
    extern __shared__ float xs[];  // [gemv_rows][in]
    const int lane = threadIdx.x % 32;
    const index_t o = index_t(blockIdx.x) * (gemv_threads / 32) + threadIdx.x / 32;  // a warp per output
    const W* w = weight + (o < out ? o : 0) * in;
    for (index_t b0 = 0; b0 < rows; b0 += gemv_rows) {
        const int count = int(rows - b0 < gemv_rows ? rows - b0 : gemv_rows);
        for (int r = 0; r < count; ++r) prologue(b0 + r, xs + r * in);
        __syncthreads();
        float acc[gemv_rows] = {};
#pragma unroll 4
        for (index_t i = lane; i < in; i += 32) {
            const float wv = to_float(w[i]);
#pragma unroll
            for (int r = 0; r < gemv_rows; ++r)
                if (r < count) acc[r] += wv * xs[r * in + i];
        }
#pragma unroll
        for (int r = 0; r < gemv_rows; ++r) {
            for (int offset = 16; offset > 0; offset /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
            if (lane == 0 && r < count && o < out) y[(b0 + r) * out + o] = acc[r] + (bias ? bias[o] : 0.0f);
        }
        __syncthreads();  // x may be overwritten by the next rows
    }
}

template <class X>
__device__ float round_to(float v) {
    return to_float(from_float<X>(v));
}

// x = RMSNorm(hidden + mixed)·weight, rounded to X (mixed may be null); block 0 stores hidden + mixed
// in hidden_out (when given), so that the residual stream moves on without a kernel of its own.
template <class X>
struct residual_norm_input {
    const float* hidden;
    const float* mixed;
    float* hidden_out;
    const float* weight;
    float epsilon;
    index_t width;

    __device__ void operator()(index_t b, float* x) const {
        float squares = 0.0f;
        for (index_t i = threadIdx.x; i < width; i += blockDim.x) {
            const float h = hidden[b * width + i] + (mixed ? mixed[b * width + i] : 0.0f);
            if (hidden_out && blockIdx.x == 0) hidden_out[b * width + i] = h;
            x[i] = h;
            squares += h * h;
        }
        const float scale = rsqrtf(block_sum(squares) / float(width) + epsilon);
        for (index_t i = threadIdx.x; i < width; i += blockDim.x) x[i] = round_to<X>(x[i] * scale * weight[i]);
    }
};

// Mamba-2's gated norm of one row as a prologue: g = y·SiLU(z), x = g / sqrt(mean(g²) + ε)·weight.
template <class X>
struct gated_norm_input {
    const float* y;
    const float* z;
    index_t z_stride;
    const float* weight;
    float epsilon;
    index_t width;

    __device__ void operator()(index_t b, float* x) const {
        float squares = 0.0f;
        for (index_t i = threadIdx.x; i < width; i += blockDim.x) {
            const float g = y[b * width + i] * math::silu(z[b * z_stride + i]);
            x[i] = g;
            squares += g * g;
        }
        const float scale = rsqrtf(block_sum(squares) / float(width) + epsilon);
        for (index_t i = threadIdx.x; i < width; i += blockDim.x) x[i] = round_to<X>(x[i] * scale * weight[i]);
    }
};

// Mamba-1's x_proj input for one token: SiLU(causal conv) of the first `channels` columns of x, the
// earlier inputs read from the conv state, which is left as it is (the step kernel moves it on).
struct conv_input {
    const float* x;
    index_t x_stride;
    const float* weight;
    const float* bias;
    const float* state;
    index_t channels, kernel;

    __device__ void operator()(index_t b, float* out) const {
        const index_t past = kernel - 1;
        for (index_t c = threadIdx.x; c < channels; c += blockDim.x) {
            const float* s = state + (b * channels + c) * past;
            float acc = bias ? bias[c] : 0.0f;
            for (index_t k = 0; k < past; ++k) acc += weight[c * kernel + k] * s[k];
            out[c] = math::silu(acc + weight[c * kernel + past] * x[b * x_stride + c]);
        }
    }
};

// x = rows of a float32 matrix, rounded to X.
template <class X>
struct rounded_input {
    const float* x;
    index_t width;

    __device__ void operator()(index_t b, float* out) const {
        for (index_t i = threadIdx.x; i < width; i += blockDim.x) out[i] = round_to<X>(x[b * width + i]);
    }
};

template <class W, class Prologue>
void fused_gemv(cudaStream_t stream, const Prologue& prologue, const W* weight, const float* bias, index_t out,
                index_t in, index_t rows, float* y) {
    constexpr index_t outputs_per_block = gemv_threads / 32;
    const std::size_t shared = std::size_t(gemv_rows * in) * sizeof(float);
    detail::require(shared <= 48 * 1024, "fused_gemv: ", in, " inputs exceed the shared memory of a block");
    fused_gemv_kernel<<<unsigned((out + outputs_per_block - 1) / outputs_per_block), gemv_threads, shared, stream>>>(
        prologue, weight, bias, out, in, rows, y);
    check(cudaGetLastError(), "fused_gemv: launch");
}

}  // namespace ssm::cuda
