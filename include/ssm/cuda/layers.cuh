#pragma once
// Device kernels for the layers around the scan in Mamba models: embedding lookup, the residual add
// fused with RMSNorm, the causal depthwise convolution with its state, Mamba-2's Δ and its gated
// RMSNorm. Activations are float32, row-major (batch·length, features); the kernels whose output
// feeds a matrix product write it in the product's input type X (float32 or bf16). Also decimation's
// token importance and row gather.
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

// Causal depthwise convolution over `channels` columns of x (row stride x_stride), followed by SiLU:
// y[b, t, c] = SiLU(bias[c] + Σ_k weight[c, k]·x[b, t - K + 1 + k, c]), where inputs before
// t = 0 come from state (batch, channels, K - 1), the sequence's last K - 1 inputs so far. One thread
// per output.
struct conv_geometry {
    index_t batch, length, channels, kernel, x_stride;
};

template <class T>
__global__ void causal_conv1d_kernel(const T* x, const float* weight, const float* bias, const T* state,
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

// After causal_conv1d_kernel: state becomes the last K - 1 inputs (older state entries shift
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

// One token through one channel's causal convolution (decoding): returns bias + Σ_k weight[k]·v_k over
// the last K inputs v (the K - 1 in state, oldest first, then `input`), after SiLU, and
// shifts `input` into the state. The taps go in batches of conv_step_taps, each batch's loads issued
// before its stores (the compiler may not move a load of weight or state past a store to state,
// which could alias it), so that a decoding step waits for one memory round trip a batch, not a tap.
inline constexpr int conv_step_taps = 8;

__device__ inline float conv_step(float input, const float* weight, float bias, float* state, index_t kernel) {
    const index_t past = kernel - 1;
    const float last = weight[past];
    float acc = bias;
    for (index_t k0 = 0; k0 < past; k0 += conv_step_taps) {
        float w[conv_step_taps], v[conv_step_taps];
#pragma unroll
        for (int j = 0; j < conv_step_taps; ++j)
            if (k0 + j < past) w[j] = weight[k0 + j], v[j] = state[k0 + j];
#pragma unroll
        for (int j = 0; j < conv_step_taps; ++j) {
            const index_t k = k0 + j;
            if (k >= past) break;
            acc += w[j] * v[j];
            if (k > 0) state[k - 1] = v[j];
        }
    }
    acc += last * input;
    if (past > 0) state[past - 1] = input;
    return math::silu(acc);
}

// conv_step for every (batch, channel) of a single token: one thread each.
template <class T>
__global__ void causal_conv1d_step_kernel(const T* x, const float* weight, const float* bias, conv_geometry g,
                                          float* state, T* y) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= g.batch * g.channels) return;
    const index_t c = i % g.channels, b = i / g.channels;
    y[i] = conv_step(x[b * g.x_stride + c], weight + c * g.kernel, bias ? bias[c] : 0.0f, state + i * (g.kernel - 1),
                     g.kernel);
}

// Mamba-2's Δ: delta[r, h] = clamp(softplus(dt[r, h] + bias[h]), low, high), dt with row stride.
template <class T>
__global__ void clamped_delta_kernel(const T* dt, index_t dt_stride, const float* bias, float low, float high,
                                     index_t rows, index_t heads, T* delta) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= rows * heads) return;
    const index_t r = i / heads, h = i % heads;
    delta[i] = from_float<T>(math::clamped_softplus(to_float(dt[r * dt_stride + h]) + bias[h], low, high));
}

// y *= x, element by element. (The kernels here are templates, as a header's must be: a plain
// __global__ function would be defined again in every file that includes it.)
template <class T>
__global__ void multiply_kernel(T* y, const T* x, index_t count) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < count) y[i] *= x[i];
}

// y[r, c] += bias[c].
template <class T>
__global__ void add_bias_kernel(T* y, index_t rows, index_t cols, const float* bias) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < rows * cols) y[i] = from_float<T>(to_float(y[i]) + bias[i % cols]);
}

// Decimation's token importance: importance[r] = sqrt(sum_c f(delta[r, c])²), f(x) = softplus(x +
// bias[c]) when a bias is given (Mamba-1's Δ before its softplus), else x. One block per row.
template <class T>
__global__ void __launch_bounds__(row_threads) delta_norm_kernel(const T* delta, index_t cols, const float* bias,
                                                                 float* importance) {
    const index_t r = blockIdx.x;
    float squares = 0.0f;
    for (index_t c = threadIdx.x; c < cols; c += row_threads) {
        const float dt = to_float(delta[r * cols + c]);
        const float v = bias ? math::softplus(dt + bias[c]) : dt;
        squares += v * v;
    }
    const float total = block_sum(squares);
    if (threadIdx.x == 0) importance[r] = sqrtf(total);
}

// out[i, :] = in[rows[i], :] for i < count (the kept rows of a decimating layer).
template <class T>
__global__ void gather_rows_kernel(const T* in, index_t width, const std::int64_t* rows, index_t count, T* out) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < count * width) out[i] = in[rows[i / width] * width + i % width];
}

template <class X>
__global__ void convert_kernel(const float* in, index_t count, X* out) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < count) out[i] = from_float<X>(in[i]);
}

}  // namespace ssm::cuda
