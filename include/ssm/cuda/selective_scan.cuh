#pragma once
// CUDA execution of the selective scan: the same policies and the same fused inner loop as the host
// (scan/segment.hpp), instantiated for the device. Views must point to device memory.
#include <cuda_runtime.h>

#include "../scan/selective_scan.hpp"

namespace ssm {

// Where device work runs: a CUDA stream (the default stream when null).
struct cuda_exec {
    cudaStream_t stream = nullptr;
};

namespace cuda {
// Throws ssm::error naming the operation when a CUDA call failed.
inline void check(cudaError_t status, const char* what) {
    detail::require(status == cudaSuccess, what, ": ", cudaGetErrorName(status), ": ", cudaGetErrorString(status));
}

// One thread per (batch, channel), sequential in time: the simplest device strategy, and the
// baseline the faster kernels are measured against.
template <class Ssm, class T>
__global__ void sequential_scan_kernel(Ssm model, scan_problem<T> p) {
    using V = typename Ssm::value_type;
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= p.shape.batch * p.shape.channels) return;
    const index_t b = i / p.shape.channels, d = i % p.shape.channels;
    V state[max_state][1];
    detail::load_initial_state<1>(p, b, d, state);
    detail::scan_segment<1>(model, p, b, d, 0, p.shape.length, state, nullptr, true);
    detail::store_final_state<1>(p, b, d, state);
}
// Chunked device scan. Each channel's N states are spread over `slices` threads (a power of two
// <= 32, so a channel's threads sit in one warp and reduce y with shuffles), S states per thread in
// registers; time is cut into chunks handled by separate threads. With one chunk this is a single
// pass. With several: a summary pass scans every chunk but the last from a zero state and records
// its end state and decay product, a carry pass chains them into each chunk's true starting state,
// and the output pass rescans every chunk from there, writing y.
template <class V>
struct chunk_workspace {
    V* start;        // [batch][channel][chunk][state]: state entering each chunk
    V* decay;        // [batch][channel][chunk][state]: product of Ā over the chunk before
    index_t chunks;
    index_t chunk;

    SSM_HOST_DEVICE index_t slot(const scan_shape& s, index_t b, index_t d, index_t k, index_t n) const {
        return ((b * s.channels + d) * chunks + k) * s.state + n;
    }
};

// What one thread reads for a token: the channel's Δ (raw), x and gate, and B and C at its states.
template <int S, class V>
struct token_values {
    float delta, x, z;
    V b[S], c[S];
};

template <int S, bool Summary, class Ssm, class T>
__global__ void chunk_kernel(Ssm model, scan_problem<T> p, int slices, chunk_workspace<typename Ssm::value_type> w) {
    using V = typename Ssm::value_type;
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const index_t per_chunk = p.shape.batch * p.shape.channels * slices;
    if (i >= per_chunk * w.chunks) return;  // whole channel groups only: per_chunk is a multiple of slices
    const index_t k = i / per_chunk, rest = i % per_chunk;
    const int s = int(rest % slices);
    const index_t d = (rest / slices) % p.shape.channels, b = rest / slices / p.shape.channels;
    if (Summary && k + 1 == w.chunks) return;
    const unsigned lane = threadIdx.x % 32u;
    const unsigned group = (slices == 32 ? 0xffffffffu : ((1u << slices) - 1u)) << (lane & ~unsigned(slices - 1));

    // Per-thread bases and per-token strides, so that the token loop does no index multiplications.
    const auto& in = p.in;
    const index_t dc = model.transition.delta_channel(d), g = d / (p.shape.channels / p.shape.groups);
    const T* u = &in.u(b, 0, d);
    const T* delta = &in.delta(b, 0, dc);
    const T* z = in.z.data() ? &in.z(b, 0, d) : nullptr;
    const T* B = &in.B(b, 0, g, 0);
    const T* C = &in.C(b, 0, g, 0);
    T* y = &p.out.y(b, 0, d);
    const float bias = in.delta_bias.data() ? in.delta_bias(dc) : 0.0f;
    const float skip = in.D.data() ? in.D(d) : 0.0f;
    const float scale = model.transition.output_scale();
    index_t state_offset[S];  // of state s·S + j within a token's B or C row
    bool real_state[S];

    V lambda[S], h[S], product[S];
#pragma unroll
    for (int j = 0; j < S; ++j) {
        const index_t n = s * S + j;
        real_state[j] = n < p.shape.state;
        state_offset[j] = real_state[j] ? n * p.shape.components * in.B.stride(3) : 0;
        lambda[j] = real_state[j] ? model.modulation.eigenvalue(model.transition.eigenvalue(d, n), dc) : V{};
        product[j] = ssm::detail::lift<V>(1.0f);
        h[j] = V{};
        if (!real_state[j]) continue;
        if (k == 0) {
            const auto& v = in.initial_state;
            if (!v.data()) h[j] = V{};
            else if constexpr (std::same_as<V, cfloat>) h[j] = {v(b, d, 2 * n), v(b, d, 2 * n + 1)};
            else h[j] = v(b, d, n);
        } else if (!Summary) {
            h[j] = w.start[w.slot(p.shape, b, d, k, n)];
        }
    }
    auto read = [&](const T* row, index_t j, index_t component_stride) -> V {
        if constexpr (std::same_as<V, cfloat>) return {to_float(row[state_offset[j]]), to_float(row[state_offset[j] + component_stride])};
        else return to_float(row[state_offset[j]]);
    };
    auto load = [&](index_t t) {
        token_values<S, V> v;
        v.delta = to_float(delta[t * in.delta.stride(1)]);
        v.x = to_float(u[t * in.u.stride(1)]);
        v.z = !Summary && z ? to_float(z[t * in.z.stride(1)]) : 0.0f;
#pragma unroll
        for (int j = 0; j < S; ++j) {
            v.b[j] = real_state[j] ? read(B + t * in.B.stride(1), j, in.B.stride(3)) : V{};
            v.c[j] = !Summary && real_state[j] ? read(C + t * in.C.stride(1), j, in.C.stride(3)) : V{};
        }
        return v;
    };

    const index_t t0 = k * w.chunk, t1 = t0 + w.chunk < p.shape.length ? t0 + w.chunk : p.shape.length;
    token_values<S, V> next = load(t0);
    for (index_t t = t0; t < t1; ++t) {
        const token_values<S, V> now = next;
        if (t + 1 < t1) next = load(t + 1);  // in flight while this token computes
        float dt = now.delta + bias;
        dt = in.delta_softplus ? math::softplus(dt) : dt;
        dt = model.modulation.delta(dt, dc);
        discretized<V> shared{};
        if constexpr (Ssm::structure_type::state_invariant_decay)
            shared = Ssm::discretization_type::apply(lambda[0], dt);
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < S; ++j) {
            const auto q = ssm::detail::discretize<Ssm>(shared, lambda[j], dt);
            h[j] = q.decay * h[j] + q.input * now.b[j] * now.x;
            if constexpr (Summary) product[j] = product[j] * q.decay;
            else acc += ssm::detail::real_product(now.c[j], h[j]);
        }
        if constexpr (!Summary) {
            for (int offset = slices / 2; offset > 0; offset /= 2) acc += __shfl_xor_sync(group, acc, offset);
            if (s == 0) {
                float out = scale * acc + skip * now.x;
                if (z) out *= math::silu(now.z);
                y[t * p.out.y.stride(1)] = from_float<T>(out);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < S; ++j) {
        const index_t n = s * S + j;
        if (!real_state[j]) continue;
        if constexpr (Summary) {
            w.start[w.slot(p.shape, b, d, k + 1, n)] = h[j];
            w.decay[w.slot(p.shape, b, d, k + 1, n)] = product[j];
        } else if (k + 1 == w.chunks && p.out.final_state.data()) {
            const auto& v = p.out.final_state;
            if constexpr (std::same_as<V, cfloat>) {
                v(b, d, 2 * n) = h[j].re;
                v(b, d, 2 * n + 1) = h[j].im;
            } else {
                v(b, d, n) = h[j];
            }
        }
    }
}

// start[k] = decay[k] · start[k-1] + start[k] for k >= 2, one thread per (batch, channel, state).
template <class V>
__global__ void chunk_carry_kernel(scan_shape shape, chunk_workspace<V> w) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= shape.batch * shape.channels * shape.state) return;
    const index_t n = i % shape.state, d = i / shape.state % shape.channels, b = i / shape.state / shape.channels;
    for (index_t k = 2; k < w.chunks; ++k) {
        const index_t here = w.slot(shape, b, d, k, n);
        w.start[here] = w.decay[here] * w.start[w.slot(shape, b, d, k - 1, n)] + w.start[here];
    }
}

inline unsigned blocks_for(index_t threads, int block) { return unsigned((threads + block - 1) / block); }

template <int S, class Ssm, class T>
void run_chunked_with(const cuda_exec& exec, const chunked& strategy, const Ssm& model, const scan_problem<T>& p) {
    using V = typename Ssm::value_type;
    int slices = 1;
    while (slices * S < p.shape.state) slices *= 2;
    chunk_workspace<V> w{nullptr, nullptr, (p.shape.length + strategy.chunk - 1) / strategy.chunk, strategy.chunk};
    const index_t threads = p.shape.batch * p.shape.channels * slices * w.chunks;
    constexpr int block = 256;
    if (w.chunks > 1) {
        const auto bytes = std::size_t(p.shape.batch * p.shape.channels * w.chunks * p.shape.state) * sizeof(V);
        check(cudaMallocAsync(&w.start, 2 * bytes, exec.stream), "selective_scan: chunk workspace");
        w.decay = w.start + bytes / sizeof(V);
        chunk_kernel<S, true><<<blocks_for(threads, block), block, 0, exec.stream>>>(model, p, slices, w);
        check(cudaGetLastError(), "selective_scan: chunk summary launch");
        chunk_carry_kernel<<<blocks_for(p.shape.batch * p.shape.channels * p.shape.state, block), block, 0,
                             exec.stream>>>(p.shape, w);
        check(cudaGetLastError(), "selective_scan: chunk carry launch");
    }
    chunk_kernel<S, false><<<blocks_for(threads, block), block, 0, exec.stream>>>(model, p, slices, w);
    check(cudaGetLastError(), "selective_scan: chunk output launch");
    if (w.start) check(cudaFreeAsync(w.start, exec.stream), "selective_scan: chunk workspace");
}

// Four states per thread up to 128 states (32 threads a channel), eight above.
template <class Ssm, class T>
void run_chunked(const cuda_exec& exec, const chunked& strategy, const Ssm& model, const scan_problem<T>& p) {
    if (p.shape.state <= 4 * 32) run_chunked_with<4>(exec, strategy, model, p);
    else run_chunked_with<8>(exec, strategy, model, p);
}
}  // namespace cuda

// Runs the selective scan on the device, asynchronously on exec.stream; launch errors throw.
template <selective_ssm_type Ssm, storage_type T>
void selective_scan(const cuda_exec& exec, const sequential&, const Ssm& model, const scan_inputs<T>& in,
                    const scan_outputs<T>& out) {
    const auto problem = make_problem("selective_scan", model, in, out);
    const index_t threads = problem.shape.batch * problem.shape.channels;
    constexpr int block = 128;
    cuda::sequential_scan_kernel<<<unsigned((threads + block - 1) / block), block, 0, exec.stream>>>(model, problem);
    cuda::check(cudaGetLastError(), "selective_scan: kernel launch");
}

// Chunked scan on the device; see cuda::chunk_kernel. strategy.chunk is the tokens per chunk: one
// chunk (>= length) gives a single pass, shorter chunks spread long sequences over more threads.
template <selective_ssm_type Ssm, storage_type T>
void selective_scan(const cuda_exec& exec, const chunked& strategy, const Ssm& model, const scan_inputs<T>& in,
                    const scan_outputs<T>& out) {
    detail::require(strategy.chunk > 0, "selective_scan: chunked chunk length must be positive, got ", strategy.chunk);
    const auto problem = make_problem("selective_scan", model, in, out);
    cuda::run_chunked(exec, strategy, model, problem);
}

// One decoding step for a batch on the device (see the host ssm::step): a single-pass chunked scan
// of one token whose threads each read their states before writing them, so state is in and out.
template <selective_ssm_type Ssm, storage_type T>
void step(const cuda_exec& exec, const Ssm& model, const step_inputs<T>& in, tensor_view<float, 3> state,
          tensor_view<T, 2> y) {
    const auto [scan_in, scan_out] = detail::step_as_scan(in, state, y);
    cuda::run_chunked(exec, chunked{.chunk = 1}, model, make_problem("step", model, scan_in, scan_out));
}

}  // namespace ssm
