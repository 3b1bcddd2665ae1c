#pragma once
// Discretization rules turn a continuous eigenvalue λ of A and a step Δ into the per-step decay Ā and
// the coefficient that multiplies B·x (all transition structures here are diagonal, so B̄ = coef·B).
// They act on one eigenvalue at a time, real or complex, on host and device alike.
#include <concepts>

#include "../core/complex.hpp"
#include "../core/macros.hpp"
#include "../core/math.hpp"

namespace ssm {

template <class V>
struct discretized {
    V decay;  // Ā
    V input;  // B̄ = input · B
};

template <class D>
concept discretization = std::default_initializable<D> && requires(float real_eigenvalue,
                                                                   cfloat complex_eigenvalue,
                                                                   float delta) {
    { D::apply(real_eigenvalue, delta) } -> std::same_as<discretized<float>>;
    { D::apply(complex_eigenvalue, delta) } -> std::same_as<discretized<cfloat>>;
};

// A rule whose decay is e^{Δλ} may also offer it in base 2, taking λ·log₂e (scaled once per state)
// instead of λ: the device's exp is a base-2 one, so this saves a multiply on every update.
template <class D>
concept base2_discretization = discretization<D> && requires(float scaled_eigenvalue, float delta) {
    { D::apply_base2(scaled_eigenvalue, delta) } -> std::same_as<discretized<float>>;
};

namespace detail {
template <class V>
SSM_HOST_DEVICE V lift(float x) {
    if constexpr (std::same_as<V, float>) return x;
    else return V{x, 0.0f};
}
SSM_HOST_DEVICE bool is_small(float x) { return magnitude(x) < 1e-3f; }
SSM_HOST_DEVICE bool is_small(cfloat z) { return magnitude(z.re) + magnitude(z.im) < 1e-3f; }
}  // namespace detail

// Zero-order hold: Ā = e^{Δλ}, B̄ = (e^{Δλ} - 1)/λ · B  (→ Δ·B as λ → 0).
struct zoh {
    template <class V>
    SSM_HOST_DEVICE static discretized<V> apply(V lambda, float delta) {
        const V z = lambda * delta;
        // For small |Δλ| (λ = 0 included) the series Δ(1 + z/2 + z²/6) instead of dividing by λ,
        // which for complex λ divides by |λ|²: that underflows, to NaN, long before λ reaches 0.
        const V series = detail::lift<V>(delta) * (detail::lift<V>(1.0f) + z * 0.5f + z * z * (1.0f / 6.0f));
        const V input = detail::is_small(z) ? series : math::expm1(z) / lambda;
        return {math::exp(z), input};
    }
};

// Bilinear (Tustin): Ā = (1 - Δλ/2)^{-1}(1 + Δλ/2), B̄ = (1 - Δλ/2)^{-1} Δ·B.
struct bilinear {
    template <class V>
    SSM_HOST_DEVICE static discretized<V> apply(V lambda, float delta) {
        const V half = lambda * (0.5f * delta);
        const V one = detail::lift<V>(1.0f);
        const V denominator = one - half;
        return {(one + half) / denominator, detail::lift<V>(delta) / denominator};
    }
};

// Forward Euler: Ā = 1 + Δλ, B̄ = Δ·B.
struct euler {
    template <class V>
    SSM_HOST_DEVICE static discretized<V> apply(V lambda, float delta) {
        return {detail::lift<V>(1.0f) + lambda * delta, detail::lift<V>(delta)};
    }
};

// Mamba's rule: zero-order hold for A, Euler for B: Ā = e^{Δλ}, B̄ = Δ·B.
struct zoh_euler {
    template <class V>
    SSM_HOST_DEVICE static discretized<V> apply(V lambda, float delta) {
        return {math::exp(lambda * delta), detail::lift<V>(delta)};
    }
    SSM_HOST_DEVICE static discretized<float> apply_base2(float lambda_log2e, float delta) {
        return {math::exp2(lambda_log2e * delta), delta};
    }
};

}  // namespace ssm
