// Scans whose outcome is known in closed form, and the modulations' defining identities.
#include <complex>
#include <vector>

#include "reference.hpp"

namespace {

using ssm::index_t;

using ref::cplx;

index_t bc_offset(const ref::problem& p, index_t token, index_t d, index_t n) {
    return (token * p.groups + d / p.channels_per_group()) * p.width() + p.components() * n;
}

index_t delta_channel(const ref::problem& p, index_t d) { return d / (p.channels / p.delta_channels()); }

cplx initial_state(const ref::problem& p, index_t b, index_t d, index_t n) {
    if (p.initial_state.empty()) return {};
    return ref::value_at(p, p.initial_state, (b * p.channels + d) * p.width() + p.components() * n);
}

// y of a problem whose state h_t(b, d, n) is given in closed form by state(b, t, d, n):
// y_t = (scale·Re Σ_n C_t,n h_t,n + D x_t)·SiLU(z_t), as every structure reads its output.
template <class State>
std::vector<double> output_of(const ref::problem& p, State&& state) {
    const double scale = p.kind == ref::structure::diagonal_complex && p.conjugate_pairs ? 2.0 : 1.0;
    std::vector<double> y(std::size_t(p.batch * p.length * p.channels));
    for (index_t b = 0; b < p.batch; ++b)
        for (index_t t = 0; t < p.length; ++t)
            for (index_t d = 0; d < p.channels; ++d) {
                const index_t token = b * p.length + t;
                double acc = 0.0;
                for (index_t n = 0; n < p.state; ++n)
                    acc += (ref::value_at(p, p.C, bc_offset(p, token, d, n)) * state(b, t, d, n)).real();
                const double x = p.u[std::size_t(token * p.channels + d)];
                double out = scale * acc + (p.D.empty() ? 0.0 : p.D[std::size_t(d)] * x);
                if (!p.z.empty()) out *= ref::silu(p.z[std::size_t(token * p.channels + d)]);
                y[std::size_t(token * p.channels + d)] = out;
            }
    return y;
}

// With A = 0 every rule has Ā = 1 and B̄ = Δ, so h_t = h_0 + Σ_{s<=t} Δ_s B_s x_s.
std::vector<double> running_sum_output(const ref::problem& p) {
    std::vector<cplx> sums(std::size_t(p.batch * p.length * p.channels * p.state));
    auto at = [&](index_t b, index_t t, index_t d, index_t n) {
        return std::size_t(((b * p.length + t) * p.channels + d) * p.state + n);
    };
    for (index_t b = 0; b < p.batch; ++b)
        for (index_t d = 0; d < p.channels; ++d)
            for (index_t n = 0; n < p.state; ++n) {
                cplx h = initial_state(p, b, d, n);
                for (index_t t = 0; t < p.length; ++t) {
                    const index_t token = b * p.length + t;
                    h += ref::step_delta(p, token, delta_channel(p, d)) * ref::value_at(p, p.B, bc_offset(p, token, d, n)) *
                         p.u[std::size_t(token * p.channels + d)];
                    sums[at(b, t, d, n)] = h;
                }
            }
    return output_of(p, [&](index_t b, index_t t, index_t d, index_t n) { return sums[at(b, t, d, n)]; });
}

// With constant Δ, B, C and x per batch row and channel, h_t = a^{t+1} h_0 + (1 + a + ... + a^t) b̄·B·x,
// with a and b̄ the rule's; zero-order hold is exact for a constant input, so its state is the
// solution of h' = λh + Bx at time (t+1)Δ.
std::vector<double> constant_input_output(const ref::problem& p) {
    return output_of(p, [&](index_t b, index_t t, index_t d, index_t n) {
        const index_t first = b * p.length;  // every token of the row repeats this one
        const double dt = ref::step_delta(p, first, delta_channel(p, d));
        const cplx lambda = ref::eigenvalue<cplx>(p, d, n);
        const cplx h0 = initial_state(p, b, d, n);
        const cplx bx = ref::value_at(p, p.B, bc_offset(p, first, d, n)) * p.u[std::size_t(first * p.channels + d)];
        const double steps = double(t + 1);
        switch (p.discretization) {
        case ref::rule::zoh: {
            const cplx a_t = std::exp(lambda * dt * steps);
            return a_t * h0 + (a_t - 1.0) / lambda * bx;
        }
        case ref::rule::zoh_euler: {
            const cplx a_t = std::exp(lambda * dt * steps);
            return a_t * h0 + dt * (1.0 - a_t) / (1.0 - std::exp(lambda * dt)) * bx;
        }
        case ref::rule::bilinear: {
            const cplx a = (1.0 + lambda * dt / 2.0) / (1.0 - lambda * dt / 2.0);
            const cplx a_t = std::pow(a, steps);
            return a_t * h0 + dt / (1.0 - lambda * dt / 2.0) * (1.0 - a_t) / (1.0 - a) * bx;
        }
        case ref::rule::euler: {
            const cplx a = 1.0 + lambda * dt;
            const cplx a_t = std::pow(a, steps);
            return a_t * h0 + dt * (1.0 - a_t) / (1.0 - a) * bx;
        }
        }
        return cplx{};
    });
}

// A random float problem of `Structure` and `Rule` over the given shape.
template <class Structure, class Rule>
ref::problem random_float_problem(ref::random_source& rng, const ref::shape& s) {
    auto p = ref::random_problem(rng, ref::structure_of<Structure>, ref::rule_of<Rule>, s);
    ref::round_to_storage<float>(p);
    return p;
}

// Calls f(structure tag, rule tag) for every transition structure and discretization rule.
template <class F>
void for_each_structure_and_rule(F&& f) {
    ref::for_each_structure(
        [&](auto structure_tag) { ref::for_each_rule([&](auto rule_tag) { f(structure_tag, rule_tag); }); });
}

// The library's y for p, under strategies whose chunk and tile lengths do not divide the length,
// is `want` within `tolerance` of its largest element.
template <class Structure, class Rule>
void require_every_strategy_gives(const ref::problem& p, const std::vector<double>& want, double tolerance) {
    for (const auto& how : {ref::strategy{ssm::sequential{}}, ref::strategy{ssm::chunked{.chunk = 13}},
                            ref::strategy{ssm::parallel_prefix{.tile = 7}}}) {
        INFO(ref::describe(how));
        ref::require_close(ref::run_scan<Structure, Rule, float>(p, how).y, want, {tolerance}, "y");
    }
}

const ref::shape small_shape{.batch = 2, .length = 200, .channels = 6, .head_dim = 3, .state = 4, .groups = 2,
                             .z = true, .D = true, .delta_bias = true, .softplus = true, .initial_state = true};

}  // namespace

TEST_CASE("with A = 0 every rule scans to a running sum of delta * B * x", "[scan][analytic]") {
    SSM_SEEDED_RANDOM(rng);
    for_each_structure_and_rule([&](auto structure_tag, auto rule_tag) {
        using Structure = typename decltype(structure_tag)::type;
        using Rule = typename decltype(rule_tag)::type;
        auto p = random_float_problem<Structure, Rule>(rng, small_shape);
        std::fill(p.A.begin(), p.A.end(), 0.0);
        require_every_strategy_gives<Structure, Rule>(p, running_sum_output(p), 1e-5);
    });
}

TEST_CASE("constant inputs and decay give a geometric series", "[scan][analytic]") {
    SSM_SEEDED_RANDOM(rng);
    for_each_structure_and_rule([&](auto structure_tag, auto rule_tag) {
        using Structure = typename decltype(structure_tag)::type;
        using Rule = typename decltype(rule_tag)::type;
        auto p = ref::random_problem(rng, ref::structure_of<Structure>, ref::rule_of<Rule>,
                                     {.batch = 2, .length = 300, .channels = 4, .head_dim = 2, .state = 3, .groups = 2,
                                      .D = true, .initial_state = true});
        // Steps of at least 0.1, so that the float32 rounding of the (constant) decay stays small
        // against 1 - |Ā|; every token of a batch row repeats the first one.
        p.delta = rng.uniform(index_t(p.delta.size()), 0.1, 1.0);
        for (auto* v : {&p.u, &p.delta, &p.B, &p.C}) {
            const auto per_token = std::ptrdiff_t(v->size()) / std::ptrdiff_t(p.batch * p.length);
            for (index_t b = 0; b < p.batch; ++b) {
                const auto first = v->begin() + b * p.length * per_token;
                for (index_t t = 1; t < p.length; ++t) std::copy_n(first, per_token, first + t * per_token);
            }
        }
        ref::round_to_storage<float>(p);
        const auto want = constant_input_output(p);
        // The closed form agrees with the step-by-step reference, and with the library.
        ref::require_close(ref::scan(p).y, want, {1e-9}, "reference y");
        require_every_strategy_gives<Structure, Rule>(p, want, 1e-4);
    });
}

TEST_CASE("spectrum scaling by alpha is a step of alpha * delta in the decay only", "[scan][analytic][modulation]") {
    SSM_SEEDED_RANDOM(rng);
    // For rules whose input term B̄ = Δ does not depend on λ (euler, zoh_euler), e^{(αλ)Δ} and
    // 1 + (αλ)Δ are the decays of step αΔ: spectrum_scaler{α} is the reference with the decay's
    // step scaled and the input's not. delta_modulator{α} scales both and so differs.
    ref::for_each_structure([&](auto structure_tag) {
        using Structure = typename decltype(structure_tag)::type;
        auto check = [&](auto rule_tag, double alpha) {
            using Rule = typename decltype(rule_tag)::type;
            INFO(ref::name(ref::rule_of<Rule>) << ", alpha " << alpha);
            auto p = random_float_problem<Structure, Rule>(rng, small_shape);
            p.decay_delta_scale = alpha;
            ref::round_to_storage<float>(p);
            const auto decay_only = ref::scan(p);
            const float a = float(alpha);
            const auto spectrum = ref::run_scan<Structure, Rule, float>(p, ssm::sequential{}, {}, ssm::spectrum_scaler{.alpha = a});
            ref::require_close(spectrum, decay_only, {1e-4});

            const auto delta_scaled = ref::run_scan<Structure, Rule, float>(p, ssm::sequential{}, {}, ssm::delta_modulator{.factor = a});
            p.decay_delta_scale = 1.0;
            p.delta_factor = alpha;
            ref::require_close(delta_scaled, ref::scan(p), {1e-4});
            CHECK(ref::relative_error(delta_scaled.y, spectrum.y) > 0.05);
        };
        check(std::type_identity<ssm::zoh_euler>{}, 0.5);
        check(std::type_identity<ssm::zoh_euler>{}, 2.5);
        check(std::type_identity<ssm::euler>{}, 0.5);
    });
}

TEST_CASE("zero-order hold's input term tends to delta as the eigenvalue tends to 0", "[scan][analytic]") {
    // B̄ = (e^{λΔ} - 1)/λ = Δ(1 + λΔ/2 + ...) -> Δ: continuous through λ = 0 (a special case).
    for (const float delta : {0.01f, 0.5f, 3.0f}) {
        INFO("delta " << delta);
        const auto at_zero = ssm::zoh::apply(0.0f, delta);
        CHECK(at_zero.decay == 1.0f);
        CHECK(at_zero.input == delta);
        const auto complex_zero = ssm::zoh::apply(ssm::cfloat{0.0f, 0.0f}, delta);
        CHECK((complex_zero.input.re == delta && complex_zero.input.im == 0.0f));
        for (int k = 1; k <= 30; ++k) {
            const double magnitude = std::pow(10.0, -k);
            for (const double angle : {0.0, 0.7, 2.0, 3.14159}) {
                const cplx lambda = std::polar(magnitude, angle);
                INFO("lambda " << lambda);
                const cplx want_input = double(delta) * ref::exp_ratio(lambda * double(delta));
                const cplx want_decay = std::exp(lambda * double(delta));
                const ssm::cfloat lf{float(lambda.real()), float(lambda.imag())};
                const auto got = ssm::zoh::apply(lf, delta);
                CHECK(std::abs(cplx(got.input.re, got.input.im) - want_input) <= 1e-6 * std::abs(want_input));
                CHECK(std::abs(cplx(got.decay.re, got.decay.im) - want_decay) <= 1e-6);
                if (angle == 0.0 || angle == 3.14159) {
                    const float real_lambda = angle == 0.0 ? float(magnitude) : -float(magnitude);
                    const auto real = ssm::zoh::apply(real_lambda, delta);
                    const double want = double(delta) * ref::exp_ratio(double(real_lambda) * double(delta));
                    CHECK(std::abs(real.input - want) <= 1e-6 * want);
                }
            }
        }
    }
}

TEST_CASE("a scan with eigenvalues near 0 under zero-order hold approaches the running sum", "[scan][analytic]") {
    SSM_SEEDED_RANDOM(rng);
    ref::for_each_structure([&](auto structure_tag) {
        using Structure = typename decltype(structure_tag)::type;
        auto p = random_float_problem<Structure, ssm::zoh>(rng, small_shape);
        std::fill(p.A.begin(), p.A.end(), 0.0);
        const auto sum = running_sum_output(p);
        // |λ|·Δ·length <= 1e-9·1.35·200: indistinguishable from λ = 0 at float precision.
        for (const double tiny : {1e-9, 1e-15, 1e-20, 1e-30}) {
            INFO("|lambda| " << tiny);
            for (std::size_t i = 0; i < p.A.size(); ++i) p.A[i] = (i % 2 ? tiny : -tiny);
            ref::round_to_storage<float>(p);
            ref::require_close(ref::run_scan<Structure, ssm::zoh, float>(p, ssm::sequential{}).y, sum, {1e-5}, "y");
        }
    });
}

TEST_CASE("composed delta and spectrum modulations apply both", "[scan][analytic][modulation]") {
    SSM_SEEDED_RANDOM(rng);
    ref::for_each_structure([&](auto structure_tag) {
        using Structure = typename decltype(structure_tag)::type;
        // zero-order hold: its input term depends on λ, so the eigenvalue modulation shows in it too.
        auto p = random_float_problem<Structure, ssm::zoh>(rng, small_shape);
        std::vector<float> factors(std::size_t(p.delta_channels()));
        for (auto& f : factors) f = float(rng.uniform(0.5, 1.5));
        p.channel_factors.assign(factors.begin(), factors.end());
        // At least one eigenvalue inside the band below.
        p.A[0] = -0.1;
        if (p.kind == ref::structure::diagonal_complex) p.A[1] = 0.05;
        p.delta_factor = 0.75;
        // Only eigenvalues of magnitude <= 0.5 are slowed down.
        p.spectrum = {{.alpha = 0.25, .min_magnitude = 0.0, .max_magnitude = 0.5}};
        ref::round_to_storage<float>(p);
        const auto want = ref::scan(p);

        const ssm::delta_modulator delta{.factor = 0.75f, .channel_factors = ssm::as_view(std::span<const float>(factors))};
        const ssm::spectrum_scaler spectrum{.alpha = 0.25f, .min_magnitude = 0.0f, .max_magnitude = 0.5f};
        const auto forward = ref::run_scan<Structure, ssm::zoh, float>(p, ssm::chunked{.chunk = 50}, {}, ssm::compose(delta, spectrum));
        ref::require_close(forward, want, {1e-4});
        const auto backward = ref::run_scan<Structure, ssm::zoh, float>(p, ssm::sequential{}, {}, ssm::compose(spectrum, delta));
        ref::require_close(backward, want, {1e-4});
        // Two Δ factors multiply: 0.75 = 1.5 · 0.5.
        const auto three = ref::run_scan<Structure, ssm::zoh, float>(
            p, ssm::parallel_prefix{.tile = 9}, {},
            ssm::compose(ssm::delta_modulator{.factor = 1.5f}, spectrum,
                         ssm::delta_modulator{.factor = 0.5f, .channel_factors = delta.channel_factors}));
        ref::require_close(three, want, {1e-4});
        // Each alone is something else.
        p.spectrum.clear();
        CHECK(ref::relative_error(ref::run_scan<Structure, ssm::zoh, float>(p, ssm::sequential{}, {}, delta).y, want.y) > 0.01);
    });
}
