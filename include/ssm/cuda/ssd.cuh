#pragma once
// Mamba-2's scan in its state-space-dual (SSD) form on tensor cores. With one decay a_t = λ·Δ_t per
// head and token, a chunk of Q tokens is a masked matrix product instead of Q dependent steps:
//   y_t = Σ_{s≤t in chunk} e^{a_{s+1}+…+a_t} · coef_s · (C_t·B_s) · x_s   +   e^{a_1+…+a_t} · C_t·H
// where H is the state entering the chunk, and the state leaving it is
//   H' = e^{a_1+…+a_Q} · H + Σ_s e^{a_{s+1}+…+a_Q} · coef_s · B_s x_sᵀ.
// Three kernels: chunk_state (the sum over s, per chunk), state_pass (H chained across chunks, the
// only sequential part, elementwise), chunk_output (y from both terms). Products run as TF32 on
// tensor cores with float accumulation; for float inputs each product is split in three (the
// operands' high and low TF32 parts), which keeps float32 accuracy.
#include <mma.h>

#include "selective_scan.cuh"

namespace ssm {

// Device strategy for Mamba-2 (scalar_identity) models with exponential decay (zoh, zoh_euler):
// chunks of cuda::ssd_chunk tokens, products on tensor cores. Head dimension and state size are
// free (zero-padded to multiples of 16) up to what fits in shared memory: head_dim <= 128, state
// <= 256 on an H100 for the usual head_dim 64.
struct ssd {};

template <class Ssm>
concept ssd_model = selective_ssm_type<Ssm> && std::same_as<typename Ssm::structure_type, scalar_identity> &&
                    (std::same_as<typename Ssm::discretization_type, zoh> ||
                     std::same_as<typename Ssm::discretization_type, zoh_euler>);

namespace cuda {
inline constexpr int ssd_chunk = 64;
inline constexpr int ssd_threads = 256;
inline constexpr int ssd_warps = ssd_threads / 32;

// Sizes of one problem as the SSD kernels see it. Shared-memory rows get 4 floats of padding
// (against bank conflicts in fragment loads; tiles stay 32-byte aligned).
struct ssd_shape {
    int head_dim, state, heads_per_group;
    int padded_dim, padded_state;  // rounded up to 16
    index_t chunks;
    SSM_HOST_DEVICE int state_ld() const { return padded_state + 4; }
    SSM_HOST_DEVICE int dim_ld() const { return padded_dim + 4; }
    SSM_HOST_DEVICE int square_ld() const { return (ssd_chunk > padded_dim ? ssd_chunk : padded_dim) + 4; }
    SSM_HOST_DEVICE int state_rows() const { return ssd_chunk > padded_dim ? ssd_chunk : padded_dim; }
    // Floats of shared memory: C, B (later H), x, the masked C·Bᵀ (later y), a and coef.
    SSM_HOST_DEVICE int floats() const {
        return (ssd_chunk + state_rows()) * state_ld() + ssd_chunk * dim_ld() + ssd_chunk * square_ld() +
               2 * ssd_chunk;
    }
    // Floats of one chunk's state [head_dim][state], padded.
    SSM_HOST_DEVICE index_t state_floats() const { return index_t(padded_dim) * padded_state; }
};

// Per-chunk states [batch][chunk][head][padded_dim][padded_state] and log decays [batch][chunk][head].
struct ssd_workspace {
    float* states;
    float* decays;
};

namespace ssd_detail {
namespace wmma = nvcuda::wmma;
using accumulator = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

// acc += A·B for 16×16×8 tiles read from shared memory (TF32, split in three when Split).
template <bool Split, class LayoutA, class LayoutB>
__device__ void multiply_add(accumulator& acc, const float* a, int lda, const float* b, int ldb) {
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LayoutA> a_high, a_low;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LayoutB> b_high, b_low;
    wmma::load_matrix_sync(a_high, a, unsigned(lda));
    wmma::load_matrix_sync(b_high, b, unsigned(ldb));
#pragma unroll
    for (int i = 0; i < a_high.num_elements; ++i) {
        const float v = a_high.x[i];
        a_high.x[i] = wmma::__float_to_tf32(v);
        if constexpr (Split) a_low.x[i] = wmma::__float_to_tf32(v - a_high.x[i]);
    }
#pragma unroll
    for (int i = 0; i < b_high.num_elements; ++i) {
        const float v = b_high.x[i];
        b_high.x[i] = wmma::__float_to_tf32(v);
        if constexpr (Split) b_low.x[i] = wmma::__float_to_tf32(v - b_high.x[i]);
    }
    if constexpr (Split) {
        wmma::mma_sync(acc, a_low, b_high, acc);
        wmma::mma_sync(acc, a_high, b_low, acc);
    }
    wmma::mma_sync(acc, a_high, b_high, acc);
}

// The chunk's per-token terms, by warp 0: a[t] = a_1 + … + a_t (log decays summed from the chunk's
// start) and coef[t] (B̄'s factor), for t < count; later tokens add nothing (a stays, coef is 0).
template <class Ssm, class T>
__device__ void chunk_decays(const Ssm& model, const scan_problem<T>& p, index_t b, index_t t0, int count,
                             index_t head, float* a, float* coef) {
    if (threadIdx.x >= 32) return;
    const float lambda = model.modulation.eigenvalue(model.transition.eigenvalue(head * model.transition.head_dim, 0), head);
    const float bias = p.in.delta_bias.data() ? p.in.delta_bias(head) : 0.0f;
    float carry = 0.0f;
    for (int half = 0; half < ssd_chunk; half += 32) {
        const int t = half + int(threadIdx.x);
        float log_decay = 0.0f, c = 0.0f;
        if (t < count) {
            float dt = to_float(p.in.delta(b, t0 + t, head)) + bias;
            dt = model.modulation.delta(p.in.delta_softplus ? math::softplus(dt) : dt, head);
            log_decay = lambda * dt;  // Ā = e^{λΔ} for both zoh rules
            c = Ssm::discretization_type::apply(lambda, dt).input;
        }
        for (int offset = 1; offset < 32; offset *= 2) {
            const float v = __shfl_up_sync(0xffffffffu, log_decay, offset);
            if (int(threadIdx.x) >= offset) log_decay += v;
        }
        a[t] = carry + log_decay;
        coef[t] = c;
        carry += __shfl_sync(0xffffffffu, log_decay, 31);
    }
}

// rows × cols of a (batch, length, …) input into shared memory as floats, zero beyond `count` tokens
// and `valid` columns. at(t, col) is the element's index.
template <class T, class At>
__device__ void stage(float* to, int ld, int cols, int count, int valid, const T* data, At at) {
    for (int i = int(threadIdx.x); i < ssd_chunk * cols; i += blockDim.x) {
        const int t = i / cols, col = i % cols;
        to[t * ld + col] = t < count && col < valid ? to_float(data[at(t, col)]) : 0.0f;
    }
}

// Which block: (chunk, head) over x, the batch row over y.
struct block_place {
    index_t b, k, head, group, t0;
    int count;
};
inline __device__ block_place place(const scan_shape& s, index_t heads, index_t heads_per_group) {
    block_place at{};
    at.b = blockIdx.y;
    at.k = blockIdx.x / heads;
    at.head = blockIdx.x % heads;
    at.group = at.head / heads_per_group;
    at.t0 = at.k * ssd_chunk;
    at.count = int(s.length - at.t0 < ssd_chunk ? s.length - at.t0 : ssd_chunk);
    return at;
}

template <class T>
__device__ void stage_bc(const tensor_view<const T, 4>& v, const block_place& at, const ssd_shape& g, float* to) {
    const index_t base = at.b * v.stride(0) + at.t0 * v.stride(1) + at.group * v.stride(2);
    const index_t st = v.stride(1), sn = v.stride(3);
    stage(to, g.state_ld(), g.padded_state, at.count, g.state, v.data(),
          [&](int t, int n) { return base + t * st + n * sn; });
}

template <class T>
__device__ void stage_x(const tensor_view<const T, 3>& v, const block_place& at, const ssd_shape& g, float* to) {
    const index_t base = at.b * v.stride(0) + at.t0 * v.stride(1) + at.head * g.head_dim * v.stride(2);
    const index_t st = v.stride(1), sp = v.stride(2);
    stage(to, g.dim_ld(), g.padded_dim, at.count, g.head_dim, v.data(),
          [&](int t, int q) { return base + t * st + q * sp; });
}
}  // namespace ssd_detail

// The state a chunk adds, from a zero start: Σ_s e^{a_{s+1}+…+a_Q}·coef_s·B_s x_sᵀ, one block a
// (chunk, head, batch row); and the chunk's summed log decay.
template <bool Split, class Ssm, class T>
__global__ void __launch_bounds__(ssd_threads) ssd_chunk_state_kernel(Ssm model, scan_problem<T> p, ssd_shape g,
                                                                     ssd_workspace w) {
    using namespace ssd_detail;
    extern __shared__ float shared[];
    float* const bs = shared;                                // [t][n]
    float* const xs = bs + g.state_rows() * g.state_ld();    // [t][p], weighted
    float* const a = xs + ssd_chunk * g.dim_ld() + ssd_chunk * g.square_ld();
    float* const coef = a + ssd_chunk;
    const index_t heads = p.shape.delta_channels;
    const block_place at = place(p.shape, heads, g.heads_per_group);
    chunk_decays(model, p, at.b, at.t0, at.count, at.head, a, coef);
    stage_bc(p.in.B, at, g, bs);
    stage_x(p.in.u, at, g, xs);
    __syncthreads();
    const float total = a[at.count - 1];
    for (int i = int(threadIdx.x); i < ssd_chunk * g.padded_dim; i += blockDim.x) {
        const int t = i / g.padded_dim;
        xs[t * g.dim_ld() + i % g.padded_dim] *= t < at.count ? math::exp(total - a[t]) * coef[t] : 0.0f;
    }
    __syncthreads();
    const index_t slot = (at.b * g.chunks + at.k) * heads + at.head;
    if (threadIdx.x == 0) w.decays[slot] = total;
    float* const out = w.states + slot * g.state_floats();
    const int warp = int(threadIdx.x) / 32;
    const int tiles_n = g.padded_state / 16, tiles = tiles_n * (g.padded_dim / 16);
    for (int tile = warp; tile < tiles; tile += ssd_warps) {
        const int n0 = tile % tiles_n * 16, p0 = tile / tiles_n * 16;
        accumulator acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int s0 = 0; s0 < ssd_chunk; s0 += 8)  // (Bᵀ)[n][s] is bs[s][n]: column-major
            multiply_add<Split, wmma::col_major, wmma::row_major>(acc, bs + s0 * g.state_ld() + n0, g.state_ld(),
                                                                  xs + s0 * g.dim_ld() + p0, g.dim_ld());
        wmma::store_matrix_sync(out + index_t(p0) * g.padded_state + n0, acc, unsigned(g.padded_state),
                                wmma::mem_col_major);
    }
}

// Chains the chunks: replaces each chunk's added state by the state entering it, and writes the
// final state. One thread a (batch, head, p, n), sequential over chunks, loads issued `depth` ahead.
template <class T>
__global__ void ssd_state_pass_kernel(scan_problem<T> p, ssd_shape g, ssd_workspace w) {
    const index_t per_head = g.state_floats(), heads = p.shape.delta_channels;
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= p.shape.batch * heads * per_head) return;
    const index_t e = i % per_head, head = i / per_head % heads, b = i / per_head / heads;
    const int q = int(e / g.padded_state), n = int(e % g.padded_state);
    const bool real = q < g.head_dim && n < g.state;
    const index_t d = head * g.head_dim + q;
    float h = real && p.in.initial_state.data() ? p.in.initial_state(b, d, n) : 0.0f;
    constexpr int depth = 8;
    for (index_t k0 = 0; k0 < g.chunks; k0 += depth) {
        float added[depth], decay[depth];
#pragma unroll
        for (int j = 0; j < depth; ++j) {
            const index_t slot = (b * g.chunks + k0 + j) * heads + head;
            const bool ok = k0 + j < g.chunks;
            added[j] = ok ? w.states[slot * per_head + e] : 0.0f;
            decay[j] = ok ? w.decays[slot] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < depth; ++j) {
            if (k0 + j >= g.chunks) break;
            w.states[((b * g.chunks + k0 + j) * heads + head) * per_head + e] = h;
            h = math::exp(decay[j]) * h + added[j];
        }
    }
    if (real && p.out.final_state.data()) p.out.final_state(b, d, n) = h;
}

// y of one chunk: (mask ⊙ decays ⊙ C·Bᵀ)·x + (e^{a} ⊙ C)·H, then scale, skip and gate.
template <bool Split, class Ssm, class T>
__global__ void __launch_bounds__(ssd_threads) ssd_chunk_output_kernel(Ssm model, scan_problem<T> p, ssd_shape g,
                                                                      ssd_workspace w) {
    using namespace ssd_detail;
    extern __shared__ float shared[];
    float* const cs = shared;                                 // [t][n]
    float* const bs = cs + ssd_chunk * g.state_ld();          // [t][n], then H as [p][n]
    float* const xs = bs + g.state_rows() * g.state_ld();     // [t][p]
    float* const ms = xs + ssd_chunk * g.dim_ld();            // [t][s], then y as [t][p]
    float* const a = ms + ssd_chunk * g.square_ld();
    float* const coef = a + ssd_chunk;
    const index_t heads = p.shape.delta_channels;
    const block_place at = place(p.shape, heads, g.heads_per_group);
    chunk_decays(model, p, at.b, at.t0, at.count, at.head, a, coef);
    stage_bc(p.in.C, at, g, cs);
    stage_bc(p.in.B, at, g, bs);
    stage_x(p.in.u, at, g, xs);
    __syncthreads();

    const int warp = int(threadIdx.x) / 32;
    constexpr int blocks = ssd_chunk / 16;
    // C·Bᵀ on the tiles on or below the diagonal (the others are masked out).
    for (int tile = warp; tile < blocks * blocks; tile += ssd_warps) {
        const int i = tile / blocks, j = tile % blocks;
        if (j > i) continue;
        accumulator acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int n0 = 0; n0 < g.padded_state; n0 += 8)
            multiply_add<Split, wmma::row_major, wmma::col_major>(acc, cs + 16 * i * g.state_ld() + n0, g.state_ld(),
                                                                  bs + 16 * j * g.state_ld() + n0, g.state_ld());
        wmma::store_matrix_sync(ms + 16 * i * g.square_ld() + 16 * j, acc, unsigned(g.square_ld()),
                                wmma::mem_row_major);
    }
    __syncthreads();
    // The mask and decays onto C·Bᵀ, e^{a_t} onto C's rows, and the entering state into B's place.
    for (int e = int(threadIdx.x); e < ssd_chunk * ssd_chunk; e += blockDim.x) {
        const int t = e / ssd_chunk, s = e % ssd_chunk;
        if (s / 16 > t / 16) continue;
        float& m = ms[t * g.square_ld() + s];
        m = s <= t ? m * math::exp(a[t] - a[s]) * coef[s] : 0.0f;
    }
    for (int e = int(threadIdx.x); e < ssd_chunk * g.padded_state; e += blockDim.x) {
        const int t = e / g.padded_state;
        cs[t * g.state_ld() + e % g.padded_state] *= math::exp(a[t]);
    }
    const float* const entering = w.states + ((at.b * g.chunks + at.k) * heads + at.head) * g.state_floats();
    for (int e = int(threadIdx.x); e < g.padded_dim * g.padded_state; e += blockDim.x)
        bs[e / g.padded_state * g.state_ld() + e % g.padded_state] = entering[e];
    __syncthreads();

    // y's tiles, at most `owned` a warp (head_dim <= 128), in registers until C·Bᵀ is no longer read.
    const int tiles_p = g.padded_dim / 16, tiles = blocks * tiles_p;
    constexpr int owned = (blocks * 128 / 16 + ssd_warps - 1) / ssd_warps;
    accumulator acc[owned];
#pragma unroll
    for (int r = 0; r < owned; ++r) {
        const int tile = warp + r * ssd_warps;
        if (tile >= tiles) break;
        const int i = tile / tiles_p, p0 = tile % tiles_p * 16;
        wmma::fill_fragment(acc[r], 0.0f);
        for (int s0 = 0; s0 < 16 * (i + 1); s0 += 8)
            multiply_add<Split, wmma::row_major, wmma::row_major>(acc[r], ms + 16 * i * g.square_ld() + s0,
                                                                  g.square_ld(), xs + s0 * g.dim_ld() + p0, g.dim_ld());
        for (int n0 = 0; n0 < g.padded_state; n0 += 8)  // H[n][p] is bs[p][n]: column-major
            multiply_add<Split, wmma::row_major, wmma::col_major>(acc[r], cs + 16 * i * g.state_ld() + n0,
                                                                  g.state_ld(), bs + p0 * g.state_ld() + n0, g.state_ld());
    }
    __syncthreads();  // every warp is done with C·Bᵀ: y takes its place
#pragma unroll
    for (int r = 0; r < owned; ++r) {
        const int tile = warp + r * ssd_warps;
        if (tile >= tiles) break;
        const int i = tile / tiles_p, p0 = tile % tiles_p * 16;
        wmma::store_matrix_sync(ms + 16 * i * g.square_ld() + p0, acc[r], unsigned(g.square_ld()),
                                wmma::mem_row_major);
    }
    __syncthreads();
    const float scale = model.transition.output_scale();
    const bool gated = p.in.z.data();
    for (int e = int(threadIdx.x); e < at.count * g.head_dim; e += blockDim.x) {
        const int t = e / g.head_dim, q = e % g.head_dim;
        const index_t d = at.head * g.head_dim + q;
        const float x = xs[t * g.dim_ld() + q];
        float out = scale * ms[t * g.square_ld() + q] + (p.in.D.data() ? p.in.D(d) : 0.0f) * x;
        if (gated) out *= math::silu(to_float(p.in.z(at.b, at.t0 + t, d)));
        p.out.y(at.b, at.t0 + t, d) = from_float<T>(out);
    }
}

template <class Ssm, class T>
void run_ssd(const cuda_exec& exec, const Ssm& model, const scan_problem<T>& p) {
    const scan_shape& s = p.shape;
    auto padded = [](index_t v) { return int((v + 15) / 16 * 16); };
    const index_t head_dim = model.transition.head_dim;
    detail::require(head_dim <= 128, "selective_scan: ssd supports head_dim up to 128, got ", head_dim);
    const ssd_shape g{int(head_dim), int(s.state), int(s.delta_channels / s.groups), padded(head_dim),
                      padded(s.state), (s.length + ssd_chunk - 1) / ssd_chunk};
    constexpr bool split = std::same_as<T, float>;
    const std::size_t shared_bytes = std::size_t(g.floats()) * sizeof(float);
    int device = 0, limit = 0;
    check(cudaGetDevice(&device), "selective_scan: ssd device");
    check(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "selective_scan: ssd limit");
    detail::require(shared_bytes <= std::size_t(limit), "selective_scan: ssd needs ", shared_bytes,
                    " bytes of shared memory for head_dim ", head_dim, " and state ", s.state, "; the device offers ",
                    limit);
    const index_t blocks = g.chunks * s.delta_channels;
    detail::require(blocks < (index_t(1) << 31) && s.batch <= 65535, "selective_scan: ssd grid of ", blocks, " x ",
                    s.batch, " blocks exceeds CUDA's limits");
    auto state_kernel = ssd_chunk_state_kernel<split, Ssm, T>;
    auto output_kernel = ssd_chunk_output_kernel<split, Ssm, T>;
    check(cudaFuncSetAttribute(state_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)),
          "selective_scan: ssd shared memory");
    check(cudaFuncSetAttribute(output_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)),
          "selective_scan: ssd shared memory");

    const index_t slots = s.batch * g.chunks * s.delta_channels;
    ssd_workspace w{};
    check(cudaMallocAsync(&w.states, std::size_t(slots * (g.state_floats() + 1)) * sizeof(float), exec.stream),
          "selective_scan: ssd workspace");
    w.decays = w.states + slots * g.state_floats();
    const dim3 grid(unsigned(blocks), unsigned(s.batch));
    state_kernel<<<grid, ssd_threads, shared_bytes, exec.stream>>>(model, p, g, w);
    check(cudaGetLastError(), "selective_scan: ssd chunk state launch");
    constexpr int block = 256;
    ssd_state_pass_kernel<<<blocks_for(s.batch * s.delta_channels * g.state_floats(), block), block, 0,
                            exec.stream>>>(p, g, w);
    check(cudaGetLastError(), "selective_scan: ssd state pass launch");
    output_kernel<<<grid, ssd_threads, shared_bytes, exec.stream>>>(model, p, g, w);
    check(cudaGetLastError(), "selective_scan: ssd chunk output launch");
    check(cudaFreeAsync(w.states, exec.stream), "selective_scan: ssd workspace");
}
}  // namespace cuda

// Mamba-2's scan as chunked matrix products on tensor cores; see cuda::run_ssd.
template <ssd_model Ssm, storage_type T>
void selective_scan(const cuda_exec& exec, const ssd&, const Ssm& model, const scan_inputs<T>& in,
                    const scan_outputs<T>& out) {
    cuda::run_ssd(exec, model, make_problem("selective_scan", model, in, out));
}

}  // namespace ssm
