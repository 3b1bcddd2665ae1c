#pragma once
// Modulation policies act inside a scan's discretization step: `delta` rewrites each token's step Δ
// before discretization (so it changes both the decay and the input term), `eigenvalue` rewrites an
// eigenvalue of A once per scan (so it changes the decay and, for rules whose B̄ depends on A, the
// input matrix, but never the step). They compose with `compose(a, b, ...)`, applied left to right.
#include <cmath>
#include <concepts>
#include <limits>
#include <string_view>

#include "../core/complex.hpp"
#include "../core/error.hpp"
#include "../core/macros.hpp"
#include "../core/tensor_view.hpp"

namespace ssm {

template <class M>
concept modulation = std::copyable<M> && requires(const M m, float delta, float real_eigenvalue,
                                                  cfloat complex_eigenvalue, index_t channel,
                                                  std::string_view where) {
    // `channel` is the Δ channel: a channel for Mamba-1, a head for Mamba-2.
    { m.delta(delta, channel) } -> std::same_as<float>;
    { m.eigenvalue(real_eigenvalue, channel) } -> std::same_as<float>;
    { m.eigenvalue(complex_eigenvalue, channel) } -> std::same_as<cfloat>;
    m.validate(where, channel);  // throws ssm::error when the policy does not fit `channel` Δ channels
};

struct no_modulation {
    SSM_HOST_DEVICE float delta(float delta, index_t) const { return delta; }
    template <class V>
    SSM_HOST_DEVICE V eigenvalue(V lambda, index_t) const { return lambda; }
    void validate(std::string_view, index_t) const {}
};

// Δ' = s·Δ with one factor, optionally times a factor per Δ channel (MambaExtend-style scaling).
// Channel factors are read where the scan runs (device memory for CUDA scans), so only their count
// is checked up front.
struct delta_modulator {
    float factor = 1.0f;
    tensor_view<const float, 1> channel_factors{};  // absent, or one per Δ channel

    SSM_HOST_DEVICE float delta(float delta, index_t channel) const {
        const float s = channel_factors.data() ? factor * channel_factors(channel) : factor;
        return s * delta;
    }
    template <class V>
    SSM_HOST_DEVICE V eigenvalue(V lambda, index_t) const { return lambda; }
    void validate(std::string_view where, index_t delta_channels) const {
        detail::require(factor > 0.0f, where, ": delta_modulator factor must be positive, got ", factor);
        if (channel_factors.empty()) return;
        detail::require(channel_factors.extent(0) == delta_channels, where,
                        ": delta_modulator has ", channel_factors.extent(0),
                        " channel factors, expected one per delta channel (", delta_channels, ")");
    }
};

// Spectrum scaling (Mamba Modulation): eigenvalues whose magnitude lies in [min_magnitude,
// max_magnitude] (all of them by default) get magnitude α·|λ|^p, keeping their direction; Δ and so
// the input term Δ·B·x stay untouched. p = 1 is A' = α·A; α = 1, p = s is the form of the paper's
// public code, A = -exp(s·A_log) = -|A|^s, which for s < 1 draws every |λ| towards 1 in log scale.
// Example: α < 1 on the band |λ| < 0.1 slows the slowest modes further, lengthening memory.
struct spectrum_scaler {
    float alpha = 1.0f;
    float min_magnitude = 0.0f;
    float max_magnitude = std::numeric_limits<float>::infinity();
    float exponent = 1.0f;

    SSM_HOST_DEVICE float delta(float delta, index_t) const { return delta; }
    template <class V>
    SSM_HOST_DEVICE V eigenvalue(V lambda, index_t) const {
        const float m = magnitude(lambda);
        if (m < min_magnitude || m > max_magnitude) return lambda;
        return exponent == 1.0f || m == 0.0f ? lambda * alpha : lambda * (alpha * powf(m, exponent - 1.0f));
    }
    void validate(std::string_view where, index_t) const {
        detail::require(alpha > 0.0f, where, ": spectrum_scaler alpha must be positive, got ", alpha);
        detail::require(exponent > 0.0f && exponent < std::numeric_limits<float>::infinity(), where,
                        ": spectrum_scaler exponent must be positive and finite, got ", exponent);
        detail::require(min_magnitude <= max_magnitude, where, ": spectrum_scaler band is empty: [",
                        min_magnitude, ", ", max_magnitude, "]");
    }
};

// Clips the spectrum: eigenvalues with magnitude below `low` or above `high` are rescaled to that
// magnitude, keeping their direction (the data-free variant of spectrum scaling, with the bounds
// taken from percentiles of a layer's trained |λ|). Zero stays zero.
struct spectrum_clipper {
    float low = 0.0f;
    float high = std::numeric_limits<float>::infinity();

    SSM_HOST_DEVICE float delta(float delta, index_t) const { return delta; }
    template <class V>
    SSM_HOST_DEVICE V eigenvalue(V lambda, index_t) const {
        const float m = magnitude(lambda);
        if (m < low && m > 0.0f) return lambda * (low / m);
        if (m > high) return lambda * (high / m);
        return lambda;
    }
    void validate(std::string_view where, index_t) const {
        detail::require(low >= 0.0f && low <= high, where, ": spectrum_clipper range is invalid: [", low, ", ", high, "]");
    }
};

// Two policies applied in sequence: `first`, then `second`.
template <modulation First, modulation Second>
struct composed {
    First first;
    Second second;

    SSM_HOST_DEVICE float delta(float delta, index_t channel) const {
        return second.delta(first.delta(delta, channel), channel);
    }
    template <class V>
    SSM_HOST_DEVICE V eigenvalue(V lambda, index_t channel) const {
        return second.eigenvalue(first.eigenvalue(lambda, channel), channel);
    }
    void validate(std::string_view where, index_t delta_channels) const {
        first.validate(where, delta_channels);
        second.validate(where, delta_channels);
    }
};

template <modulation M>
M compose(M m) {
    return m;
}
template <modulation First, modulation Second, modulation... Rest>
auto compose(First first, Second second, Rest... rest) {
    return compose(composed<First, Second>{first, second}, rest...);
}

}  // namespace ssm
