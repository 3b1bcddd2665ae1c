#pragma once
// Test support shared by the test programs:
//   * ref::scan, an independent float64 reference of the selective scan that
//     include/ssm/scan/problem.hpp describes, written from the formulas with naive loops;
//   * random inputs whose seed is printed with every failure (SSM_TEST_SEED replays one);
//   * the bridge that runs the library on exactly the values the reference sees, with outputs
//     poisoned by NaN beforehand so that an element the library never writes cannot pass.
#include <algorithm>
#include <array>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numbers>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <catch2/catch.hpp>
#include <ssm/ssm.hpp>

namespace ref {

using ssm::index_t;
using cplx = std::complex<double>;

enum class structure { diagonal_real, scalar_identity, diagonal_complex };
enum class rule { zoh, bilinear, euler, zoh_euler };

inline const char* name(structure s) {
    switch (s) {
    case structure::diagonal_real: return "diagonal_real";
    case structure::scalar_identity: return "scalar_identity";
    case structure::diagonal_complex: return "diagonal_complex";
    }
    return "?";
}

inline const char* name(rule r) {
    switch (r) {
    case rule::zoh: return "zoh";
    case rule::bilinear: return "bilinear";
    case rule::euler: return "euler";
    case rule::zoh_euler: return "zoh_euler";
    }
    return "?";
}

// Eigenvalue modulation: |λ| → α·|λ|^exponent, direction kept, when min_magnitude <= |λ| <= max_magnitude.
struct spectrum_band {
    double alpha = 1.0;
    double min_magnitude = 0.0;
    double max_magnitude = std::numeric_limits<double>::infinity();
    double exponent = 1.0;
};

// One selective-scan problem, every tensor row-major and contiguous in float64.
//   A: diagonal_real (channels, state); scalar_identity (heads); diagonal_complex (channels, state, 2)
//   u, z: (batch, length, channels); delta: (batch, length, delta_channels)
//   B, C: (batch, length, groups, state·components), complex values interleaved (re, im)
//   D: (channels); delta_bias, channel_factors: (delta_channels)
//   initial_state: (batch, channels, state·components)
// Optional tensors are empty when absent.
struct problem {
    structure kind = structure::diagonal_real;
    rule discretization = rule::zoh_euler;
    index_t batch = 1, length = 1, channels = 1, head_dim = 1, state = 1, groups = 1;
    bool conjugate_pairs = true;
    std::vector<double> A, u, delta, B, C;
    std::vector<double> z, D, delta_bias, initial_state;
    bool delta_softplus = false;
    // Δ modulation: Δ' = delta_factor · channel_factors[Δ channel] · Δ.
    double delta_factor = 1.0;
    std::vector<double> channel_factors;
    // Eigenvalue modulation, applied in order.
    std::vector<spectrum_band> spectrum;
    // The decay Ā is discretized with decay_delta_scale·Δ, the input term B̄ with Δ itself.
    double decay_delta_scale = 1.0;
    // When positive the state is set to zero before every token t > 0 that is a multiple of it.
    index_t reset_every = 0;

    index_t components() const { return kind == structure::diagonal_complex ? 2 : 1; }
    index_t width() const { return state * components(); }
    index_t delta_channels() const { return kind == structure::scalar_identity ? channels / head_dim : channels; }
    index_t channels_per_group() const { return channels / groups; }
};

struct result {
    std::vector<double> y;            // (batch, length, channels)
    std::vector<double> final_state;  // (batch, channels, state·components)
    // The scale of each element's rounding error: the recurrence and output with every term
    // replaced by its magnitude, m_t = |Ā| m_{t-1} + s |h_{t-1}| + |B̄ B x| (s the magnitude of the
    // terms Ā is computed from, e.g. 1 + |λΔ| for Euler's 1 + λΔ) and scale·Σ|C| m + |D x|, times
    // |SiLU(z)|. An element that cancels to near 0 keeps the scale of the terms that cancelled.
    // Both components of a complex state element share one scale.
    std::vector<double> y_scale, final_state_scale;
};

inline double softplus(double x) { return x >= 20.0 ? x : std::log1p(std::exp(x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double silu(double x) { return x * sigmoid(x); }

// (e^w - 1) / w, from its Taylor series near 0.
template <class V>
V exp_ratio(V w) {
    if (std::abs(w) < 1e-4) return 1.0 + w * (0.5 + w * (1.0 / 6.0 + w / 24.0));
    return (std::exp(w) - 1.0) / w;
}

template <class V>
struct coefficients {
    V decay;             // Ā
    V input;             // B̄ = input · B
    double decay_scale;  // the magnitude of the terms Ā is computed from (its rounding error scale)
};

// The discretization rules from the math, for eigenvalue λ: the decay uses step decay_delta, the
// input term step input_delta (equal unless a test separates them).
//   zoh:       Ā = e^{λΔ},                 B̄ = (e^{λΔ} - 1)/λ = Δ·(e^{λΔ} - 1)/(λΔ)
//   bilinear:  Ā = (1 + λΔ/2)/(1 - λΔ/2),  B̄ = Δ/(1 - λΔ/2)
//   euler:     Ā = 1 + λΔ,                 B̄ = Δ
//   zoh_euler: Ā = e^{λΔ},                 B̄ = Δ
template <class V>
coefficients<V> discretize(rule r, V lambda, double decay_delta, double input_delta) {
    const V a = lambda * decay_delta;
    const V b = lambda * input_delta;
    switch (r) {
    case rule::zoh: return {std::exp(a), input_delta * exp_ratio(b), std::abs(std::exp(a))};
    case rule::bilinear:
        return {(1.0 + a / 2.0) / (1.0 - a / 2.0), input_delta / (1.0 - b / 2.0),
                (1.0 + std::abs(a) / 2.0) / std::abs(1.0 - a / 2.0)};
    case rule::euler: return {1.0 + a, V(input_delta), 1.0 + std::abs(a)};
    case rule::zoh_euler: return {std::exp(a), V(input_delta), std::abs(std::exp(a))};
    }
    return {};
}

template <class V>
V element(const std::vector<double>& v, index_t offset) {
    if constexpr (std::is_same_v<V, cplx>) return {v[std::size_t(offset)], v[std::size_t(offset + 1)]};
    else return v[std::size_t(offset)];
}

template <class V>
V eigenvalue(const problem& p, index_t d, index_t n) {
    V lambda{};
    switch (p.kind) {
    case structure::diagonal_real: lambda = V(p.A[std::size_t(d * p.state + n)]); break;
    case structure::scalar_identity: lambda = V(p.A[std::size_t(d / p.head_dim)]); break;
    case structure::diagonal_complex: lambda = element<V>(p.A, 2 * (d * p.state + n)); break;
    }
    for (const auto& band : p.spectrum) {
        const double m = std::abs(lambda);
        if (m >= band.min_magnitude && m <= band.max_magnitude && m > 0.0)
            lambda *= band.alpha * std::pow(m, band.exponent - 1.0);
    }
    return lambda;
}

// The step Δ of token `token` (b·length + t) on Δ channel dc: bias, softplus and Δ modulation applied.
inline double step_delta(const problem& p, index_t token, index_t dc) {
    double dt = p.delta[std::size_t(token * p.delta_channels() + dc)];
    if (!p.delta_bias.empty()) dt += p.delta_bias[std::size_t(dc)];
    if (p.delta_softplus) dt = softplus(dt);
    dt *= p.delta_factor;
    if (!p.channel_factors.empty()) dt *= p.channel_factors[std::size_t(dc)];
    return dt;
}

// Element `at` of v as a complex number: (v[at], v[at + 1]) for complex structures, v[at] otherwise.
inline cplx value_at(const problem& p, const std::vector<double>& v, index_t at) {
    return p.components() == 2 ? cplx(v[std::size_t(at)], v[std::size_t(at + 1)]) : cplx(v[std::size_t(at)]);
}

template <class V>
result scan_with(const problem& p) {
    const index_t L = p.length, channels = p.channels, N = p.state, W = p.width();
    const index_t K = p.components();
    const double scale = p.kind == structure::diagonal_complex && p.conjugate_pairs ? 2.0 : 1.0;
    result r;
    r.y.assign(std::size_t(p.batch * L * channels), 0.0);
    r.y_scale = r.y;
    r.final_state.assign(std::size_t(p.batch * channels * W), 0.0);
    r.final_state_scale = r.final_state;
    std::vector<V> lambda(static_cast<std::size_t>(N)), h(static_cast<std::size_t>(N));
    std::vector<double> magnitude(static_cast<std::size_t>(N));  // of h's terms
    for (index_t b = 0; b < p.batch; ++b)
        for (index_t d = 0; d < channels; ++d) {
            const index_t dc = p.kind == structure::scalar_identity ? d / p.head_dim : d;
            const index_t g = d / p.channels_per_group();
            for (index_t n = 0; n < N; ++n) {
                lambda[std::size_t(n)] = eigenvalue<V>(p, d, n);
                h[std::size_t(n)] = p.initial_state.empty() ? V{} : element<V>(p.initial_state, (b * channels + d) * W + K * n);
                magnitude[std::size_t(n)] = std::abs(h[std::size_t(n)]);
            }
            for (index_t t = 0; t < L; ++t) {
                if (p.reset_every > 0 && t > 0 && t % p.reset_every == 0) {
                    std::fill(h.begin(), h.end(), V{});
                    std::fill(magnitude.begin(), magnitude.end(), 0.0);
                }
                const index_t token = b * L + t;
                const double dt = step_delta(p, token, dc);
                const double x = p.u[std::size_t(token * channels + d)];
                double acc = 0.0, acc_scale = 0.0;
                for (index_t n = 0; n < N; ++n) {
                    const auto q = discretize(p.discretization, lambda[std::size_t(n)], p.decay_delta_scale * dt, dt);
                    const index_t bc = (token * p.groups + g) * W + K * n;
                    V& state = h[std::size_t(n)];
                    const V input = q.input * element<V>(p.B, bc) * x;
                    double& m = magnitude[std::size_t(n)];
                    m = std::abs(q.decay) * m + q.decay_scale * std::abs(state) + std::abs(input);
                    state = q.decay * state + input;
                    acc += std::real(element<V>(p.C, bc) * state);
                    acc_scale += std::abs(element<V>(p.C, bc)) * m;
                }
                double y = scale * acc, y_scale = scale * acc_scale;
                if (!p.D.empty()) y += p.D[std::size_t(d)] * x, y_scale += std::abs(p.D[std::size_t(d)] * x);
                if (!p.z.empty()) {
                    const double gate = silu(p.z[std::size_t(token * channels + d)]);
                    y *= gate, y_scale *= std::abs(gate);
                }
                r.y[std::size_t(token * channels + d)] = y;
                r.y_scale[std::size_t(token * channels + d)] = y_scale;
            }
            for (index_t n = 0; n < N; ++n) {
                const auto at = std::size_t((b * channels + d) * W + K * n);
                r.final_state[at] = std::real(h[std::size_t(n)]);
                if (K == 2) r.final_state[at + 1] = std::imag(h[std::size_t(n)]);
                for (index_t k = 0; k < K; ++k) r.final_state_scale[at + std::size_t(k)] = magnitude[std::size_t(n)];
            }
        }
    return r;
}

// The reference selective scan: state, discretization and output all in float64.
inline result scan(const problem& p) {
    return p.kind == structure::diagonal_complex ? scan_with<cplx>(p) : scan_with<double>(p);
}

// ---------------------------------------------------------------------------------------------
// Random inputs.

// A fresh seed from std::random_device, or SSM_TEST_SEED when set (to replay a failure).
inline std::uint64_t fresh_seed() {
    if (const char* forced = std::getenv("SSM_TEST_SEED")) return std::strtoull(forced, nullptr, 10);
    std::random_device device;
    return (std::uint64_t(device()) << 32) ^ std::uint64_t(device());
}

class random_source {
public:
    explicit random_source(std::uint64_t seed) : engine_(seed) {}

    double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(engine_); }
    std::vector<double> uniform(index_t count, double lo, double hi) {
        std::vector<double> v(static_cast<std::size_t>(count));
        for (auto& e : v) e = uniform(lo, hi);
        return v;
    }
    // Log-uniform in [lo, hi], 0 < lo < hi.
    double log_uniform(double lo, double hi) { return std::exp(uniform(std::log(lo), std::log(hi))); }
    index_t integer(index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(engine_); }
    bool coin() { return integer(0, 1) == 1; }

private:
    std::mt19937_64 engine_;
};

// What a random problem holds besides its structure and discretization.
struct shape {
    index_t batch = 1, length = 1, channels = 1, head_dim = 1, state = 1, groups = 1;
    bool z = false, D = false, delta_bias = false, softplus = false, initial_state = false;
};

inline std::ostream& operator<<(std::ostream& os, const shape& s) {
    return os << "batch " << s.batch << ", length " << s.length << ", channels " << s.channels << ", head_dim "
              << s.head_dim << ", state " << s.state << ", groups " << s.groups << (s.z ? ", z" : "")
              << (s.D ? ", D" : "") << (s.delta_bias ? ", delta_bias" : "") << (s.softplus ? ", softplus" : "")
              << (s.initial_state ? ", initial_state" : "");
}

// The largest step Δ a random problem produces (after bias and softplus).
inline constexpr double max_random_delta = 1.35;

// An eigenvalue every rule keeps stable for steps up to max_random_delta: for euler inside the disk
// |1 + Δλ| < 1, for the others in the left half plane, up to |Im λ| = 3.
inline cplx random_eigenvalue(random_source& rng, rule r, bool complex) {
    if (r == rule::euler) {
        const double radius = rng.uniform(0.0, 0.95);
        const double angle = complex ? rng.uniform(-std::numbers::pi, std::numbers::pi) : (rng.coin() ? 0.0 : std::numbers::pi);
        return -(1.0 - std::polar(radius, angle)) / max_random_delta;
    }
    return {-rng.log_uniform(0.02, 2.0), complex ? rng.uniform(-3.0, 3.0) : 0.0};
}

inline problem random_problem(random_source& rng, structure kind, rule r, const shape& s) {
    problem p;
    p.kind = kind;
    p.discretization = r;
    p.batch = s.batch, p.length = s.length, p.channels = s.channels, p.state = s.state, p.groups = s.groups;
    p.head_dim = kind == structure::scalar_identity ? s.head_dim : 1;
    p.conjugate_pairs = rng.coin();
    const bool complex = kind == structure::diagonal_complex;
    const index_t eigenvalues = kind == structure::scalar_identity ? p.delta_channels() : p.channels * p.state;
    for (index_t i = 0; i < eigenvalues; ++i) {
        const cplx lambda = random_eigenvalue(rng, r, complex);
        p.A.push_back(lambda.real());
        if (complex) p.A.push_back(lambda.imag());
    }
    const index_t tokens = p.batch * p.length;
    p.u = rng.uniform(tokens * p.channels, -1.0, 1.0);
    // Δ = softplus(delta + bias) in [0.03, 1.32], or delta + bias in [0.02, 1.3].
    p.delta_softplus = s.softplus;
    p.delta = s.softplus ? rng.uniform(tokens * p.delta_channels(), -3.0, 0.5)
                         : rng.uniform(tokens * p.delta_channels(), 0.02, 1.0);
    if (s.delta_bias)
        p.delta_bias = s.softplus ? rng.uniform(p.delta_channels(), -0.5, 0.5) : rng.uniform(p.delta_channels(), 0.0, 0.3);
    p.B = rng.uniform(tokens * p.groups * p.width(), -1.0, 1.0);
    p.C = rng.uniform(tokens * p.groups * p.width(), -1.0, 1.0);
    if (s.z) p.z = rng.uniform(tokens * p.channels, -4.0, 4.0);
    if (s.D) p.D = rng.uniform(p.channels, -1.0, 1.0);
    if (s.initial_state) p.initial_state = rng.uniform(p.batch * p.channels * p.width(), -1.0, 1.0);
    return p;
}

// ---------------------------------------------------------------------------------------------
// Storage types.

template <class T>
T store(double x) {
    if constexpr (std::is_same_v<T, double>) return x;
    else return ssm::from_float<T>(float(x));
}

template <class T>
double load(T x) {
    if constexpr (std::is_same_v<T, double>) return x;
    else return double(ssm::to_float(x));
}

// A NaN of each storage type, written into outputs before a call.
template <class T>
T poison() {
    if constexpr (std::is_floating_point_v<T>) return std::numeric_limits<T>::quiet_NaN();
    else if constexpr (std::is_same_v<T, ssm::bfloat16>) return T{0x7fc0};
    else return T{0x7e00};
}

template <class T>
bool same_bits(const T& a, const T& b) {
    return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// The largest relative rounding error of T (half its spacing relative to the magnitude), 0 for the
// types that hold the library's float results exactly.
template <class T>
inline constexpr double unit_roundoff = 0.0;
template <>
inline constexpr double unit_roundoff<ssm::bfloat16> = 0x1p-8;
template <>
inline constexpr double unit_roundoff<ssm::float16> = 0x1p-11;

template <class T>
std::vector<double> rounded(const std::vector<double>& v) {
    std::vector<double> out(v.size());
    std::transform(v.begin(), v.end(), out.begin(), [](double x) { return load(store<T>(x)); });
    return out;
}

// Rounds p's values to what the library reads: the token tensors to T, the parameters (A, D,
// bias, initial state, modulation) to float.
template <class T>
void round_to_storage(problem& p) {
    for (auto* v : {&p.u, &p.delta, &p.B, &p.C, &p.z}) *v = rounded<T>(*v);
    for (auto* v : {&p.A, &p.D, &p.delta_bias, &p.initial_state, &p.channel_factors}) *v = rounded<float>(*v);
    auto to_float = [](double x) { return double(float(x)); };
    p.delta_factor = to_float(p.delta_factor);
    p.decay_delta_scale = to_float(p.decay_delta_scale);
    for (auto& band : p.spectrum) {
        band.alpha = to_float(band.alpha);
        band.min_magnitude = to_float(band.min_magnitude);
        band.max_magnitude = to_float(band.max_magnitude);
        band.exponent = to_float(band.exponent);
    }
}

// ---------------------------------------------------------------------------------------------
// Comparisons.

inline double norm(const std::vector<double>& v) {
    double sum = 0.0;
    for (double e : v) sum += e * e;
    return std::sqrt(sum);
}

inline double max_abs(const std::vector<double>& v) {
    double m = 0.0;
    for (double e : v) m = std::max(m, std::abs(e));
    return m;
}

// ||got - want|| / ||want|| (infinite when sizes differ or anything is not finite).
inline double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
    if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
    std::vector<double> difference(got.size());
    for (std::size_t i = 0; i < got.size(); ++i) difference[i] = got[i] - want[i];
    const double e = norm(difference) / std::max(norm(want), std::numeric_limits<double>::min());
    return std::isfinite(e) ? e : std::numeric_limits<double>::infinity();
}

// How far a result may be from the reference, element by element:
//   |got - want| <= relative·scale + rounding·|want| + absolute,
// with scale the element's error scale (result::y_scale), or the largest |want| when there is none;
// and in norm, ||got - want|| <= relative·||scale|| + rounding·||want|| + absolute·sqrt(n).
struct tolerance {
    double relative;        // float32 state and arithmetic
    double rounding = 0.0;  // of the output to its storage type
    double absolute = 0.0;  // the storage type's spacing below its normal range
};

// Tolerance of a library scan against the reference: float32 state and arithmetic (1e-5 of the
// error scale), plus up to one unit in the last place of y's storage type (the float result rounds
// to a neighbour of the reference's rounding).
template <class T>
tolerance scan_tolerance() {
    if constexpr (std::is_same_v<T, ssm::float16>) return {1e-5, 2 * unit_roundoff<T>, 0x1p-24};
    else return {1e-5, 2 * unit_roundoff<T>};
}

inline void require_close(const std::vector<double>& got, const std::vector<double>& want, const tolerance& tol,
                          const std::string& what, const std::vector<double>& scale = {}) {
    INFO(what << ": " << got.size() << " elements, reference norm " << norm(want));
    REQUIRE(got.size() == want.size());
    REQUIRE((scale.empty() || scale.size() == want.size()));
    const double largest = max_abs(want);
    std::vector<double> difference(got.size());
    double worst = 0.0;  // largest error as a fraction of its bound
    std::size_t worst_at = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        difference[i] = got[i] - want[i];
        const double bound = tol.relative * (scale.empty() ? largest : scale[i]) + tol.rounding * std::abs(want[i]) + tol.absolute;
        const double e = std::abs(difference[i]) / std::max(bound, std::numeric_limits<double>::min());
        if (!(e <= worst)) worst = e, worst_at = i;  // NaN counts as the worst
    }
    const double norm_bound = tol.relative * norm(scale.empty() ? want : scale) + tol.rounding * norm(want) +
                              tol.absolute * std::sqrt(double(got.size()));
    INFO("largest error at element " << worst_at << ": " << (got.empty() ? 0.0 : got[worst_at]) << " vs "
                                     << (want.empty() ? 0.0 : want[worst_at]) << " (error scale "
                                     << (scale.empty() ? largest : scale[worst_at]) << ")");
    const double error_norm = norm(difference);
    CHECK(error_norm <= norm_bound);
    CHECK(worst <= 1.0);
    REQUIRE((error_norm <= norm_bound && worst <= 1.0));
}

// The library's y and final state against the reference's, each within `tol` of its error scale.
inline void require_close(const result& got, const result& want, const tolerance& tol, bool final_state = true) {
    require_close(got.y, want.y, tol, "y", want.y_scale);
    if (final_state) require_close(got.final_state, want.final_state, {tol.relative}, "final_state", want.final_state_scale);
}

// ---------------------------------------------------------------------------------------------
// Running the library on a reference problem.

// The reference's names for the library's structure and rule types.
template <class S>
    requires(std::is_same_v<S, ssm::diagonal_real> || std::is_same_v<S, ssm::scalar_identity> ||
             std::is_same_v<S, ssm::diagonal_complex>)
inline constexpr structure structure_of = std::is_same_v<S, ssm::diagonal_real>     ? structure::diagonal_real
                                          : std::is_same_v<S, ssm::scalar_identity> ? structure::scalar_identity
                                                                                    : structure::diagonal_complex;

template <class R>
    requires(std::is_same_v<R, ssm::zoh> || std::is_same_v<R, ssm::bilinear> || std::is_same_v<R, ssm::euler> ||
             std::is_same_v<R, ssm::zoh_euler>)
inline constexpr rule rule_of = std::is_same_v<R, ssm::zoh>        ? rule::zoh
                                : std::is_same_v<R, ssm::bilinear> ? rule::bilinear
                                : std::is_same_v<R, ssm::euler>    ? rule::euler
                                                                   : rule::zoh_euler;

// A row-major view whose innermost stride is `spread`: element i of the contiguous layout sits at
// data[i·spread].
template <class E, std::size_t Rank>
ssm::tensor_view<E, int(Rank)> spread_view(E* data, const std::array<index_t, Rank>& extents, index_t spread) {
    std::array<index_t, Rank> strides{};
    index_t stride = spread;
    for (std::size_t r = Rank; r-- > 0;) {
        strides[r] = stride;
        stride *= extents[r];
    }
    return {data, extents, strides};
}

// values, each stored as E at every spread-th slot; the slots between hold NaN, so that reading
// them shows up in the outputs.
template <class E>
std::vector<E> spread_buffer(const std::vector<double>& values, index_t spread) {
    std::vector<E> buffer(values.size() * std::size_t(spread), poison<E>());
    for (std::size_t i = 0; i < values.size(); ++i) buffer[i * std::size_t(spread)] = store<E>(values[i]);
    return buffer;
}

struct run_options {
    ssm::host_exec exec{.threads = 1};
    index_t spread = 1;       // innermost stride of every tensor but A
    bool final_state = true;  // ask for the final state
};

// p's tensors in the library's storage types, with outputs poisoned by NaN.
template <class T>
class library_problem {
public:
    library_problem(const problem& p, index_t spread)
        : p_(p), spread_(spread), A_(spread_buffer<float>(p.A, 1)), u_(spread_buffer<T>(p.u, spread)),
          delta_(spread_buffer<T>(p.delta, spread)), B_(spread_buffer<T>(p.B, spread)),
          C_(spread_buffer<T>(p.C, spread)), z_(spread_buffer<T>(p.z, spread)),
          D_(spread_buffer<float>(p.D, spread)), delta_bias_(spread_buffer<float>(p.delta_bias, spread)),
          initial_state_(spread_buffer<float>(p.initial_state, spread)),
          y_(std::size_t(p.batch * p.length * p.channels * spread), poison<T>()),
          final_state_(std::size_t(p.batch * p.channels * p.width() * spread), poison<float>()) {}

    template <class Structure>
    Structure structure() const {
        if constexpr (std::is_same_v<Structure, ssm::diagonal_real>)
            return {ssm::tensor_view<const float, 2>(A_.data(), p_.channels, p_.state)};
        else if constexpr (std::is_same_v<Structure, ssm::scalar_identity>)
            return {ssm::tensor_view<const float, 1>(A_.data(), p_.delta_channels()), p_.head_dim, p_.state};
        else
            return {ssm::tensor_view<const float, 3>(A_.data(), p_.channels, p_.state, 2), p_.conjugate_pairs};
    }

    ssm::scan_inputs<T> inputs() const {
        const std::array<index_t, 3> tokens{p_.batch, p_.length, p_.channels};
        const std::array<index_t, 4> bc{p_.batch, p_.length, p_.groups, p_.width()};
        ssm::scan_inputs<T> in{.u = view(u_, tokens),
                               .delta = view(delta_, std::array<index_t, 3>{p_.batch, p_.length, p_.delta_channels()}),
                               .B = view(B_, bc),
                               .C = view(C_, bc),
                               .delta_softplus = p_.delta_softplus};
        in.z = view(z_, tokens);
        in.D = view(D_, std::array<index_t, 1>{p_.channels});
        in.delta_bias = view(delta_bias_, std::array<index_t, 1>{p_.delta_channels()});
        in.initial_state = view(initial_state_, state_extents());
        return in;
    }

    ssm::scan_outputs<T> outputs(bool with_final_state) {
        ssm::scan_outputs<T> out{.y = spread_view(y_.data(), std::array<index_t, 3>{p_.batch, p_.length, p_.channels}, spread_)};
        if (with_final_state) out.final_state = spread_view(final_state_.data(), state_extents(), spread_);
        return out;
    }

    // Every element of the outputs' views was written with a finite value, every slot between them
    // was left alone; then the outputs in float64.
    result written_outputs(bool with_final_state) const {
        result r;
        r.y = read_back(y_, "y");
        if (with_final_state) r.final_state = read_back(final_state_, "final_state");
        else REQUIRE(untouched(final_state_));
        return r;
    }

private:
    template <class E, std::size_t Rank>
    ssm::tensor_view<const E, int(Rank)> view(const std::vector<E>& buffer, const std::array<index_t, Rank>& extents) const {
        if (buffer.empty()) return {};
        return spread_view(buffer.data(), extents, spread_);
    }

    std::array<index_t, 3> state_extents() const { return {p_.batch, p_.channels, p_.width()}; }

    // The values at every spread-th slot of an output buffer, after checking that each is finite
    // (so it was written) and that the slots between them still hold the poison.
    template <class E>
    std::vector<double> read_back(const std::vector<E>& buffer, const char* what) const {
        const auto spread = std::size_t(spread_);
        std::vector<double> values(buffer.size() / spread);
        std::size_t bad = buffer.size();
        for (std::size_t i = 0; i < buffer.size() && bad == buffer.size(); ++i) {
            if (i % spread == 0) {
                values[i / spread] = load(buffer[i]);
                if (!std::isfinite(values[i / spread])) bad = i;
            } else if (!same_bits(buffer[i], poison<E>())) {
                bad = i;
            }
        }
        INFO(what << ": " << (bad % spread == 0 ? "element " : "slot after element ") << bad / spread
                  << " is not finite or was written outside the view");
        REQUIRE(bad == buffer.size());
        return values;
    }

    template <class E>
    static bool untouched(const std::vector<E>& buffer) {
        return std::all_of(buffer.begin(), buffer.end(), [](const E& e) { return same_bits(e, poison<E>()); });
    }

    const problem& p_;
    index_t spread_;
    std::vector<float> A_;
    std::vector<T> u_, delta_, B_, C_, z_;
    std::vector<float> D_, delta_bias_, initial_state_;
    std::vector<T> y_;
    std::vector<float> final_state_;
};

using strategy = std::variant<ssm::sequential, ssm::chunked, ssm::parallel_prefix>;

inline std::string describe(const strategy& s) {
    std::ostringstream os;
    if (const auto* c = std::get_if<ssm::chunked>(&s)) os << "chunked{" << c->chunk << "}";
    else if (const auto* t = std::get_if<ssm::parallel_prefix>(&s)) os << "parallel_prefix{" << t->tile << "}";
    else os << "sequential";
    return os.str();
}

// The strategies every scan test runs, with chunk and tile lengths from 1 up.
inline std::vector<strategy> every_strategy() {
    return {ssm::sequential{},         ssm::chunked{.chunk = 1},          ssm::chunked{.chunk = 7},
            ssm::chunked{.chunk = 64}, ssm::parallel_prefix{.tile = 1},   ssm::parallel_prefix{.tile = 5},
            ssm::parallel_prefix{.tile = 128}};
}

// Runs the library's scan of p (already rounded to T) with strategy `how` and modulation `mod`
// (which must be what p's modulation fields describe) and returns its outputs in float64.
template <class Structure, class Rule, class T, class Modulation = ssm::no_modulation>
result run_scan(const problem& p, const strategy& how, const run_options& options = {},
                const Modulation& mod = {}) {
    REQUIRE(p.kind == structure_of<Structure>);
    REQUIRE(p.discretization == rule_of<Rule>);
    library_problem<T> lib(p, options.spread);
    const ssm::selective_ssm<Structure, Rule, Modulation> model{lib.template structure<Structure>(), Rule{}, mod};
    std::visit([&](const auto& s) { ssm::selective_scan(options.exec, s, model, lib.inputs(), lib.outputs(options.final_state)); },
               how);
    return lib.written_outputs(options.final_state);
}

// Calls f(std::type_identity<T>{}) for each of Types, with name_of(that tag) in failure messages.
template <class... Types, class F, class Name>
void for_each_type(F&& f, Name&& name_of) {
    auto call = [&](auto tag) {
        INFO(name_of(tag));
        f(tag);
    };
    (call(std::type_identity<Types>{}), ...);
}

// Calls f(std::type_identity<R>{}) for every discretization rule R.
template <class F>
void for_each_rule(F&& f) {
    for_each_type<ssm::zoh, ssm::bilinear, ssm::euler, ssm::zoh_euler>(
        f, [](auto tag) { return name(rule_of<typename decltype(tag)::type>); });
}

// Calls f(std::type_identity<S>{}) for every transition structure S.
template <class F>
void for_each_structure(F&& f) {
    for_each_type<ssm::diagonal_real, ssm::scalar_identity, ssm::diagonal_complex>(
        f, [](auto tag) { return name(structure_of<typename decltype(tag)::type>); });
}

}  // namespace ref

// A ref::random_source with a fresh seed, printed with every failure of the enclosing scope.
#define SSM_SEEDED_RANDOM(name)                                                                  \
    const std::uint64_t name##_seed = ::ref::fresh_seed();                                       \
    INFO("random seed " << name##_seed << " (replay with SSM_TEST_SEED=" << name##_seed << ")"); \
    ::ref::random_source name(name##_seed)
