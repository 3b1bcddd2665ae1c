#pragma once
// The token mixers of Mamba (selective scan, "S6") and Mamba-2 (SSD), as Hugging Face's
// MambaForCausalLM and Mamba2ForCausalLM compute them. Activations are float32, token-major
// (batch·length, features); every projection goes through the GEMM policy.
#include <cmath>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../gemm/blas.hpp"
#include "../io/config.hpp"
#include "../layers/conv1d.hpp"
#include "../layers/norm.hpp"
#include "../modulation/decimator.hpp"
#include "../modulation/modulation.hpp"
#include "../scan/selective_scan.hpp"
#include "weights.hpp"

namespace ssm::detail {
// Row-major (rows, cols) view of a weight matrix or of a workspace buffer, resized to fit.
inline tensor_view<const float, 2> matrix(const std::vector<float>& w, index_t rows, index_t cols) {
    return {w.data(), rows, cols};
}
inline tensor_view<float, 2> buffer(std::vector<float>& w, index_t rows, index_t cols) {
    w.resize(std::size_t(rows * cols));
    return {w.data(), rows, cols};
}
// Columns [first, first + count) of a (batch·length, width) buffer, as (batch, length, count).
template <class T>
tensor_view<T, 3> columns(T* data, index_t batch, index_t length, index_t width, index_t first, index_t count) {
    return {data + first, {batch, length, count}, {length * width, width, 1}};
}
// The same columns split into groups: (batch, length, groups, count / groups).
template <class T>
tensor_view<T, 4> grouped_columns(T* data, index_t batch, index_t length, index_t width, index_t first,
                                  index_t groups, index_t count) {
    return {data + first, {batch, length, groups, count / groups}, {length * width, width, count / groups, 1}};
}
// Moves rows (b, kept[b·k + j]) of a (batch·length, width) buffer to rows (b, j), in place: kept
// positions ascend, so a row only ever moves to a lower one.
inline void keep_rows(tensor_view<float, 2> rows, index_t batch, index_t length, const std::vector<index_t>& kept) {
    const index_t k = index_t(kept.size()) / batch, width = rows.extent(1);
    for (index_t b = 0; b < batch; ++b)
        for (index_t j = 0; j < k; ++j) {
            const index_t from = b * length + kept[std::size_t(b * k + j)], to = b * k + j;
            if (from != to) std::copy_n(rows.data() + from * width, width, rows.data() + to * width);
        }
}
inline tensor_view<const float, 1> optional_vector(const std::vector<float>& v) {
    return v.empty() ? tensor_view<const float, 1>{} : tensor_view<const float, 1>(v.data(), index_t(v.size()));
}

// y = x·Wᵀ + bias (bias optional).
template <host_gemm Gemm>
void linear(const host_exec& exec, const Gemm& gemm, tensor_view<const float, 2> x, const std::vector<float>& weight,
            const std::vector<float>& bias, tensor_view<float, 2> y) {
    gemm.multiply(exec, x, matrix(weight, y.extent(1), x.extent(1)), y);
    if (bias.empty()) return;
    parallel_for(exec, y.extent(0), [&](index_t r) {
        for (index_t c = 0; c < y.extent(1); ++c) y(r, c) += bias[std::size_t(c)];
    });
}
}  // namespace ssm::detail

namespace ssm::models {

// A layer's recurrent state between calls: the conv windows and the SSM state. Decoding a token reads
// and updates it, so it costs the same whatever the length of the prefix.
struct layer_state {
    std::vector<float> conv;    // (batch, conv channels, K-1): the last K-1 inputs of the convolution
    std::vector<float> ssm;     // (batch, channels, state)
    std::vector<float> global;  // (batch, d_inner, K_g-1): the global selection conv's window (Mamba-1 only)
};

// A layer's context-extension factors, fused into its scan's discretization: Δ modulation
// (Δ' = delta·Δ, after Mamba-2's time_step_limit clamp), spectrum clipping (|λ| clipped to a range,
// the data-free variant) and spectrum scaling (A' = α·A for the eigenvalues whose magnitude, after
// clipping, lies in the scaler's band). The defaults leave the layer as trained.
struct layer_scaling {
    float delta = 1.0f;
    spectrum_clipper clip{};
    spectrum_scaler spectrum{};

    using modulation_type = composed<delta_modulator, composed<spectrum_clipper, spectrum_scaler>>;
    modulation_type modulation() const { return {{.factor = delta}, {clip, spectrum}}; }
    bool operator==(const layer_scaling& o) const {
        return delta == o.delta && clip.low == o.clip.low && clip.high == o.clip.high &&
               spectrum.alpha == o.spectrum.alpha && spectrum.min_magnitude == o.spectrum.min_magnitude &&
               spectrum.max_magnitude == o.spectrum.max_magnitude && spectrum.exponent == o.spectrum.exponent;
    }
};

// Scratch buffers a forward pass reuses from call to call; `kept` holds the positions a decimating
// layer kept, (batch, kept length), relative to the sequence the layer was given.
struct workspace {
    std::vector<float> projected, convolved, x_projected, delta, y, gated, global_gate;
    std::vector<index_t> kept;
};

// What a decimating layer does (DeciMamba), handed to its mixer: after Δ is known, keep per sequence
// the tokens `policy` picks, `layer_position` being the layer's index among the decimating layers and
// the last `response_length` tokens never dropped. The scan, gate and output see only those tokens.
struct layer_decimation {
    decimator policy;
    index_t layer_position = 0;
    index_t response_length = 0;

    // The positions each sequence keeps, (batch, k) flattened, from the importance of its tokens
    // (batch·length). Every sequence keeps the same number.
    std::vector<index_t> select(std::span<const float> importance, index_t batch, index_t length) const {
        const index_t response = std::min(response_length, length);
        const index_t keep = policy.schedule.keep(layer_position, length - response);
        std::vector<index_t> kept;
        for (index_t b = 0; b < batch; ++b) {
            const auto picked = decimate(importance.subspan(std::size_t(b * length), std::size_t(length)), keep, response);
            kept.insert(kept.end(), picked.begin(), picked.end());
        }
        return kept;
    }

    // Picks the tokens from Δ (batch·length, Δ channels; after softplus), writes their positions to
    // `kept` (batch, k) and compacts every buffer to the kept rows; returns k.
    index_t apply(tensor_view<const float, 2> delta, index_t batch, index_t length, std::vector<index_t>& kept,
                  std::initializer_list<tensor_view<float, 2>> buffers) const {
        kept = select(delta_importance(delta), batch, length);
        for (const auto& rows : buffers) detail::keep_rows(rows, batch, length, kept);
        return index_t(kept.size()) / batch;
    }
};


// Mamba-1: in_proj → causal conv + SiLU → x_proj (Δ rank, B, C) → dt_proj → selective scan with
// softplus(Δ + bias), D skip and SiLU(z) gate → out_proj.
// With the global selection module (arXiv 2410.15678; config global_selection_kernel = K_g > 0, in the
// layers global_selection_layers lists, or in all) Δ is gated by a long view of the input:
// Δ = softplus(dt_proj(Δ rank)·SiLU(global_conv(x) + bias) + dt_bias), global_conv a causal depthwise
// convolution of K_g taps over in_proj's x (before the short conv).
struct mamba1_mixer {
    static constexpr io::architecture architecture = io::architecture::mamba1;
    using ssm_type = selective_ssm<diagonal_real, zoh_euler, layer_scaling::modulation_type>;

    index_t d_model = 0, d_inner = 0, state = 0, rank = 0, kernel = 0, global_kernel = 0;
    layer_scaling scaling;
    std::vector<float> in_proj, in_proj_bias, conv_weight, conv_bias, x_proj, dt_proj, dt_bias, A, D, out_proj,
        out_proj_bias, global_conv, global_bias;

    template <weight_source Source>
    static mamba1_mixer load(Source& source, const std::string& prefix, const io::model_config& c, index_t layer) {
        mamba1_mixer m;
        m.d_model = c.hidden_size, m.d_inner = c.intermediate_size, m.state = c.state_size;
        m.rank = c.time_step_rank, m.kernel = c.conv_kernel;
        m.global_kernel = c.global_selection_in(layer) ? c.global_selection_kernel : 0;
        const index_t di = m.d_inner, n = m.state;
        m.in_proj = source.required(prefix + "in_proj.weight", {2 * di, m.d_model});
        m.in_proj_bias = source.optional(prefix + "in_proj.bias", {2 * di}, c.use_bias, "use_bias");
        m.conv_weight = source.required(prefix + "conv1d.weight", {di, 1, m.kernel});
        m.conv_bias = source.optional(prefix + "conv1d.bias", {di}, c.use_conv_bias, "use_conv_bias");
        m.x_proj = source.required(prefix + "x_proj.weight", {m.rank + 2 * n, di});
        m.dt_proj = source.required(prefix + "dt_proj.weight", {di, m.rank});
        m.dt_bias = source.required(prefix + "dt_proj.bias", {di});
        m.A = source.required(prefix + "A_log", {di, n});
        for (float& a : m.A) a = -std::exp(a);
        m.D = source.required(prefix + "D", {di});
        m.out_proj = source.required(prefix + "out_proj.weight", {m.d_model, di});
        m.out_proj_bias = source.optional(prefix + "out_proj.bias", {m.d_model}, c.use_bias, "use_bias");
        const bool global = m.global_kernel > 0;
        const char* key = c.global_selection_layers.empty() ? "global_selection_kernel" : "global_selection_layers";
        m.global_conv = source.optional(prefix + "global_conv.weight", {di, 1, m.global_kernel}, global, key);
        m.global_bias = source.optional(prefix + "global_conv.bias", {di}, global && c.use_conv_bias,
                                        global ? "use_conv_bias" : key);
        return m;
    }

    index_t parameter_count() const {
        return index_t(in_proj.size() + in_proj_bias.size() + conv_weight.size() + conv_bias.size() + x_proj.size() +
                       dt_proj.size() + dt_bias.size() + A.size() + D.size() + out_proj.size() + out_proj_bias.size() +
                       global_conv.size() + global_bias.size());
    }
    layer_state make_state(index_t batch) const {
        return {std::vector<float>(std::size_t(batch * d_inner * (kernel - 1))),
                std::vector<float>(std::size_t(batch * d_inner * state)),
                std::vector<float>(std::size_t(batch * d_inner * std::max<index_t>(global_kernel - 1, 0)))};
    }
    index_t conv_channels() const { return d_inner; }
    index_t scan_channels() const { return d_inner; }
    index_t state_size() const { return state; }
    index_t kernel_size() const { return kernel; }

    // x: (batch·length, d_model) normalized hidden states; out: (batch·length, d_model), of which a
    // decimating layer writes the first batch·k rows. Returns the length it leaves (k, or length).
    template <host_gemm Gemm>
    index_t forward(const host_exec& exec, const Gemm& gemm, tensor_view<const float, 2> x, index_t batch,
                    index_t length, layer_state& cache, workspace& ws, tensor_view<float, 2> out,
                    const layer_decimation* decimation = nullptr) const {
        index_t rows = batch * length;
        const index_t di = d_inner, n = state, width = 2 * di, xw = rank + 2 * n;
        const auto xz = detail::buffer(ws.projected, rows, width);
        detail::linear(exec, gemm, x, in_proj, in_proj_bias, xz);

        const auto conv_out = detail::buffer(ws.convolved, rows, di);
        causal_conv1d(exec,
                      conv1d_inputs<float>{.x = detail::columns<const float>(xz.data(), batch, length, width, 0, di),
                                           .weight = detail::matrix(conv_weight, di, kernel),
                                           .bias = detail::optional_vector(conv_bias)},
                      tensor_view<float, 3>(cache.conv.data(), batch, di, kernel - 1),
                      tensor_view<float, 3>(conv_out.data(), batch, length, di));

        const auto x_dbl = detail::buffer(ws.x_projected, rows, xw);
        gemm.multiply(exec, conv_out, detail::matrix(x_proj, xw, di), x_dbl);
        const auto delta = detail::buffer(ws.delta, rows, di);
        gemm.multiply(exec, tensor_view<const float, 2>(x_dbl.data(), {rows, rank}, {xw, 1}), detail::matrix(dt_proj, di, rank),
                      delta);
        if (global_kernel > 0) gate_delta(exec, xz, batch, length, cache, ws, delta);

        if (decimation) {
            // Token importance from the step the scan will take: softplus(Δ + bias), before any factor.
            const auto steps = detail::buffer(ws.gated, rows, di);
            ssm::detail::parallel_for(exec, rows, [&](index_t r) {
                for (index_t c = 0; c < di; ++c) steps(r, c) = math::softplus(delta(r, c) + dt_bias[std::size_t(c)]);
            });
            length = decimation->apply(steps, batch, length, ws.kept, {xz, conv_out, x_dbl, delta});
            rows = batch * length;
        }

        const auto y = detail::buffer(ws.y, rows, di);
        const tensor_view<float, 3> ssm_state(cache.ssm.data(), batch, di, n);
        // The sequential strategy reads a channel's state before writing it, so the cache can be both
        // the initial and the final state.
        selective_scan(exec, sequential{}, ssm_type{{detail::matrix(A, di, n)}, {}, scaling.modulation()},
                       scan_inputs<float>{.u = {conv_out.data(), batch, length, di},
                                          .delta = {delta.data(), batch, length, di},
                                          .B = detail::grouped_columns<const float>(x_dbl.data(), batch, length, xw, rank, 1, n),
                                          .C = detail::grouped_columns<const float>(x_dbl.data(), batch, length, xw, rank + n, 1, n),
                                          .z = detail::columns<const float>(xz.data(), batch, length, width, di, di),
                                          .D = detail::optional_vector(D),
                                          .delta_bias = detail::optional_vector(dt_bias),
                                          .delta_softplus = true,
                                          .initial_state = ssm_state},
                       scan_outputs<float>{.y = {y.data(), batch, length, di}, .final_state = ssm_state});
        detail::linear(exec, gemm, y, out_proj, out_proj_bias, tensor_view<float, 2>(out.data(), rows, d_model));
        return length;
    }

private:
    // Δ (before bias and softplus) ·= SiLU(global_conv(x) + bias), x in_proj's first half; the conv's
    // window is carried in cache.global.
    void gate_delta(const host_exec& exec, tensor_view<const float, 2> xz, index_t batch, index_t length,
                    layer_state& cache, workspace& ws, tensor_view<float, 2> delta) const {
        const index_t rows = batch * length, di = d_inner;
        const auto gate = detail::buffer(ws.global_gate, rows, di);
        causal_conv1d(exec,
                      conv1d_inputs<float>{.x = detail::columns<const float>(xz.data(), batch, length, xz.extent(1), 0, di),
                                           .weight = detail::matrix(global_conv, di, global_kernel),
                                           .bias = detail::optional_vector(global_bias)},
                      tensor_view<float, 3>(cache.global.data(), batch, di, global_kernel - 1),
                      tensor_view<float, 3>(gate.data(), batch, length, di));
        ssm::detail::parallel_for(exec, rows, [&](index_t r) {
            for (index_t c = 0; c < di; ++c) delta(r, c) *= gate(r, c);
        });
    }
};

// Mamba-2: in_proj → [z, xBC, dt]; causal conv + SiLU on xBC → x (heads × head_dim), B, C (groups ×
// state); scan with scalar A per head, Δ = softplus(dt + dt_bias) clamped to time_step_limit, D skip;
// gated RMSNorm with z; out_proj.
struct mamba2_mixer {
    static constexpr io::architecture architecture = io::architecture::mamba2;
    using ssm_type = selective_ssm<scalar_identity, zoh_euler, layer_scaling::modulation_type>;

    index_t d_model = 0, d_inner = 0, state = 0, heads = 0, head_dim = 0, groups = 0, kernel = 0;
    layer_scaling scaling;
    float norm_epsilon = 1e-5f, delta_min = 0.0f, delta_max = 0.0f;
    std::vector<float> in_proj, in_proj_bias, conv_weight, conv_bias, dt_bias, A, D, norm, out_proj, out_proj_bias;

    template <weight_source Source>
    static mamba2_mixer load(Source& source, const std::string& prefix, const io::model_config& c,
                             index_t /*layer: Mamba-2 layers are all alike*/) {
        detail::require(c.global_selection_kernel == 0, "mamba2_mixer: the global selection module is a Mamba-1 one");
        mamba2_mixer m;
        m.d_model = c.hidden_size, m.d_inner = c.intermediate_size, m.state = c.state_size;
        m.heads = c.heads, m.head_dim = c.head_dim, m.groups = c.groups, m.kernel = c.conv_kernel;
        m.norm_epsilon = c.norm_epsilon, m.delta_min = c.time_step_min, m.delta_max = c.time_step_max;
        const index_t width = m.projection_width();
        m.in_proj = source.required(prefix + "in_proj.weight", {width, m.d_model});
        m.in_proj_bias = source.optional(prefix + "in_proj.bias", {width}, c.use_bias, "use_bias");
        m.conv_weight = source.required(prefix + "conv1d.weight", {m.conv_channels(), 1, m.kernel});
        m.conv_bias = source.optional(prefix + "conv1d.bias", {m.conv_channels()}, c.use_conv_bias, "use_conv_bias");
        m.dt_bias = source.required(prefix + "dt_bias", {m.heads});
        m.A = source.required(prefix + "A_log", {m.heads});
        for (float& a : m.A) a = -std::exp(a);
        // D is one value per head; the scan takes one per channel.
        const std::vector<float> d_heads = source.required(prefix + "D", {m.heads});
        for (index_t d = 0; d < m.d_inner; ++d) m.D.push_back(d_heads[std::size_t(d / m.head_dim)]);
        m.norm = source.required(prefix + "norm.weight", {m.d_inner});
        m.out_proj = source.required(prefix + "out_proj.weight", {m.d_model, m.d_inner});
        m.out_proj_bias = source.optional(prefix + "out_proj.bias", {m.d_model}, c.use_bias, "use_bias");
        return m;
    }

    index_t parameter_count() const {  // D counted once per head, as stored
        return index_t(in_proj.size() + in_proj_bias.size() + conv_weight.size() + conv_bias.size() + dt_bias.size() +
                       A.size() + std::size_t(heads) + norm.size() + out_proj.size() + out_proj_bias.size());
    }
    index_t conv_channels() const { return d_inner + 2 * groups * state; }
    index_t projection_width() const { return d_inner + conv_channels() + heads; }
    layer_state make_state(index_t batch) const {
        return {std::vector<float>(std::size_t(batch * conv_channels() * (kernel - 1))),
                std::vector<float>(std::size_t(batch * d_inner * state)), {}};
    }
    index_t scan_channels() const { return d_inner; }
    index_t state_size() const { return state; }
    index_t kernel_size() const { return kernel; }

    // As Mamba-1's forward; a decimating layer ranks tokens by their per-head Δ.
    template <host_gemm Gemm>
    index_t forward(const host_exec& exec, const Gemm& gemm, tensor_view<const float, 2> x, index_t batch,
                    index_t length, layer_state& cache, workspace& ws, tensor_view<float, 2> out,
                    const layer_decimation* decimation = nullptr) const {
        index_t rows = batch * length;
        const index_t di = d_inner, gn = groups * state, conv = conv_channels();
        const index_t width = projection_width();
        const auto projected = detail::buffer(ws.projected, rows, width);  // [z | xBC | dt]
        detail::linear(exec, gemm, x, in_proj, in_proj_bias, projected);

        const auto xbc = detail::buffer(ws.convolved, rows, conv);  // [x | B | C]
        causal_conv1d(exec,
                      conv1d_inputs<float>{.x = detail::columns<const float>(projected.data(), batch, length, width, di, conv),
                                           .weight = detail::matrix(conv_weight, conv, kernel),
                                           .bias = detail::optional_vector(conv_bias)},
                      tensor_view<float, 3>(cache.conv.data(), batch, conv, kernel - 1),
                      tensor_view<float, 3>(xbc.data(), batch, length, conv));

        // Δ = clamp(softplus(dt + dt_bias), time_step_limit): small (one per head and token), so it is
        // computed here rather than in the scan, which has no clamp.
        const auto delta = detail::buffer(ws.delta, rows, heads);
        ssm::detail::parallel_for(exec, rows, [&](index_t r) {
            for (index_t h = 0; h < heads; ++h) {
                delta(r, h) = math::clamped_softplus(projected(r, di + conv + h) + dt_bias[std::size_t(h)], delta_min,
                                                     delta_max);
            }
        });
        if (decimation) {
            length = decimation->apply(delta, batch, length, ws.kept, {projected, xbc, delta});
            rows = batch * length;
        }

        const auto y = detail::buffer(ws.y, rows, di);
        const tensor_view<float, 3> ssm_state(cache.ssm.data(), batch, di, state);
        // As in Mamba-1, the sequential strategy may read and write the cache's state in place.
        selective_scan(exec, sequential{},
                       ssm_type{{tensor_view<const float, 1>(A.data(), heads), head_dim, state}, {}, scaling.modulation()},
                       scan_inputs<float>{.u = detail::columns<const float>(xbc.data(), batch, length, conv, 0, di),
                                          .delta = {delta.data(), batch, length, heads},
                                          .B = detail::grouped_columns<const float>(xbc.data(), batch, length, conv, di, groups, gn),
                                          .C = detail::grouped_columns<const float>(xbc.data(), batch, length, conv, di + gn, groups, gn),
                                          .D = detail::optional_vector(D),
                                          .initial_state = ssm_state},
                       scan_outputs<float>{.y = {y.data(), batch, length, di}, .final_state = ssm_state});

        // One norm over all of d_inner, as transformers computes it (mamba_ssm normalizes each of the
        // n_groups groups on its own; the two agree only for n_groups = 1).
        const auto gated = detail::buffer(ws.gated, rows, di);
        gated_rms_norm(exec, tensor_view<const float, 2>(y),
                       tensor_view<const float, 2>(projected.data(), {rows, di}, {width, 1}),
                       detail::optional_vector(norm), rms_norm_inputs{.epsilon = norm_epsilon}, gated);
        detail::linear(exec, gemm, gated, out_proj, out_proj_bias, tensor_view<float, 2>(out.data(), rows, d_model));
        return length;
    }
};

}  // namespace ssm::models
