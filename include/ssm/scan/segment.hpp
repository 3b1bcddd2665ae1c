#pragma once
// The fused inner loop every strategy is built from: a block of `Lanes` consecutive channels of one
// batch row advanced over a range of tokens. Lanes are the unit of vectorization on the host (each
// lane a channel, so Ā = e^{ΔA} is one vector exp per state index) and are 1 on the device.
#include "../core/macros.hpp"
#include "../core/math.hpp"
#include "problem.hpp"

namespace ssm::detail {

template <class V, class T>
SSM_HOST_DEVICE V load_value(const tensor_view<const T, 4>& v, index_t b, index_t t, index_t g, index_t n) {
    if constexpr (std::same_as<V, cfloat>) return {to_float(v(b, t, g, 2 * n)), to_float(v(b, t, g, 2 * n + 1))};
    else return to_float(v(b, t, g, n));
}
SSM_HOST_DEVICE float real_product(float c, float h) { return c * h; }
SSM_HOST_DEVICE float real_product(cfloat c, cfloat h) { return c.re * h.re - c.im * h.im; }

// Per-lane facts of a channel block, fixed for the whole scan.
template <int Lanes>
struct lane_block {
    index_t channel[Lanes];        // clamped to the last channel past the end (never stored)
    index_t delta_channel[Lanes];
    index_t group[Lanes];
    float skip[Lanes];
    float bias[Lanes];
    int valid;                     // lanes that hold real channels
    bool delta_contiguous;         // lanes read consecutive Δ channels
    bool uniform_group;            // all lanes read the same group of B and C
};

template <int Lanes, class Ssm, class T>
SSM_HOST_DEVICE lane_block<Lanes> make_lane_block(const Ssm& model, const scan_problem<T>& p, index_t d0) {
    lane_block<Lanes> blk;
    const index_t per_group = p.shape.channels / p.shape.groups;
    for (int lane = 0; lane < Lanes; ++lane) {
        const index_t d = d0 + lane < p.shape.channels ? d0 + lane : p.shape.channels - 1;
        const index_t dc = model.transition.delta_channel(d);
        blk.channel[lane] = d;
        blk.delta_channel[lane] = dc;
        blk.group[lane] = d / per_group;
        blk.skip[lane] = p.in.D.data() ? p.in.D(d) : 0.0f;
        blk.bias[lane] = p.in.delta_bias.data() ? p.in.delta_bias(dc) : 0.0f;
    }
    blk.valid = int(p.shape.channels - d0 < Lanes ? p.shape.channels - d0 : Lanes);
    blk.uniform_group = blk.group[0] == blk.group[Lanes - 1];
    blk.delta_contiguous = blk.delta_channel[Lanes - 1] - blk.delta_channel[0] == Lanes - 1;
    return blk;
}

// The eigenvalues each lane's states decay with, after the modulation policy ([n][lane] order).
template <int Lanes, class Ssm, class T>
SSM_HOST_DEVICE void modulated_eigenvalues(const Ssm& model, const scan_problem<T>& p, const lane_block<Lanes>& blk,
                                           typename Ssm::value_type (*lambda)[Lanes]) {
    for (index_t n = 0; n < p.shape.state; ++n)
        for (int lane = 0; lane < Lanes; ++lane)
            lambda[n][lane] = model.modulation.eigenvalue(model.transition.eigenvalue(blk.channel[lane], n),
                                                          blk.delta_channel[lane]);
}

// Reads element (b, t, index[lane]) of a (batch, length, channels) view into each lane. A full block
// of consecutive channels in a unit-stride view is one contiguous (vector) load.
template <int Lanes, class T>
SSM_HOST_DEVICE void load_lanes(const tensor_view<const T, 3>& v, index_t b, index_t t, const index_t (&index)[Lanes],
                                bool contiguous, float (&out)[Lanes]) {
    if (contiguous && v.stride(2) == 1) {
        const T* row = &v(b, t, index[0]);
        for (int lane = 0; lane < Lanes; ++lane) out[lane] = to_float(row[lane]);
    } else {
        for (int lane = 0; lane < Lanes; ++lane) out[lane] = to_float(v(b, t, index[lane]));
    }
}

// Token t's step Δ (bias, softplus and Δ modulation applied) and input x for each lane. Loads and
// arithmetic are separate loops with the branches hoisted, so the arithmetic vectorizes.
template <int Lanes, class Ssm, class T>
SSM_HOST_DEVICE void token_inputs(const Ssm& model, const scan_problem<T>& p, const lane_block<Lanes>& blk,
                                  index_t b, index_t t, float (&delta)[Lanes], float (&x)[Lanes]) {
    load_lanes(p.in.delta, b, t, blk.delta_channel, blk.delta_contiguous, delta);
    load_lanes(p.in.u, b, t, blk.channel, blk.valid == Lanes, x);
    for (int lane = 0; lane < Lanes; ++lane) delta[lane] += blk.bias[lane];
    if (p.in.delta_softplus)
        for (int lane = 0; lane < Lanes; ++lane) delta[lane] = math::softplus(delta[lane]);
    for (int lane = 0; lane < Lanes; ++lane)
        delta[lane] = model.modulation.delta(delta[lane], blk.delta_channel[lane]);
}

// y_t = (scale·acc + D·x) · SiLU(z), stored for the lanes that hold real channels.
template <int Lanes, class T>
SSM_HOST_DEVICE void write_output(const scan_problem<T>& p, const lane_block<Lanes>& blk, index_t b, index_t t,
                                  float scale, const float (&acc)[Lanes], const float (&x)[Lanes]) {
    float y[Lanes];
    for (int lane = 0; lane < Lanes; ++lane) y[lane] = scale * acc[lane] + blk.skip[lane] * x[lane];
    if (p.in.z.data()) {
        float z[Lanes];
        load_lanes(p.in.z, b, t, blk.channel, blk.valid == Lanes, z);
        for (int lane = 0; lane < Lanes; ++lane) y[lane] *= math::silu(z[lane]);
    }
    T* row = &p.out.y(b, t, blk.channel[0]);
    if (blk.valid == Lanes && p.out.y.stride(2) == 1)
        for (int lane = 0; lane < Lanes; ++lane) row[lane] = from_float<T>(y[lane]);
    else
        for (int lane = 0; lane < blk.valid; ++lane) p.out.y(b, t, blk.channel[lane]) = from_float<T>(y[lane]);
}

// B_t and C_t for state index n, as seen by each lane's group.
template <bool UniformGroup, int Lanes, class V, class T>
SSM_HOST_DEVICE void load_bc(const scan_problem<T>& p, const lane_block<Lanes>& blk, index_t b, index_t t,
                             index_t n, V (&bn)[Lanes], V (&cn)[Lanes]) {
    if constexpr (UniformGroup) {
        const V b_shared = load_value<V>(p.in.B, b, t, blk.group[0], n);
        const V c_shared = load_value<V>(p.in.C, b, t, blk.group[0], n);
        for (int lane = 0; lane < Lanes; ++lane) {
            bn[lane] = b_shared;
            cn[lane] = c_shared;
        }
    } else {
        for (int lane = 0; lane < Lanes; ++lane) {
            bn[lane] = load_value<V>(p.in.B, b, t, blk.group[lane], n);
            cn[lane] = load_value<V>(p.in.C, b, t, blk.group[lane], n);
        }
    }
}

// Ā and B̄ for one (state index, lane); structures whose decay is the same for every state index
// (Mamba-2) reuse the lane's first discretization instead of one exp per state.
template <class Ssm, class V>
SSM_HOST_DEVICE discretized<V> discretize(const discretized<V>& shared, V lambda, float delta) {
    if constexpr (Ssm::structure_type::state_invariant_decay) return shared;
    else return Ssm::discretization_type::apply(lambda, delta);
}

template <bool UniformGroup, bool TrackDecay, int Lanes, class Ssm, class T>
SSM_HOST_DEVICE void scan_tokens(const Ssm& model, const scan_problem<T>& p, const lane_block<Lanes>& blk,
                                 index_t b, index_t t0, index_t t1, typename Ssm::value_type (*state)[Lanes],
                                 typename Ssm::value_type (*decay_complement)[Lanes], bool write_y) {
    using V = typename Ssm::value_type;
    const float scale = model.transition.output_scale();
    // Local copies: the compiler then knows nothing aliases them and keeps the lane loop vectorized
    // without run-time overlap checks.
    V lambda[max_state][Lanes], h[max_state][Lanes];
    modulated_eigenvalues(model, p, blk, lambda);
    for (index_t n = 0; n < p.shape.state; ++n)
        for (int lane = 0; lane < Lanes; ++lane) h[n][lane] = state[n][lane];
    for (index_t t = t0; t < t1; ++t) {
        float delta[Lanes], x[Lanes], acc[Lanes] = {};
        token_inputs(model, p, blk, b, t, delta, x);
        discretized<V> shared[Lanes];
        if constexpr (Ssm::structure_type::state_invariant_decay)
            for (int lane = 0; lane < Lanes; ++lane)
                shared[lane] = Ssm::discretization_type::apply(lambda[0][lane], delta[lane]);
        for (index_t n = 0; n < p.shape.state; ++n) {
            V bn[Lanes], cn[Lanes];
            load_bc<UniformGroup>(p, blk, b, t, n, bn, cn);
            for (int lane = 0; lane < Lanes; ++lane) {
                const auto q = discretize<Ssm>(shared[lane], lambda[n][lane], delta[lane]);
                const V next = q.decay * h[n][lane] + q.input * bn[lane] * x[lane];
                h[n][lane] = next;
                acc[lane] += real_product(cn[lane], next);
                if constexpr (TrackDecay) {
                    // 1 - Π Ā, as c + (1 - c)(1 - Ā): a float product of factors near 1 stays near 1,
                    // where each multiplication rounds the same way and the error builds up.
                    const V c = decay_complement[n][lane], one = lift<V>(1.0f);
                    decay_complement[n][lane] = c + (one - c) * (one - q.decay);
                }
            }
        }
        if (write_y) write_output(p, blk, b, t, scale, acc, x);
    }
    for (index_t n = 0; n < p.shape.state; ++n)
        for (int lane = 0; lane < Lanes; ++lane) state[n][lane] = h[n][lane];
}

// Advances channels [d0, d0 + Lanes) of batch row b over tokens [t0, t1). `state` holds the state on
// entry and on exit ([n][lane] order); when `decay_complement` is non-null it holds 1 - P on entry and
// 1 - P·Π Ā on exit, Π over the tokens (the chunked strategy's carry factor P, kept as its distance
// from 1). Outputs y are written only when `write_y`.
template <int Lanes, class Ssm, class T>
SSM_HOST_DEVICE void scan_segment(const Ssm& model, const scan_problem<T>& p, index_t b, index_t d0,
                                  index_t t0, index_t t1, typename Ssm::value_type (*state)[Lanes],
                                  typename Ssm::value_type (*decay_complement)[Lanes], bool write_y) {
    const auto blk = make_lane_block<Lanes>(model, p, d0);
    if (blk.uniform_group) {
        if (decay_complement) scan_tokens<true, true>(model, p, blk, b, t0, t1, state, decay_complement, write_y);
        else scan_tokens<true, false>(model, p, blk, b, t0, t1, state, decay_complement, write_y);
    } else {
        if (decay_complement) scan_tokens<false, true>(model, p, blk, b, t0, t1, state, decay_complement, write_y);
        else scan_tokens<false, false>(model, p, blk, b, t0, t1, state, decay_complement, write_y);
    }
}

// One state of (b, d) in a (batch, channels, state·components) view of floats, and its store.
template <class V>
SSM_HOST_DEVICE V state_element(const tensor_view<const float, 3>& v, index_t b, index_t d, index_t n) {
    if constexpr (std::same_as<V, cfloat>) return {v(b, d, 2 * n), v(b, d, 2 * n + 1)};
    else return v(b, d, n);
}
template <class V>
SSM_HOST_DEVICE void store_state_element(const tensor_view<float, 3>& v, index_t b, index_t d, index_t n, V value) {
    if constexpr (std::same_as<V, cfloat>) {
        v(b, d, 2 * n) = value.re;
        v(b, d, 2 * n + 1) = value.im;
    } else {
        v(b, d, n) = value;
    }
}

// Reads the initial state of a channel block (zeros when absent) into [n][lane] order.
template <int Lanes, class V, class T>
SSM_HOST_DEVICE void load_initial_state(const scan_problem<T>& p, index_t b, index_t d0, V (*state)[Lanes]) {
    for (index_t n = 0; n < p.shape.state; ++n)
        for (int lane = 0; lane < Lanes; ++lane) {
            const index_t d = d0 + lane < p.shape.channels ? d0 + lane : p.shape.channels - 1;
            state[n][lane] = p.in.initial_state.data() ? state_element<V>(p.in.initial_state, b, d, n) : V{};
        }
}

template <int Lanes, class V, class T>
SSM_HOST_DEVICE void store_final_state(const scan_problem<T>& p, index_t b, index_t d0, const V (*state)[Lanes]) {
    if (!p.out.final_state.data()) return;
    for (index_t n = 0; n < p.shape.state; ++n)
        for (int lane = 0; lane < Lanes && d0 + lane < p.shape.channels; ++lane)
            store_state_element(p.out.final_state, b, d0 + lane, n, state[n][lane]);
}

}  // namespace ssm::detail
