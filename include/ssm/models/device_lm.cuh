#pragma once
// Mamba and Mamba-2 causal LMs on a CUDA device: the host model's weights copied to the device, the
// same layers as kernels (cuda/layers.cuh), the device scan and step, and a GEMM policy (cuBLAS).
//
//   const auto host = ssm::models::mamba_lm::load("path/to/checkpoint");
//   const ssm::models::device_mamba_lm<ssm::bfloat16> model(host);   // or <float>
//   auto cache = model.make_cache(batch);
//   model.forward(exec, tokens, cache, logits);   // device views: tokens (batch, L), logits (batch, L or 1, V)
//
// X, the type of the large matrices (in_proj, out_proj, embeddings, head), is float or bfloat16; the
// products' other input is rounded to X, accumulation and everything else (activations, the residual
// stream, conv, norms, x_proj, dt_proj and the scan) stay float32; Mamba-2 layers scan with ssd{}
// (tensor cores, float32 accuracy). A single sequence's next token runs
// on matrix-vector kernels with the layers around each product fused in (cuda/matvec.cuh), a few
// kernels a layer. Single-token calls on a stream of one's own (not the legacy default stream) are
// replayed from a CUDA graph captured at the first one.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../cuda/layers.cuh"
#include "../cuda/matvec.cuh"
#include "../cuda/memory.cuh"
#include "../cuda/selective_scan.cuh"
#include "../cuda/ssd.cuh"
#include "../gemm/cublas.cuh"
#include "causal_lm.hpp"

namespace ssm::models {

struct device_layer_state {
    cuda::device_array<float> conv;    // (batch, conv channels, K-1)
    cuda::device_array<float> ssm;     // (batch, channels, state)
    cuda::device_array<float> global;  // (batch, d_inner, K_g-1): the global selection conv's window
};

// Activations of one forward call; sized before any work is queued (never during graph capture).
// Decimation's buffers (importance, gathered, kept_rows) are used by multi-token calls only.
template <class X>
struct device_workspace {
    cuda::device_array<float> hidden, mixed, projected, convolved, x_projected, delta, y, final_state;
    cuda::device_array<float> global_gate;  // the global selection module's SiLU(global_conv(x) + bias)
    // Single-sequence decoding's x_proj rows, summed by atomic adds, and the count of blocks done
    // reading them (cuda::consumed_sums): zero between steps.
    cuda::device_array<float> x_sums;
    cuda::device_array<unsigned> arrivals;
    cuda::device_array<X> normed, product_input;
    cuda::device_array<float> importance, gathered;
    cuda::device_array<std::int64_t> kept_rows;  // absolute rows (b·length + position) of the kept tokens
};

namespace device_detail {
using cuda::device_array;

inline unsigned blocks(index_t threads, int block = 256) { return unsigned((threads + block - 1) / block); }

inline void check_launch(const char* what) { cuda::check(cudaGetLastError(), what); }

template <class T>
tensor_view<const T, 2> matrix(const device_array<T>& a, index_t rows, index_t cols) {
    return {a.data(), rows, cols};
}
// Grows `a` to at least `size` elements, all zero when it grows (accumulators the kernels keep zero).
template <class T>
void reserve_zeroed(device_array<T>& a, std::size_t size) {
    if (a.size() >= size) return;
    a.reserve(size);
    cuda::check(cudaMemset(a.data(), 0, size * sizeof(T)), "workspace: clear");
    cuda::check(cudaDeviceSynchronize(), "workspace: clear");  // before kernels of any stream use it
}
inline const float* bias_or_null(const device_array<float>& a) { return a.empty() ? nullptr : a.data(); }
inline tensor_view<const float, 1> optional_vector(const device_array<float>& a) {
    return a.empty() ? tensor_view<const float, 1>{} : tensor_view<const float, 1>(a.data(), index_t(a.size()));
}

// y = x·Wᵀ (+ bias).
template <device_gemm Gemm, class X>
void linear(const cuda_exec& exec, const Gemm& gemm, tensor_view<const X, 2> x, const device_array<X>& weight,
            const device_array<float>& bias, tensor_view<float, 2> y) {
    gemm.multiply(exec, x, matrix(weight, y.extent(1), x.extent(1)), y);
    if (bias.empty()) return;
    cuda::add_bias_kernel<<<blocks(y.extent(0) * y.extent(1)), 256, 0, exec.stream>>>(
        y.data(), y.extent(0), y.extent(1), bias.data());
    check_launch("linear: bias launch");
}

// Causal conv + SiLU over the first `channels` columns of x (row stride x_stride) and the conv state
// update: one kernel for a single token, else the convolution and then the update.
inline void causal_conv(const cuda_exec& exec, const float* x, index_t x_stride, index_t batch, index_t length,
                        index_t channels, index_t kernel, const device_array<float>& weight,
                        const device_array<float>& bias, device_array<float>& state, float* y) {
    const cuda::conv_geometry g{batch, length, channels, kernel, x_stride};
    if (length == 1) {
        cuda::causal_conv1d_step_kernel<<<blocks(batch * channels), 256, 0, exec.stream>>>(
            x, weight.data(), bias.empty() ? nullptr : bias.data(), g, state.data(), y);
        check_launch("causal_conv: step launch");
        return;
    }
    cuda::causal_conv1d_kernel<<<blocks(batch * length * channels), 256, 0, exec.stream>>>(
        x, weight.data(), bias.empty() ? nullptr : bias.data(), state.data(), g, y);
    check_launch("causal_conv: launch");
    cuda::conv_state_update_kernel<<<blocks(batch * channels), 256, 0, exec.stream>>>(x, g, state.data());
    check_launch("causal_conv: state update launch");
}

// Tokens per chunk of the device scan (real states): one chunk where its blocks fill at least half a
// wave of the device (cuda::chunk_kernel's blocks, as many a multiprocessor as it holds; more chunks
// would read the input twice for little), else as many chunks as fill one wave with the blocks of a
// scan in several chunks, none shorter than 128 tokens.
inline index_t scan_chunk(index_t batch, index_t length, index_t channels, index_t state) {
    const index_t processors = cuda::device_attribute(cudaDevAttrMultiProcessorCount, "scan: multiprocessors");
    // The layer's activations are contiguous rows, z's rows 2·channels apart: aligned for the fixed
    // tile's accesses where channels are a multiple of its lanes.
    constexpr int lanes = cuda::sixteen_real_states_tile::lanes<float>;
    const scan_shape shape{batch, length, channels, state, 1, channels, 1};
    const auto chunks_filling_a_wave = [&](bool several_chunks) {
        const auto fill = cuda::chunk_occupancy_of<float>(shape, channels % lanes == 0, several_chunks);
        return fill.blocks_per_multiprocessor * processors / fill.blocks_per_chunk;
    };
    if (length < 2 * 128 || chunks_filling_a_wave(false) < 2) return length;
    const index_t chunks = std::clamp<index_t>(chunks_filling_a_wave(true), 2, length / 128);
    return (length + chunks - 1) / chunks;
}

// The cache's state of a layer as the scan sees it: (batch, channels, state).
inline tensor_view<float, 3> cached_state(device_array<float>& state, index_t batch, index_t channels) {
    return {state.data(), batch, channels, index_t(state.size()) / (batch * channels)};
}

// Runs the scan with the cache's state as initial and final state. One chunk reads each state before
// writing it, in the same thread, so the state is updated in place; with several chunks the first
// chunk's blocks read it while the last chunk's write, so the final state goes to the workspace first.
template <class Ssm>
void scan_with_state(const cuda_exec& exec, const Ssm& model, scan_inputs<float> in, tensor_view<float, 3> y,
                     device_array<float>& state, device_array<float>& final_state) {
    const index_t batch = y.extent(0), length = y.extent(1), channels = y.extent(2);
    const tensor_view<float, 3> cached = cached_state(state, batch, channels);
    in.initial_state = cached;
    if constexpr (ssd_model<Ssm>) {  // its state pass reads each state element before writing it
        selective_scan(exec, ssd{}, model, in, scan_outputs<float>{.y = y, .final_state = cached});
        return;
    }
    const index_t n = cached.extent(2);
    const index_t chunk = scan_chunk(batch, length, channels, n);
    if (chunk >= length) {
        selective_scan(exec, chunked{.chunk = chunk}, model, in, scan_outputs<float>{.y = y, .final_state = cached});
        return;
    }
    const tensor_view<float, 3> end(final_state.data(), batch, channels, n);
    selective_scan(exec, chunked{.chunk = chunk}, model, in, scan_outputs<float>{.y = y, .final_state = end});
    cuda::check(cudaMemcpyAsync(state.data(), end.data(), state.size() * sizeof(float), cudaMemcpyDeviceToDevice,
                                exec.stream),
                "scan: state copy");
}

// A decoding step of the scan, the cache's state updated in place, with x and Δ from `token` (see
// cuda::step_kernel).
template <class Ssm, class Token>
void step_with_state(const cuda_exec& exec, const Ssm& model, scan_inputs<float> in, tensor_view<float, 3> y,
                     device_array<float>& state, const Token& token) {
    const tensor_view<float, 3> cached = cached_state(state, y.extent(0), y.extent(2));
    in.initial_state = cached;
    cuda::run_step(exec, model, make_problem("step", model, in, scan_outputs<float>{.y = y, .final_state = cached}),
                   token);
}

// out[:rows·width] = in's kept rows (ws.kept_rows), through ws.gathered; in and out may be the same.
template <class X>
void gather_rows(const cuda_exec& exec, device_workspace<X>& ws, const float* in, index_t rows, index_t width,
                 float* out) {
    ws.gathered.reserve(std::size_t(rows * width));
    cuda::gather_rows_kernel<<<blocks(rows * width), 256, 0, exec.stream>>>(in, width, ws.kept_rows.data(), rows,
                                                                            ws.gathered.data());
    check_launch("decimation: gather launch");
    cuda::check(cudaMemcpyAsync(out, ws.gathered.data(), std::size_t(rows * width) * sizeof(float),
                                cudaMemcpyDeviceToDevice, exec.stream),
                "decimation: copy back");
}

// A decimating layer on the device: the importance of every token from Δ (delta (rows, cols), before
// its softplus when bias is given) goes to the host, which picks the tokens as causal_lm does
// (layer_decimation::select); the kept rows of every buffer (pointer, width) are gathered to the
// front. Returns the kept length; ws.kept_rows holds the selection. Waits for the stream.
template <class X>
index_t decimate(const cuda_exec& exec, const layer_decimation& decimation, const float* delta, index_t cols,
                 const float* bias, index_t batch, index_t length, device_workspace<X>& ws,
                 std::initializer_list<std::pair<float*, index_t>> buffers) {
    const index_t rows = batch * length;
    ws.importance.reserve(std::size_t(rows));
    cuda::delta_norm_kernel<<<unsigned(rows), cuda::row_threads, 0, exec.stream>>>(delta, cols, bias,
                                                                                    ws.importance.data());
    check_launch("decimation: importance launch");
    std::vector<float> importance(static_cast<std::size_t>(rows));
    cuda::check(cudaMemcpyAsync(importance.data(), ws.importance.data(), importance.size() * sizeof(float),
                                cudaMemcpyDeviceToHost, exec.stream),
                "decimation: importance copy");
    cuda::check(cudaStreamSynchronize(exec.stream), "decimation: wait for the importance");
    const std::vector<index_t> kept = decimation.select(importance, batch, length);
    const index_t k = index_t(kept.size()) / batch;
    std::vector<std::int64_t> absolute;
    for (std::size_t i = 0; i < kept.size(); ++i) absolute.push_back(index_t(i) / k * length + kept[i]);
    ws.kept_rows.reserve(absolute.size());
    cuda::check(cudaMemcpyAsync(ws.kept_rows.data(), absolute.data(), absolute.size() * sizeof(std::int64_t),
                                cudaMemcpyHostToDevice, exec.stream),
                "decimation: rows copy");
    for (const auto& [data, width] : buffers) gather_rows(exec, ws, data, batch * k, width, data);
    // `absolute` must outlive the copy above.
    cuda::check(cudaStreamSynchronize(exec.stream), "decimation: wait for the rows copy");
    return k;
}

// The out_proj input in X: y itself when X is float, else y rounded into the workspace.
template <class X>
tensor_view<const X, 2> as_product_input(const cuda_exec& exec, const device_array<float>& y,
                                         device_array<X>& converted, index_t rows, index_t cols) {
    if constexpr (std::same_as<X, float>) {
        return {y.data(), rows, cols};
    } else {
        cuda::convert_kernel<<<blocks(rows * cols), 256, 0, exec.stream>>>(y.data(), rows * cols, converted.data());
        check_launch("convert launch");
        return {converted.data(), rows, cols};
    }
}
// Mamba-1's decoding step inputs: x from the convolved row, Δ = softplus(dt_proj row · x_proj's Δ part
// (times the global gate) + dt bias), the dt_proj product folded into the step (a kernel less per layer).
struct mamba1_token {
    static constexpr bool constant_parameters = true;
    const float* x;
    const float* dt_proj;  // (channels, rank)
    const float* dt_bias;
    index_t channels, rank;
    const float* x_dbl;  // (batch, x_dbl_stride), Δ part first
    index_t x_dbl_stride;
    const float* gate;  // (batch, channels): the global selection's gate on Δ, or null

    // The channel's dt_proj row (a line a lane) and bias.
    __device__ void prefetch(index_t d, int lane, int lanes) const {
        constexpr index_t line = 128 / sizeof(float);
        for (index_t r = index_t(lane) * line; r < rank; r += index_t(lanes) * line)
            cuda::prefetch_l2(dt_proj + d * rank + r);
        if (lane == 0) cuda::prefetch_l2(dt_bias + d);
    }
    __device__ cuda::token_input operator()(index_t b, index_t d, index_t, int lane, int lanes, bool) const {
        float part = 0.0f;
#pragma unroll 4  // loads of four products in flight
        for (index_t r = lane; r < rank; r += lanes) part += dt_proj[d * rank + r] * x_dbl[b * x_dbl_stride + r];
        const float delta = cuda::lanes_sum(part, lanes) * (gate ? gate[b * channels + d] : 1.0f);
        return {x[b * channels + d], math::softplus(delta + dt_bias[d])};
    }
};

// Mamba-2's decoding step inputs: x from the convolved [x | B | C] row, Δ = clamp(softplus(dt + bias)).
struct mamba2_token {
    static constexpr bool constant_parameters = true;
    const float* xbc;
    index_t xbc_stride;
    const float* dt;
    index_t dt_stride;
    const float* dt_bias;
    float low, high;

    __device__ void prefetch(index_t, int, int) const {}
    __device__ cuda::token_input operator()(index_t b, index_t d, index_t head, int, int, bool) const {
        return {xbc[b * xbc_stride + d], math::clamped_softplus(dt[b * dt_stride + head] + dt_bias[head], low, high)};
    }
};
}  // namespace device_detail

// Mamba-1's mixer on the device (see mamba1_mixer).
template <class X>
struct device_mamba1_mixer {
    using host_type = mamba1_mixer;
    using ssm_type = mamba1_mixer::ssm_type;
    template <class T>
    using array = cuda::device_array<T>;

    index_t d_model, d_inner, state, rank, kernel, global_kernel;
    layer_scaling scaling;
    array<X> in_proj, out_proj;
    array<float> in_proj_bias, conv_weight, conv_bias, x_proj, dt_proj, dt_bias, A, D, out_proj_bias, global_conv,
        global_bias;

    explicit device_mamba1_mixer(const mamba1_mixer& m)
        : d_model(m.d_model), d_inner(m.d_inner), state(m.state), rank(m.rank), kernel(m.kernel),
          global_kernel(m.global_kernel), scaling(m.scaling),
          in_proj(array<X>::copy_of(m.in_proj)), out_proj(array<X>::copy_of(m.out_proj)),
          in_proj_bias(array<float>::copy_of(m.in_proj_bias)), conv_weight(array<float>::copy_of(m.conv_weight)),
          conv_bias(array<float>::copy_of(m.conv_bias)), x_proj(array<float>::copy_of(m.x_proj)),
          dt_proj(array<float>::copy_of(m.dt_proj)), dt_bias(array<float>::copy_of(m.dt_bias)),
          A(array<float>::copy_of(m.A)), D(array<float>::copy_of(m.D)),
          out_proj_bias(array<float>::copy_of(m.out_proj_bias)), global_conv(array<float>::copy_of(m.global_conv)),
          global_bias(array<float>::copy_of(m.global_bias)) {}

    index_t conv_channels() const { return d_inner; }
    index_t scan_channels() const { return d_inner; }
    index_t state_size() const { return state; }
    index_t kernel_size() const { return kernel; }
    index_t global_window() const { return global_kernel > 0 ? d_inner * (global_kernel - 1) : 0; }

    void reserve(device_workspace<X>& ws, index_t batch, index_t rows) const {
        ws.projected.reserve(std::size_t(rows * 2 * d_inner));
        ws.convolved.reserve(std::size_t(rows * d_inner));
        ws.x_projected.reserve(std::size_t(rows * (rank + 2 * state)));
        ws.delta.reserve(std::size_t(rows * d_inner));
        ws.y.reserve(std::size_t(rows * d_inner));
        ws.final_state.reserve(std::size_t(batch * d_inner * state));
        if constexpr (!std::same_as<X, float>) ws.product_input.reserve(std::size_t(rows * d_inner));
        if (global_kernel > 0) ws.global_gate.reserve(std::size_t(rows * d_inner));
        device_detail::reserve_zeroed(ws.x_sums, std::size_t(batch * (rank + 2 * state)));
        device_detail::reserve_zeroed(ws.arrivals, 1);
    }

    // As mamba1_mixer::forward: cuBLAS products between layer kernels (device_causal_lm sends a
    // single sequence's next token to decode instead).
    template <device_gemm Gemm>
    index_t forward(const cuda_exec& exec, const Gemm& gemm, tensor_view<const X, 2> x, index_t batch,
                    index_t length, device_layer_state& cache, device_workspace<X>& ws, tensor_view<float, 2> out,
                    const layer_decimation* decimation = nullptr) const {
        namespace dd = device_detail;
        index_t rows = batch * length;
        const index_t di = d_inner, n = state, width = 2 * di, xw = rank + 2 * n;
        const tensor_view<float, 2> xz(ws.projected.data(), rows, width);
        dd::linear(exec, gemm, x, in_proj, in_proj_bias, xz);
        dd::causal_conv(exec, xz.data(), width, batch, length, di, kernel, conv_weight, conv_bias, cache.conv,
                        ws.convolved.data());
        const tensor_view<const float, 2> conv_out(ws.convolved.data(), rows, di);
        const tensor_view<float, 2> x_dbl(ws.x_projected.data(), rows, xw);
        gemm.multiply(exec, conv_out, dd::matrix(x_proj, xw, di), x_dbl);
        if (global_kernel > 0)  // the gate SiLU(global_conv(x) + bias), over in_proj's x as the short conv
            dd::causal_conv(exec, xz.data(), width, batch, length, di, global_kernel, global_conv, global_bias,
                            cache.global, ws.global_gate.data());
        if (length == 1) {  // several sequences' next token: dt_proj's product runs in the step kernel
            dd::step_with_state(exec, ssm(), scan_input(ws, x_dbl.data(), batch, 1),
                                tensor_view<float, 3>(ws.y.data(), batch, 1, di), cache.ssm, token(ws, x_dbl.data()));
        } else {
            gemm.multiply(exec, tensor_view<const float, 2>(x_dbl.data(), {rows, rank}, {xw, 1}),
                          dd::matrix(dt_proj, di, rank), tensor_view<float, 2>(ws.delta.data(), rows, di));
            if (global_kernel > 0) {
                cuda::multiply_kernel<<<dd::blocks(rows * di), 256, 0, exec.stream>>>(ws.delta.data(),
                                                                                     ws.global_gate.data(), rows * di);
                dd::check_launch("global selection: gate launch");
            }
            if (decimation) {
                length = dd::decimate(exec, *decimation, ws.delta.data(), di, dt_bias.data(), batch, length, ws,
                                      {{xz.data(), width}, {ws.convolved.data(), di}, {x_dbl.data(), xw},
                                       {ws.delta.data(), di}});
                rows = batch * length;
            }
            dd::scan_with_state(exec, ssm(), scan_input(ws, x_dbl.data(), batch, length),
                                tensor_view<float, 3>(ws.y.data(), batch, length, di), cache.ssm, ws.final_state);
        }
        dd::linear(exec, gemm, dd::as_product_input(exec, ws.y, ws.product_input, rows, di), out_proj, out_proj_bias,
                   tensor_view<float, 2>(out.data(), rows, d_model));
        return length;
    }

    // One token a sequence, the residual stream `hidden` (batch, d_model) updated in place: two
    // kernels — the norm, in_proj, the convolutions (the global selection's too) and x_proj's product;
    // the scan step with dt_proj's product (and the global gate), out_proj and the residual add.
    void decode(const cuda_exec& exec, const float* norm, float epsilon, index_t batch, device_layer_state& cache,
                device_workspace<X>& ws, float* hidden) const {
        namespace dd = device_detail;
        const index_t di = d_inner, width = 2 * di, xw = rank + 2 * state;
        float* const x_dbl = ws.x_sums.data();
        cuda::matvec(exec, in_proj.data(), dd::bias_or_null(in_proj_bias), width, d_model, batch,
                     cuda::rms_normed_input{hidden, d_model, {norm, epsilon}},
                     cuda::conv_x_proj_output{{ws.projected.data(), width, 0, di, kernel, conv_weight.data(),
                                               dd::bias_or_null(conv_bias), cache.conv.data(), ws.convolved.data(),
                                               global_kernel, global_conv.data(), dd::bias_or_null(global_bias),
                                               cache.global.data(), ws.global_gate.data()},
                                              x_proj.data(), xw, x_dbl});
        scan_inputs<float> in = scan_input(ws, x_dbl, batch, 1);
        const tensor_view<float, 3> cached = dd::cached_state(cache.ssm, batch, di);
        in.initial_state = cached;
        const auto p = make_problem("decode", ssm(), in,
                                    scan_outputs<float>{.y = {ws.y.data(), batch, 1, di}, .final_state = cached});
        cuda::step_product(exec, ssm(), p, token(ws, x_dbl),
                           cuda::split_product<X>{out_proj.data(), dd::bias_or_null(out_proj_bias), d_model, hidden,
                                                  d_model},
                           cuda::consumed_sums{x_dbl, batch * xw, ws.arrivals.data()});
    }

private:
    ssm_type ssm() const { return {{device_detail::matrix(A, d_inner, state)}, {}, scaling.modulation()}; }
    device_detail::mamba1_token token(const device_workspace<X>& ws, const float* x_dbl) const {
        return {ws.convolved.data(), dt_proj.data(), dt_bias.data(), d_inner, rank, x_dbl,
                rank + 2 * state, global_kernel > 0 ? ws.global_gate.data() : nullptr};
    }

    // The scan's inputs in the workspace: u the convolved x, Δ (before bias and softplus), B and C from
    // x_proj's output, z from in_proj's.
    scan_inputs<float> scan_input(const device_workspace<X>& ws, const float* x_dbl, index_t batch,
                                  index_t length) const {
        const index_t di = d_inner, n = state, xw = rank + 2 * n;
        return {.u = {ws.convolved.data(), batch, length, di},
                .delta = {ws.delta.data(), batch, length, di},
                .B = detail::grouped_columns<const float>(x_dbl, batch, length, xw, rank, 1, n),
                .C = detail::grouped_columns<const float>(x_dbl, batch, length, xw, rank + n, 1, n),
                .z = detail::columns<const float>(ws.projected.data(), batch, length, 2 * di, di, di),
                .D = device_detail::optional_vector(D),
                .delta_bias = device_detail::optional_vector(dt_bias),
                .delta_softplus = true};
    }
};

// Mamba-2's mixer on the device (see mamba2_mixer).
template <class X>
struct device_mamba2_mixer {
    using host_type = mamba2_mixer;
    using ssm_type = mamba2_mixer::ssm_type;
    template <class T>
    using array = cuda::device_array<T>;

    index_t d_model, d_inner, state, heads, head_dim, groups, kernel;
    float norm_epsilon, delta_min, delta_max;
    layer_scaling scaling;
    array<X> in_proj, out_proj;
    array<float> in_proj_bias, conv_weight, conv_bias, dt_bias, A, D, norm, out_proj_bias;

    explicit device_mamba2_mixer(const mamba2_mixer& m)
        : d_model(m.d_model), d_inner(m.d_inner), state(m.state), heads(m.heads), head_dim(m.head_dim),
          groups(m.groups), kernel(m.kernel), norm_epsilon(m.norm_epsilon), delta_min(m.delta_min),
          delta_max(m.delta_max), scaling(m.scaling), in_proj(array<X>::copy_of(m.in_proj)), out_proj(array<X>::copy_of(m.out_proj)),
          in_proj_bias(array<float>::copy_of(m.in_proj_bias)), conv_weight(array<float>::copy_of(m.conv_weight)),
          conv_bias(array<float>::copy_of(m.conv_bias)), dt_bias(array<float>::copy_of(m.dt_bias)),
          A(array<float>::copy_of(m.A)), D(array<float>::copy_of(m.D)), norm(array<float>::copy_of(m.norm)),
          out_proj_bias(array<float>::copy_of(m.out_proj_bias)) {}

    index_t conv_channels() const { return d_inner + 2 * groups * state; }
    index_t projection_width() const { return d_inner + conv_channels() + heads; }
    index_t global_window() const { return 0; }
    index_t scan_channels() const { return d_inner; }
    index_t state_size() const { return state; }
    index_t kernel_size() const { return kernel; }

    void reserve(device_workspace<X>& ws, index_t batch, index_t rows) const {
        ws.projected.reserve(std::size_t(rows * projection_width()));
        ws.convolved.reserve(std::size_t(rows * conv_channels()));
        ws.delta.reserve(std::size_t(rows * heads));
        ws.y.reserve(std::size_t(rows * d_inner));
        ws.final_state.reserve(std::size_t(batch * d_inner * state));
        ws.product_input.reserve(std::size_t(rows * d_inner));
    }

    // As mamba2_mixer::forward: cuBLAS products between layer kernels (device_causal_lm sends a
    // single sequence's next token to decode instead).
    template <device_gemm Gemm>
    index_t forward(const cuda_exec& exec, const Gemm& gemm, tensor_view<const X, 2> x, index_t batch,
                    index_t length, device_layer_state& cache, device_workspace<X>& ws, tensor_view<float, 2> out,
                    const layer_decimation* decimation = nullptr) const {
        namespace dd = device_detail;
        index_t rows = batch * length;
        const index_t di = d_inner, conv = conv_channels(), width = projection_width();
        const tensor_view<float, 2> projected(ws.projected.data(), rows, width);  // [z | xBC | dt]
        dd::linear(exec, gemm, x, in_proj, in_proj_bias, projected);
        dd::causal_conv(exec, projected.data() + di, width, batch, length, conv, kernel, conv_weight, conv_bias,
                        cache.conv, ws.convolved.data());
        if (length == 1) {  // several sequences' next token: Δ's softplus runs in the step kernel
            dd::step_with_state(exec, ssm(), scan_input(ws, batch, 1), tensor_view<float, 3>(ws.y.data(), batch, 1, di),
                                cache.ssm, token(ws));
        } else {
            cuda::clamped_delta_kernel<<<dd::blocks(rows * heads), 256, 0, exec.stream>>>(
                projected.data() + di + conv, width, dt_bias.data(), delta_min, delta_max, rows, heads,
                ws.delta.data());
            dd::check_launch("mamba2 delta launch");
            if (decimation) {
                length = dd::decimate(exec, *decimation, ws.delta.data(), heads, nullptr, batch, length, ws,
                                      {{projected.data(), width}, {ws.convolved.data(), conv}, {ws.delta.data(), heads}});
                rows = batch * length;
            }
            dd::scan_with_state(exec, ssm(), scan_input(ws, batch, length),
                                tensor_view<float, 3>(ws.y.data(), batch, length, di), cache.ssm, ws.final_state);
        }
        // One norm over all of d_inner, as transformers computes it (see mamba2_mixer).
        cuda::gated_rms_norm_kernel<X><<<unsigned(rows), cuda::row_threads, 0, exec.stream>>>(
            ws.y.data(), projected.data(), width, norm.data(), norm_epsilon, di, ws.product_input.data());
        dd::check_launch("mamba2 gated norm launch");
        dd::linear(exec, gemm, tensor_view<const X, 2>(ws.product_input.data(), rows, di), out_proj, out_proj_bias,
                   tensor_view<float, 2>(out.data(), rows, d_model));
        return length;
    }

    // One token a sequence, the residual stream `hidden` (batch, d_model) updated in place: three
    // kernels — the norm, in_proj and the convolution; the scan step with Δ's softplus; the gated
    // norm, out_proj and the residual add.
    void decode(const cuda_exec& exec, const float* norm_weight, float epsilon, index_t batch,
                device_layer_state& cache, device_workspace<X>& ws, float* hidden) const {
        namespace dd = device_detail;
        const index_t di = d_inner, conv = conv_channels(), width = projection_width();
        float* projected = ws.projected.data();
        cuda::matvec(exec, in_proj.data(), dd::bias_or_null(in_proj_bias), width, d_model, batch,
                     cuda::rms_normed_input{hidden, d_model, {norm_weight, epsilon}},
                     cuda::conv_step_output{projected, width, di, conv, kernel, conv_weight.data(),
                                            dd::bias_or_null(conv_bias), cache.conv.data(), ws.convolved.data()});
        dd::step_with_state(exec, ssm(), scan_input(ws, batch, 1), tensor_view<float, 3>(ws.y.data(), batch, 1, di),
                            cache.ssm, token(ws));
        cuda::matvec(exec, out_proj.data(), dd::bias_or_null(out_proj_bias), d_model, di, batch,
                     cuda::gated_normed_input{ws.y.data(), di, projected, width, {norm.data(), norm_epsilon}},
                     cuda::residual_output{hidden, d_model});
    }

private:
    ssm_type ssm() const {
        return {{tensor_view<const float, 1>(A.data(), heads), head_dim, state}, {}, scaling.modulation()};
    }
    device_detail::mamba2_token token(const device_workspace<X>& ws) const {
        const index_t conv = conv_channels(), width = projection_width();
        return {ws.convolved.data(), conv, ws.projected.data() + d_inner + conv, width, dt_bias.data(), delta_min,
                delta_max};
    }

    // The scan's inputs in the workspace: x, B and C from the convolved [x | B | C], Δ after its softplus.
    scan_inputs<float> scan_input(const device_workspace<X>& ws, index_t batch, index_t length) const {
        const index_t di = d_inner, gn = groups * state, conv = conv_channels();
        const float* xbc = ws.convolved.data();
        return {.u = detail::columns<const float>(xbc, batch, length, conv, 0, di),
                .delta = {ws.delta.data(), batch, length, heads},
                .B = detail::grouped_columns<const float>(xbc, batch, length, conv, di, groups, gn),
                .C = detail::grouped_columns<const float>(xbc, batch, length, conv, di + gn, groups, gn),
                .D = device_detail::optional_vector(D)};
    }
};

// A decoding step captured once and replayed: valid while the tokens, logits and stream it was
// captured with stay the same (the workspace it uses never moves, see device_cache).
class decode_graph {
public:
    decode_graph() = default;
    decode_graph(const decode_graph&) = delete;
    decode_graph& operator=(const decode_graph&) = delete;
    decode_graph(decode_graph&& o) noexcept : graph_(std::exchange(o.graph_, nullptr)), key_(o.key_) {}
    ~decode_graph() { reset(); }

    // Runs `work` on exec.stream, from the graph when the key matches, else capturing it first.
    template <class Work>
    void run(const cuda_exec& exec, const void* tokens, const void* logits, Work&& work) {
        const key k{tokens, logits, exec.stream};
        if (!graph_ || !(k == key_)) {
            reset();
            cuda::check(cudaStreamBeginCapture(exec.stream, cudaStreamCaptureModeThreadLocal), "decode graph: capture");
            try {
                work();
            } catch (...) {
                cudaGraph_t broken = nullptr;
                cudaStreamEndCapture(exec.stream, &broken);
                if (broken) cudaGraphDestroy(broken);
                throw;
            }
            cudaGraph_t graph = nullptr;
            cuda::check(cudaStreamEndCapture(exec.stream, &graph), "decode graph: end capture");
            const cudaError_t made = cudaGraphInstantiate(&graph_, graph, 0);
            cudaGraphDestroy(graph);
            cuda::check(made, "decode graph: instantiate");
            key_ = k;
        }
        cuda::check(cudaGraphLaunch(graph_, exec.stream), "decode graph: launch");
    }

private:
    struct key {
        const void* tokens = nullptr;
        const void* logits = nullptr;
        cudaStream_t stream = nullptr;
        bool operator==(const key&) const = default;
    };
    void reset() {
        if (graph_) cudaGraphExecDestroy(graph_);
        graph_ = nullptr;
    }
    cudaGraphExec_t graph_ = nullptr;
    key key_;
};

// A device model's state across calls. Single-token calls have a workspace of their own, so that the
// buffers a captured decoding graph uses are never reallocated by a longer call.
template <class X>
struct device_cache {
    index_t batch = 0;
    index_t position = 0;
    std::vector<device_layer_state> layers;
    device_workspace<X> prefill, decode;
    decode_graph graph;
};

template <template <class> class MixerOf, class X, device_gemm Gemm = cublas_gemm>
class device_causal_lm {
public:
    using mixer_type = MixerOf<X>;
    using host_type = causal_lm<typename mixer_type::host_type>;
    using cache_type = device_cache<X>;

    // Copies the host model's weights (with its factors and decimation) to the current device.
    explicit device_causal_lm(const host_type& host, Gemm gemm = make_gemm())
        : config_(host.config()), parameters_(host.parameter_count()), decimation_(host.decimation()),
          gemm_(std::move(gemm)),
          embeddings_(cuda::device_array<X>::copy_of(host.embeddings())),
          norm_f_(cuda::device_array<float>::copy_of(host.final_norm())) {
        if (!config_.tie_word_embeddings) head_ = cuda::device_array<X>::copy_of(host.head());
        for (const auto& w : host.layer_norms()) norms_.push_back(cuda::device_array<float>::copy_of(w));
        for (const auto& m : host.mixers()) mixers_.emplace_back(m);
    }

    const io::model_config& config() const { return config_; }
    index_t parameter_count() const { return parameters_; }

    // Decimation as causal_lm has it (decimation.hpp): a decimating layer's selection goes through the
    // host (the call waits for the token importance), so multi-token calls with decimation synchronize;
    // they give the last position's logits only.
    const decimation_settings& decimation() const { return decimation_; }
    void set_decimation(decimation_settings settings) {
        settings.validate("set_decimation", index_t(mixers_.size()));
        decimation_ = std::move(settings);
    }

    cache_type make_cache(index_t batch) const {
        detail::require(batch > 0, "make_cache: batch must be positive, got ", batch);
        cache_type c;
        c.batch = batch;
        for (const mixer_type& m : mixers_) {
            device_layer_state s{cuda::device_array<float>(std::size_t(batch * m.conv_channels() * (m.kernel_size() - 1))),
                                 cuda::device_array<float>(std::size_t(batch * m.scan_channels() * m.state_size())),
                                 cuda::device_array<float>(std::size_t(batch * m.global_window()))};
            for (auto* a : {&s.conv, &s.ssm, &s.global})
                if (!a->empty()) cuda::check(cudaMemset(a->data(), 0, a->size() * sizeof(float)), "make_cache: clear");
            c.layers.push_back(std::move(s));
        }
        cuda::check(cudaDeviceSynchronize(), "make_cache: clear");  // before kernels of any stream use it
        return c;
    }

    // As causal_lm::forward, with tokens and logits in device memory, queued on exec.stream. Token
    // ids are not checked here (they are on the device): an id outside the vocabulary makes its
    // sequence's logits NaN.
    void forward(const cuda_exec& exec, tensor_view<const std::int32_t, 2> tokens, cache_type& c,
                 tensor_view<float, 3> logits) const {
        constexpr const char* where = "device_causal_lm::forward";
        const index_t positions = detail::check_forward_shapes(where, tokens, c.batch, index_t(c.layers.size()),
                                                               index_t(mixers_.size()), logits, config_.vocab_size);
        const index_t batch = tokens.extent(0), length = tokens.extent(1), rows = batch * length;
        detail::require(positions == length || positions == 1, where,
                        ": logits are read for every position or the last one on the device, not the last ", positions);
        const bool all_positions = positions == length;
        detail::require(length == 1 || !decimation_.enabled() || (positions == 1 && decimation_.response_length >= 1),
                        where, ": with decimation, logits are read for the last position only on the device, with a ",
                        "response length of at least 1");
        const index_t d = config_.hidden_size;
        // Single tokens have a workspace of their own: a longer call must not move what a graph uses.
        device_workspace<X>& ws = length == 1 ? c.decode : c.prefill;
        ws.hidden.reserve(std::size_t(rows * d));
        ws.mixed.reserve(std::size_t(rows * d));
        ws.normed.reserve(std::size_t(rows * d));
        for (const mixer_type& m : mixers_) m.reserve(ws, batch, rows);
        // A single sequence's next token is bound by latency: matrix-vector kernels with the layers fused
        // (decode). With more rows cuBLAS's products win (H100, 130M shape: 1.16 ms against 0.93 ms a
        // step at batch 4, docs/performance.md).
        auto work = [&] {
            if (length == 1 && batch == 1) decode(exec, tokens, c, ws, logits);
            else run(exec, tokens, c, ws, logits, all_positions);
        };
        if (length == 1 && exec.stream) c.graph.run(exec, tokens.data(), logits.data(), work);
        else work();
        c.position += length;
    }

private:
    static Gemm make_gemm() {
        cuda::require_device("device_causal_lm");
        return Gemm{};
    }
    // One token a sequence: the residual stream stays in ws.hidden, each layer's norm runs inside its
    // mixer's first product and its residual add inside the last, norm_f inside the head's product.
    void decode(const cuda_exec& exec, tensor_view<const std::int32_t, 2> tokens, cache_type& c,
                device_workspace<X>& ws, tensor_view<float, 3> logits) const {
        const index_t batch = tokens.extent(0), d = config_.hidden_size, vocab = config_.vocab_size;
        const float epsilon = config_.norm_epsilon;
        cuda::embedding_kernel<<<unsigned(batch), cuda::row_threads, 0, exec.stream>>>(
            tokens.data(), embeddings_.data(), vocab, d, ws.hidden.data());
        device_detail::check_launch("embedding launch");
        for (std::size_t l = 0; l < mixers_.size(); ++l)
            mixers_[l].decode(exec, norms_[l].data(), epsilon, batch, c.layers[l], ws, ws.hidden.data());
        const auto& head = head_.empty() ? embeddings_ : head_;
        cuda::matvec(exec, head.data(), nullptr, vocab, d, batch,
                     cuda::rms_normed_input{ws.hidden.data(), d, {norm_f_.data(), epsilon}},
                     cuda::store_output{logits.data(), vocab});
    }

    void run(const cuda_exec& exec, tensor_view<const std::int32_t, 2> tokens, cache_type& c, device_workspace<X>& ws,
             tensor_view<float, 3> logits, bool all_positions) const {
        namespace dd = device_detail;
        const index_t batch = tokens.extent(0);
        index_t length = tokens.extent(1), rows = batch * length;
        const index_t d = config_.hidden_size, vocab = config_.vocab_size;
        const float epsilon = config_.norm_epsilon;
        constexpr int threads = cuda::row_threads;
        cuda::embedding_kernel<<<unsigned(rows), threads, 0, exec.stream>>>(tokens.data(), embeddings_.data(), vocab, d,
                                                                           ws.hidden.data());
        dd::check_launch("embedding launch");
        for (std::size_t l = 0; l < mixers_.size(); ++l) {
            cuda::residual_rms_norm_kernel<X><<<unsigned(rows), threads, 0, exec.stream>>>(
                ws.hidden.data(), l == 0 ? nullptr : ws.mixed.data(), norms_[l].data(), epsilon, d,
                cuda::row_selection{}, ws.normed.data());
            dd::check_launch("rms_norm launch");
            const auto decimating = length > 1 ? decimation_.for_layer(index_t(l)) : std::nullopt;
            const index_t kept = mixers_[l].forward(exec, gemm_, tensor_view<const X, 2>(ws.normed.data(), rows, d), batch,
                                                    length, c.layers[l], ws, tensor_view<float, 2>(ws.mixed.data(), rows, d),
                                                    decimating ? &*decimating : nullptr);
            if (kept != length) {  // the residual stream follows the kept tokens
                dd::gather_rows(exec, ws, ws.hidden.data(), batch * kept, d, ws.hidden.data());
                length = kept, rows = batch * kept;
            }
        }
        // Only the rows whose logits are asked for get the last residual add, norm_f and the head.
        const index_t out_rows = all_positions ? rows : batch;
        const cuda::row_selection selected = all_positions ? cuda::row_selection{} : cuda::row_selection{length, length - 1};
        cuda::residual_rms_norm_kernel<X><<<unsigned(out_rows), threads, 0, exec.stream>>>(
            ws.hidden.data(), ws.mixed.data(), norm_f_.data(), epsilon, d, selected, ws.normed.data());
        dd::check_launch("norm_f launch");
        const auto& head = head_.empty() ? embeddings_ : head_;
        gemm_.multiply(exec, tensor_view<const X, 2>(ws.normed.data(), out_rows, d), dd::matrix(head, vocab, d),
                       tensor_view<float, 2>(logits.data(), out_rows, vocab));
    }

    io::model_config config_;
    index_t parameters_ = 0;
    decimation_settings decimation_;
    Gemm gemm_;
    cuda::device_array<X> embeddings_, head_;  // head_ empty when tied to the embeddings
    cuda::device_array<float> norm_f_;
    std::vector<cuda::device_array<float>> norms_;
    std::vector<mixer_type> mixers_;
};

template <class X>
using device_mamba_lm = device_causal_lm<device_mamba1_mixer, X>;
template <class X>
using device_mamba2_lm = device_causal_lm<device_mamba2_mixer, X>;

// The device copy of a host model, its large matrices stored as X.
template <class X, class Host>
auto to_device(const Host& host) {
    if constexpr (std::same_as<typename Host::mixer_type, mamba1_mixer>) return device_mamba_lm<X>(host);
    else return device_mamba2_lm<X>(host);
}

// A device model behind causal_lm's host-memory interface (what window_losses and ssm-run call):
// each call checks the token ids on the host, uploads them, runs on a stream of its own (so that
// decoding replays a CUDA graph) and waits for the logits to come back.
template <class DeviceLm>
class staged_lm {
public:
    struct cache : DeviceLm::cache_type {
        cuda::device_array<std::int32_t> tokens;
        cuda::device_array<float> logits;
    };

    explicit staged_lm(DeviceLm model) : model_(std::move(model)), stream_(new_stream()) {}

    const io::model_config& config() const { return model_.config(); }
    index_t parameter_count() const { return model_.parameter_count(); }
    const DeviceLm& device_model() const { return model_; }
    cache make_cache(index_t batch) const { return cache{model_.make_cache(batch)}; }

    // The host executor is not used: the work runs on the device.
    void forward(const host_exec&, tensor_view<const std::int32_t, 2> tokens, cache& c,
                 tensor_view<float, 3> logits) const {
        constexpr const char* where = "staged_lm::forward";
        detail::check_forward_shapes(where, tokens, c.batch, index_t(c.layers.size()), config().layers, logits,
                                     config().vocab_size);
        detail::check_token_ids(where, tokens, config().vocab_size);
        const cuda_exec exec{stream_.get()};
        const std::size_t count = std::size_t(tokens.size()), outputs = std::size_t(logits.size());
        c.tokens.reserve(count);
        c.logits.reserve(outputs);
        cuda::check(cudaMemcpyAsync(c.tokens.data(), tokens.data(), count * sizeof(std::int32_t),
                                    cudaMemcpyHostToDevice, exec.stream),
                    "staged_lm: token upload");
        model_.forward(exec, {c.tokens.data(), tokens.extent(0), tokens.extent(1)}, c,
                       {c.logits.data(), logits.extent(0), logits.extent(1), logits.extent(2)});
        cuda::check(cudaMemcpyAsync(logits.data(), c.logits.data(), outputs * sizeof(float), cudaMemcpyDeviceToHost,
                                    exec.stream),
                    "staged_lm: logits download");
        cuda::check(cudaStreamSynchronize(exec.stream), "staged_lm: device work");
    }

private:
    struct stream_deleter {
        void operator()(CUstream_st* s) const { cudaStreamDestroy(s); }
    };
    static std::shared_ptr<CUstream_st> new_stream() {
        cudaStream_t s = nullptr;
        cuda::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "staged_lm: stream");
        return {s, stream_deleter{}};
    }
    DeviceLm model_;
    std::shared_ptr<CUstream_st> stream_;
};

}  // namespace ssm::models
