// The host's polynomial elementwise functions against std:: in double, over dense sweeps.
#include <algorithm>
#include <cmath>
#include <limits>

#include "reference.hpp"

namespace {

// Distance from got to want in units of the float spacing at want.
double ulps(float got, double want) {
    const float w = float(want);
    const double spacing = double(std::nextafter(std::abs(w), HUGE_VALF)) - double(std::abs(w));
    return std::abs(double(got) - want) / spacing;
}

// Requires error(x) <= bound at `count` + 1 points spread evenly over [lo, hi] (or, with
// `logarithmic`, evenly in log over [lo, hi] with lo > 0); reports the worst point.
template <class Error>
void require_sweep(float lo, float hi, int count, Error&& error, double bound, bool logarithmic = false) {
    double worst = 0.0;
    float worst_at = lo;
    for (int i = 0; i <= count; ++i) {
        const double s = double(i) / count;
        const double t = logarithmic ? std::exp(std::log(double(lo)) + s * (std::log(double(hi)) - std::log(double(lo))))
                                     : double(lo) + s * (double(hi) - double(lo));
        const float x = float(std::clamp(t, double(lo), double(hi)));
        const double e = error(x);
        if (!(e <= worst)) worst = e, worst_at = x;  // NaN counts as the worst
    }
    INFO("worst error " << worst << " at x = " << worst_at << " over [" << lo << ", " << hi << "]");
    REQUIRE(worst <= bound);
}

const float quiet_nan = std::numeric_limits<float>::quiet_NaN();

}  // namespace

TEST_CASE("math::exp is within a few ulp of std::exp over the float range", "[core][math]") {
    auto error = [](float x) { return ulps(ssm::math::exp(x), std::exp(double(x))); };
    require_sweep(-87.0f, 88.0f, 2000000, error, 3.0);
    require_sweep(-1e-3f, 1e-3f, 100000, error, 3.0);
    CHECK(ssm::math::exp(0.0f) == 1.0f);
    CHECK(ssm::math::exp(1.0f) == Approx(2.718281828).epsilon(3e-7));
}

TEST_CASE("math::exp saturates instead of overflowing and flushes very negative inputs to tiny values",
          "[core][math]") {
    for (const float x : {-87.5f, -88.0f, -100.0f, -1e4f, -1e30f, -HUGE_VALF}) {
        INFO("x = " << x);
        const float e = ssm::math::exp(x);
        CHECK(e >= 0.0f);
        CHECK(e <= 1.3e-38f);
    }
    for (const float x : {88.5f, 89.0f, 1e4f, 1e30f, HUGE_VALF}) {
        INFO("x = " << x);
        const float e = ssm::math::exp(x);
        CHECK(std::isfinite(e));
        CHECK(e >= 1e38f);
    }
    // Monotonic across the clamps.
    CHECK(ssm::math::exp(-87.0f) > ssm::math::exp(-87.3f));
    CHECK(ssm::math::exp(-87.3f) >= ssm::math::exp(-200.0f));
    CHECK(ssm::math::exp(88.0f) <= ssm::math::exp(88.3f));
}

TEST_CASE("math::softplus matches log1p(exp(x)) and is the identity from 20 up", "[core][math]") {
    auto relative = [](float x) {
        const double want = ref::softplus(double(x));
        return std::abs(double(ssm::math::softplus(x)) - want) / want;
    };
    require_sweep(-87.0f, 20.0f, 2000000, relative, 5e-7);
    // Around 0, where max(x, 0) and log1p(e^-|x|) change places.
    require_sweep(-0.1f, 0.1f, 100000, relative, 5e-7);
    for (const float x : {20.0f, 20.5f, 30.0f, 88.0f, 1000.0f, 1e30f}) CHECK(ssm::math::softplus(x) == x);
    // Below the range of exp the result is tiny, never negative.
    for (const float x : {-90.0f, -200.0f, -1e30f}) {
        INFO("x = " << x);
        CHECK(ssm::math::softplus(x) >= 0.0f);
        CHECK(ssm::math::softplus(x) <= 1.3e-38f);
    }
}

TEST_CASE("math::silu and sigmoid match x / (1 + exp(-x))", "[core][math]") {
    auto silu = [](float x) {
        const double want = ref::silu(double(x));
        return want == 0.0 ? std::abs(double(ssm::math::silu(x))) : std::abs(double(ssm::math::silu(x)) - want) / std::abs(want);
    };
    auto sigmoid = [](float x) {
        const double want = ref::sigmoid(double(x));
        return std::abs(double(ssm::math::sigmoid(x)) - want) / want;
    };
    require_sweep(-87.0f, 87.0f, 2000000, silu, 5e-7);
    require_sweep(-87.0f, 87.0f, 2000000, sigmoid, 5e-7);
    CHECK(ssm::math::silu(0.0f) == 0.0f);
    CHECK(ssm::math::sigmoid(0.0f) == 0.5f);
    CHECK(ssm::math::silu(1000.0f) == 1000.0f);
    CHECK(std::abs(ssm::math::silu(-1000.0f)) <= 1e-30f);
}

TEST_CASE("NaN propagates through the elementwise functions", "[core][math]") {
    for (const float x : {quiet_nan, -quiet_nan}) {
        CHECK(std::isnan(ssm::math::exp(x)));
        CHECK(std::isnan(ssm::math::softplus(x)));
        CHECK(std::isnan(ssm::math::sigmoid(x)));
        CHECK(std::isnan(ssm::math::silu(x)));
        CHECK(std::isnan(ssm::math::expm1(x)));
    }
    const ssm::cfloat z = ssm::math::exp(ssm::cfloat{quiet_nan, 0.0f});
    CHECK((std::isnan(z.re) && std::isnan(z.im)));
}

TEST_CASE("complex exp and expm1 match std::complex in double", "[core][math]") {
    SSM_SEEDED_RANDOM(rng);
    for (int i = 0; i < 20000; ++i) {
        // Magnitudes from 1e-8 (where e^z - 1 cancels) to 3 (below 2π, where it has zeros).
        const std::complex<double> w = std::polar(rng.log_uniform(1e-8, 3.0), rng.uniform(-3.14159, 3.14159));
        const ssm::cfloat z{float(w.real()), float(w.imag())};
        const std::complex<double> exact_z(z.re, z.im);
        INFO("z = " << exact_z);
        const auto e = ssm::math::exp(z);
        const auto e1 = ssm::math::expm1(z);
        const std::complex<double> want_exp = std::exp(exact_z);
        const std::complex<double> want_expm1 = std::abs(exact_z) < 1e-4 ? exact_z * ref::exp_ratio(exact_z)
                                                                          : std::exp(exact_z) - 1.0;
        REQUIRE(std::abs(std::complex<double>(e.re, e.im) - want_exp) <= 1e-6 * std::abs(want_exp));
        REQUIRE(std::abs(std::complex<double>(e1.re, e1.im) - want_expm1) <= 1e-6 * std::abs(want_expm1));
    }
}

TEST_CASE("math::exp2 is 2^x and math::divide is a / b on the host", "[core][math]") {
    require_sweep(-120.0f, 120.0f, 200000, [](float x) { return ulps(ssm::math::exp2(x), std::exp2(double(x))); }, 1.0);
    CHECK(ssm::math::exp2(0.0f) == 1.0f);
    CHECK(ssm::math::exp2(-3.0f) == 0.125f);
    CHECK(ssm::math::divide(3.0f, 4.0f) == 0.75f);
    CHECK(std::isnan(ssm::math::exp2(quiet_nan)));
}

// The base-2 form of Mamba's rule takes λ·log₂e: the same decay and input as the natural form.
TEST_CASE("zoh_euler's base-2 form equals its natural one", "[core][math]") {
    static_assert(ssm::base2_discretization<ssm::zoh_euler>);
    static_assert(!ssm::base2_discretization<ssm::zoh> && !ssm::base2_discretization<ssm::bilinear>);
    for (const float lambda : {-16.0f, -1.0f, -0.0625f, 0.0f, 0.5f}) {
        for (const float delta : {0.0f, 1e-4f, 0.01f, 0.7f, 3.0f}) {
            INFO("lambda " << lambda << ", delta " << delta);
            const auto natural = ssm::zoh_euler::apply(lambda, delta);
            const auto base2 = ssm::zoh_euler::apply_base2(lambda * ssm::math::log2e, delta);
            CHECK(base2.decay == Approx(std::exp(double(lambda) * delta)).epsilon(1e-5));
            CHECK(base2.decay == Approx(natural.decay).epsilon(1e-5));
            CHECK(base2.input == natural.input);
        }
    }
}
