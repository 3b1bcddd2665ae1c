// Policy concepts, and the modulation policies' effect on scans.
#include <limits>
#include <string_view>
#include <vector>

#include "reference.hpp"

namespace {

using ssm::index_t;

// A modulation without validate().
struct unvalidated_modulation {
    float delta(float d, ssm::index_t) const { return d; }
    template <class V>
    V eigenvalue(V lambda, ssm::index_t) const { return lambda; }
};

// A modulation whose eigenvalue() handles real eigenvalues only.
struct real_only_modulation {
    float delta(float d, ssm::index_t) const { return d; }
    float eigenvalue(float lambda, ssm::index_t) const { return lambda; }
    void validate(std::string_view, ssm::index_t) const {}
};

// A discretization without the complex overload.
struct real_only_rule {
    static ssm::discretized<float> apply(float lambda, float delta) { return {lambda * delta, delta}; }
};

// A discretization returning the wrong type.
struct double_rule {
    template <class V>
    static ssm::discretized<double> apply(V, float delta) { return {1.0, delta}; }
};

// diagonal_real without output_scale().
struct unscaled_structure {
    using value_type = float;
    static constexpr bool state_invariant_decay = false;
    ssm::index_t channels() const { return 1; }
    ssm::index_t state_size() const { return 1; }
    ssm::index_t delta_channels() const { return 1; }
    ssm::index_t delta_channel(ssm::index_t d) const { return d; }
    float eigenvalue(ssm::index_t, ssm::index_t) const { return -1.0f; }
    void validate(std::string_view) const {}
};

// The same with output_scale(): satisfies the concept.
struct scaled_structure : unscaled_structure {
    float output_scale() const { return 1.0f; }
};

}  // namespace

TEST_CASE("library policies satisfy their concepts", "[modulation][concepts]") {
    STATIC_REQUIRE(ssm::modulation<ssm::no_modulation>);
    STATIC_REQUIRE(ssm::modulation<ssm::delta_modulator>);
    STATIC_REQUIRE(ssm::modulation<ssm::spectrum_scaler>);
    STATIC_REQUIRE(ssm::modulation<ssm::composed<ssm::delta_modulator, ssm::spectrum_scaler>>);
    STATIC_REQUIRE(ssm::modulation<decltype(ssm::compose(ssm::delta_modulator{}, ssm::spectrum_scaler{},
                                                         ssm::no_modulation{}))>);
    STATIC_REQUIRE(ssm::discretization<ssm::zoh>);
    STATIC_REQUIRE(ssm::discretization<ssm::bilinear>);
    STATIC_REQUIRE(ssm::discretization<ssm::euler>);
    STATIC_REQUIRE(ssm::discretization<ssm::zoh_euler>);
    STATIC_REQUIRE(ssm::transition_structure<ssm::diagonal_real>);
    STATIC_REQUIRE(ssm::transition_structure<ssm::scalar_identity>);
    STATIC_REQUIRE(ssm::transition_structure<ssm::diagonal_complex>);
    STATIC_REQUIRE(ssm::transition_structure<scaled_structure>);
    STATIC_REQUIRE(ssm::selective_ssm_type<ssm::selective_ssm<ssm::diagonal_real>>);
    STATIC_REQUIRE(ssm::selective_ssm_type<ssm::selective_ssm<ssm::diagonal_complex, ssm::bilinear, ssm::spectrum_scaler>>);
    STATIC_REQUIRE(ssm::host_scan_strategy<ssm::chunked>);
}

TEST_CASE("types missing a member do not satisfy the concepts", "[modulation][concepts]") {
    STATIC_REQUIRE_FALSE(ssm::modulation<unvalidated_modulation>);
    STATIC_REQUIRE_FALSE(ssm::modulation<real_only_modulation>);
    STATIC_REQUIRE_FALSE(ssm::modulation<ssm::zoh>);
    STATIC_REQUIRE_FALSE(ssm::discretization<real_only_rule>);
    STATIC_REQUIRE_FALSE(ssm::discretization<double_rule>);
    STATIC_REQUIRE_FALSE(ssm::discretization<ssm::spectrum_scaler>);
    STATIC_REQUIRE_FALSE(ssm::transition_structure<unscaled_structure>);
    STATIC_REQUIRE_FALSE(ssm::transition_structure<ssm::delta_modulator>);
    STATIC_REQUIRE_FALSE(ssm::selective_ssm_type<ssm::diagonal_real>);
    STATIC_REQUIRE_FALSE(ssm::host_scan_strategy<ssm::host_exec>);
}

TEST_CASE("spectrum_scaler scales exactly the eigenvalues inside its band", "[modulation][spectrum]") {
    const ssm::spectrum_scaler band{.alpha = 0.5f, .min_magnitude = 0.1f, .max_magnitude = 1.0f};
    // Real eigenvalues, by magnitude; the band's ends are inside.
    CHECK(band.eigenvalue(-0.05f, 0) == -0.05f);
    CHECK(band.eigenvalue(-0.1f, 0) == -0.05f);
    CHECK(band.eigenvalue(0.5f, 3) == 0.25f);
    CHECK(band.eigenvalue(-1.0f, 0) == -0.5f);
    CHECK(band.eigenvalue(-1.5f, 0) == -1.5f);
    CHECK(band.eigenvalue(std::nextafter(-1.0f, -2.0f), 0) == std::nextafter(-1.0f, -2.0f));
    // Complex eigenvalues by modulus: |(-0.6, 0.8)| = 1 and |(-0.08, 0.08)| = 0.113 are inside,
    // |(-0.06, 0.06)| = 0.085 is not.
    const auto inside = band.eigenvalue(ssm::cfloat{-0.6f, 0.8f}, 0);
    CHECK((inside.re == -0.3f && inside.im == 0.4f));
    const auto small_parts = band.eigenvalue(ssm::cfloat{-0.08f, 0.08f}, 0);
    CHECK((small_parts.re == -0.04f && small_parts.im == 0.04f));
    const auto outside = band.eigenvalue(ssm::cfloat{-0.06f, 0.06f}, 0);
    CHECK((outside.re == -0.06f && outside.im == 0.06f));
    const auto large = band.eigenvalue(ssm::cfloat{-0.1f, 2.0f}, 0);
    CHECK((large.re == -0.1f && large.im == 2.0f));
    // Δ is never touched; the default band holds every eigenvalue.
    CHECK(band.delta(0.3f, 0) == 0.3f);
    CHECK(ssm::spectrum_scaler{.alpha = 3.0f}.eigenvalue(-1e-30f, 0) == 3.0f * -1e-30f);
    CHECK(ssm::spectrum_scaler{.alpha = 3.0f}.eigenvalue(-1e30f, 0) == 3.0f * -1e30f);
}

TEST_CASE("spectrum_scaler's exponent raises magnitudes to a power, keeping directions", "[modulation][spectrum]") {
    // The paper's public code: A = -exp(s·A_log), i.e. |λ| -> |λ|^s.
    const ssm::spectrum_scaler power{.exponent = 0.5f};
    CHECK(power.eigenvalue(-4.0f, 0) == Approx(-2.0f));
    CHECK(power.eigenvalue(-0.25f, 0) == Approx(-0.5f));
    CHECK(power.eigenvalue(-1.0f, 0) == -1.0f);
    CHECK(power.eigenvalue(0.0f, 0) == 0.0f);
    const ssm::cfloat z = power.eigenvalue(ssm::cfloat{-6.0f, 8.0f}, 0);  // |z| = 10 -> √10, same direction
    CHECK((z.re == Approx(-0.6f * std::sqrt(10.0f)) && z.im == Approx(0.8f * std::sqrt(10.0f))));
    // With α and a band: magnitude α·|λ|^p inside the band, untouched outside.
    const ssm::spectrum_scaler banded{.alpha = 3.0f, .min_magnitude = 1.0f, .max_magnitude = 5.0f, .exponent = 2.0f};
    CHECK(banded.eigenvalue(-2.0f, 0) == Approx(-12.0f));
    CHECK(banded.eigenvalue(-0.5f, 0) == -0.5f);
    CHECK(banded.eigenvalue(-6.0f, 0) == -6.0f);
    for (const float bad : {0.0f, -1.0f, std::numeric_limits<float>::infinity()})
        CHECK_THROWS_WITH((ssm::spectrum_scaler{.exponent = bad}.validate("here", 1)),
                          Catch::Contains("here: spectrum_scaler exponent must be positive and finite"));
}

TEST_CASE("spectrum_clipper moves magnitudes outside its range to the range's ends", "[modulation][spectrum]") {
    STATIC_REQUIRE(ssm::modulation<ssm::spectrum_clipper>);
    const ssm::spectrum_clipper clip{.low = 0.5f, .high = 4.0f};
    CHECK(clip.eigenvalue(-0.1f, 0) == Approx(-0.5f));
    CHECK(clip.eigenvalue(-2.0f, 0) == -2.0f);
    CHECK(clip.eigenvalue(-9.0f, 0) == Approx(-4.0f));
    CHECK(clip.eigenvalue(0.0f, 0) == 0.0f);
    const ssm::cfloat z = clip.eigenvalue(ssm::cfloat{-6.0f, 8.0f}, 0);  // |z| = 10 -> 4, same direction
    CHECK((z.re == Approx(-2.4f) && z.im == Approx(3.2f)));
    CHECK(clip.delta(0.3f, 0) == 0.3f);
    CHECK_THROWS_WITH((ssm::spectrum_clipper{.low = 2.0f, .high = 1.0f}.validate("here", 1)),
                      Catch::Contains("here: spectrum_clipper range is invalid: [2, 1]"));
}

TEST_CASE("a banded spectrum_scaler in a scan slows only the modes in its band", "[modulation][spectrum]") {
    SSM_SEEDED_RANDOM(rng);
    ref::for_each_structure([&](auto structure_tag) {
        using Structure = typename decltype(structure_tag)::type;
        auto p = ref::random_problem(rng, ref::structure_of<Structure>, ref::rule::zoh,
                                     {.batch = 2, .length = 150, .channels = 20, .head_dim = 4, .state = 6, .groups = 5,
                                      .z = true, .D = true, .delta_bias = true, .softplus = true, .initial_state = true});
        // Eigenvalue magnitudes spread over [0.02, 2] (and more with imaginary parts); the band
        // [0.05, 0.4] catches some and misses others.
        p.spectrum = {{.alpha = 0.3, .min_magnitude = 0.05, .max_magnitude = 0.4}};
        ref::round_to_storage<float>(p);
        const ssm::spectrum_scaler band{.alpha = 0.3f, .min_magnitude = 0.05f, .max_magnitude = 0.4f};
        const auto got = ref::run_scan<Structure, ssm::zoh, float>(p, ssm::chunked{.chunk = 40}, {.exec = {.threads = 2}}, band);
        const auto want = ref::scan(p);
        ref::require_close(got, want, {1e-4});
        // The same band with an exponent (the paper's code's |λ|^s, here s = 0.6 on top of α).
        p.spectrum = {{.alpha = 0.3, .min_magnitude = 0.05, .max_magnitude = 0.4, .exponent = 0.6}};
        ref::round_to_storage<float>(p);
        const ssm::spectrum_scaler power{.alpha = 0.3f, .min_magnitude = 0.05f, .max_magnitude = 0.4f, .exponent = 0.6f};
        ref::require_close(ref::run_scan<Structure, ssm::zoh, float>(p, ssm::sequential{}, {}, power), ref::scan(p), {1e-4});
    });
}

TEST_CASE("delta_modulator applies its factor times one factor per head on scalar_identity", "[modulation][delta]") {
    SSM_SEEDED_RANDOM(rng);
    // 5 heads of 4 channels, one group per head.
    auto p = ref::random_problem(rng, ref::structure::scalar_identity, ref::rule::zoh_euler,
                                 {.batch = 2, .length = 120, .channels = 20, .head_dim = 4, .state = 8, .groups = 5,
                                  .D = true, .delta_bias = true, .softplus = true});
    const std::vector<float> factors{0.25f, 1.0f, 2.0f, 0.5f, 3.0f};
    p.channel_factors.assign(factors.begin(), factors.end());
    p.delta_factor = 0.8;
    ref::round_to_storage<float>(p);
    const ssm::delta_modulator mod{.factor = 0.8f, .channel_factors = {factors.data(), index_t(factors.size())}};
    const auto want = ref::scan(p);
    for (const auto& how : ref::every_strategy()) {
        INFO(ref::describe(how));
        const auto got = ref::run_scan<ssm::scalar_identity, ssm::zoh_euler, float>(p, how, {}, mod);
        ref::require_close(got, want, {1e-4});
    }
    // The factors are per head: scaling head 2 by 2 is the same as doubling its Δ inputs.
    auto doubled = p;
    doubled.channel_factors[2] = 1.0;
    for (index_t token = 0; token < p.batch * p.length; ++token) {
        double& raw = doubled.delta[std::size_t(token * doubled.delta_channels() + 2)];
        raw = std::log(std::expm1(2.0 * ref::softplus(raw + p.delta_bias[2]))) - p.delta_bias[2];
    }
    ref::require_close(ref::scan(doubled).y, want.y, {1e-9}, "reference with head 2's delta doubled", want.y_scale);
    // A factor on one head changes only that head's channels.
    const auto base = ref::run_scan<ssm::scalar_identity, ssm::zoh_euler, float>(p, ssm::sequential{}, {},
                                                                                 ssm::delta_modulator{.factor = 0.8f});
    const std::vector<float> last_head_factors{1.0f, 1.0f, 1.0f, 1.0f, 2.0f};
    const ssm::delta_modulator last_head_mod{.factor = 0.8f, .channel_factors = {last_head_factors.data(), 5}};
    const auto last_head = ref::run_scan<ssm::scalar_identity, ssm::zoh_euler, float>(p, ssm::sequential{}, {}, last_head_mod);
    index_t changed_elsewhere = 0;
    for (index_t token = 0; token < p.batch * p.length; ++token)
        for (index_t d = 0; d < p.channels; ++d) {
            const std::size_t i = std::size_t(token * p.channels + d);
            changed_elsewhere += d / p.head_dim != 4 && last_head.y[i] != base.y[i];
        }
    CHECK(changed_elsewhere == 0);
    CHECK(ref::relative_error(last_head.y, base.y) > 1e-3);
}

TEST_CASE("delta_modulator and no_modulation act on delta as documented", "[modulation][delta]") {
    const std::vector<float> factors{2.0f, 0.5f, 4.0f};
    const ssm::delta_modulator mod{.factor = 1.5f, .channel_factors = {factors.data(), 3}};
    CHECK(mod.delta(1.0f, 0) == 3.0f);
    CHECK(mod.delta(1.0f, 1) == 0.75f);
    CHECK(mod.delta(0.5f, 2) == 3.0f);
    CHECK(mod.eigenvalue(-0.7f, 1) == -0.7f);
    CHECK(ssm::delta_modulator{.factor = 2.0f}.delta(0.25f, 7) == 0.5f);
    CHECK(ssm::no_modulation{}.delta(0.25f, 0) == 0.25f);
    const auto composed = ssm::compose(mod, ssm::spectrum_scaler{.alpha = 2.0f});
    CHECK(composed.delta(1.0f, 0) == 3.0f);
    CHECK(composed.eigenvalue(-0.25f, 0) == -0.5f);
}
