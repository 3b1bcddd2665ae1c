// RMSNorm, the gated RMSNorm and the causal depthwise conv1d against float64 references on random
// inputs, with outputs poisoned before each call.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include <ssm/ssm.hpp>

#include "reference.hpp"

namespace {

std::vector<float> uniform(std::mt19937& rng, std::size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

template <class T>
std::vector<T> stored(const std::vector<float>& v) {
    std::vector<T> out;
    for (const float x : v) out.push_back(ssm::from_float<T>(x));
    return out;
}

template <class T>
std::vector<double> widened(const std::vector<T>& v) {
    std::vector<double> out;
    for (const T& x : v) out.push_back(double(ssm::to_float(x)));
    return out;
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

// Relative error of the float computation plus the rounding of y to its storage type.
template <class T>
void require_rows_close(const std::vector<T>& got, const std::vector<double>& want) {
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double g = double(ssm::to_float(got[i]));
        INFO("element " << i << ": got " << g << ", want " << want[i]);
        REQUIRE(std::abs(g - want[i]) <= 1e-5 * (1.0 + std::abs(want[i])) + 2 * ref::unit_roundoff<T> * std::abs(want[i]));
    }
}

template <class T>
void check_norm(std::mt19937& rng, ssm::index_t rows, ssm::index_t features, ssm::index_t groups, bool gated) {
    const auto xf = uniform(rng, std::size_t(rows * features), -3.0f, 3.0f);
    const auto zf = uniform(rng, std::size_t(rows * features), -3.0f, 3.0f);
    const auto weight = uniform(rng, std::size_t(features), 0.5f, 1.5f);
    const auto x = stored<T>(xf), z = stored<T>(zf);
    std::vector<T> y(x.size(), ref::poison<T>());
    const ssm::rms_norm_inputs options{.epsilon = 1e-5f, .groups = groups};
    const ssm::tensor_view<const T, 2> xv(x.data(), rows, features), zv(z.data(), rows, features);
    const ssm::tensor_view<const float, 1> wv(weight.data(), features);
    const ssm::tensor_view<T, 2> yv(y.data(), rows, features);
    if (gated) ssm::gated_rms_norm(ssm::host_exec{.threads = 2}, xv, zv, wv, options, yv);
    else ssm::rms_norm(ssm::host_exec{.threads = 2}, xv, wv, options, yv);

    const auto xd = widened(x), zd = widened(z);
    std::vector<double> want(x.size());
    const ssm::index_t size = features / groups;
    for (ssm::index_t r = 0; r < rows; ++r)
        for (ssm::index_t g0 = 0; g0 < features; g0 += size) {
            auto value = [&](ssm::index_t f) {
                const double v = xd[std::size_t(r * features + f)];
                return gated ? v * silu(zd[std::size_t(r * features + f)]) : v;
            };
            double sum = 0.0;
            for (ssm::index_t f = g0; f < g0 + size; ++f) sum += value(f) * value(f);
            const double scale = 1.0 / std::sqrt(sum / double(size) + 1e-5);
            for (ssm::index_t f = g0; f < g0 + size; ++f)
                want[std::size_t(r * features + f)] = value(f) * scale * double(weight[std::size_t(f)]);
        }
    require_rows_close(y, want);
}

// Whole-sequence float64 conv with zero (or given) history.
std::vector<double> reference_conv(const std::vector<double>& x, const std::vector<float>& w,
                                   const std::vector<float>& bias, const std::vector<float>& history,
                                   ssm::index_t batch, ssm::index_t length, ssm::index_t channels, ssm::index_t K,
                                   bool with_silu) {
    std::vector<double> y(x.size());
    for (ssm::index_t b = 0; b < batch; ++b)
        for (ssm::index_t c = 0; c < channels; ++c)
            for (ssm::index_t t = 0; t < length; ++t) {
                double acc = bias.empty() ? 0.0 : bias[std::size_t(c)];
                for (ssm::index_t k = 0; k < K; ++k) {
                    const ssm::index_t s = t - K + 1 + k;  // input position; < 0 reads the history
                    const double v = s >= 0 ? x[std::size_t((b * length + s) * channels + c)]
                                   : history.empty() ? 0.0
                                                     : history[std::size_t((b * channels + c) * (K - 1) + (K - 1 + s))];
                    acc += double(w[std::size_t(c * K + k)]) * v;
                }
                y[std::size_t((b * length + t) * channels + c)] = with_silu ? silu(acc) : acc;
            }
    return y;
}

}  // namespace

TEST_CASE("rms_norm and gated_rms_norm match the float64 reference", "[layers][norm]") {
    std::mt19937 rng(Catch::rngSeed());
    for (const ssm::index_t rows : {1, 7}) {
        check_norm<float>(rng, rows, 1, 1, false);
        check_norm<float>(rng, rows, 97, 1, false);
        check_norm<ssm::bfloat16>(rng, rows, 768, 1, false);
        check_norm<float>(rng, rows, 96, 4, true);
        check_norm<ssm::float16>(rng, rows, 128, 2, true);
        check_norm<double>(rng, rows, 13, 13, true);
    }
}

TEST_CASE("rms_norm rejects bad shapes and options", "[layers][norm][errors]") {
    std::vector<float> x(12), w(4), y(12);
    const ssm::tensor_view<const float, 2> xv(x.data(), 3, 4);
    const ssm::tensor_view<float, 2> yv(y.data(), 3, 4);
    const ssm::host_exec exec{};
    CHECK_THROWS_WITH(ssm::rms_norm(exec, xv, ssm::tensor_view<const float, 1>(w.data(), 3), {}, yv),
                      Catch::Contains("rms_norm: weight has extent 3 in dimension 0 (features), expected 4"));
    CHECK_THROWS_WITH(ssm::rms_norm(exec, xv, ssm::tensor_view<const float, 1>(w.data(), 4), {.groups = 3}, yv),
                      Catch::Contains("groups 3 must divide the 4 features"));
    CHECK_THROWS_WITH(ssm::rms_norm(exec, xv, ssm::tensor_view<const float, 1>(w.data(), 4), {.epsilon = 0.0f}, yv),
                      Catch::Contains("epsilon must be positive"));
    CHECK_THROWS_WITH(ssm::gated_rms_norm(exec, xv, {}, ssm::tensor_view<const float, 1>(w.data(), 4), {}, yv),
                      Catch::Contains("gated_rms_norm: z is missing"));
}

TEST_CASE("causal_conv1d matches the float64 reference, and carries its state", "[layers][conv1d]") {
    std::mt19937 rng(Catch::rngSeed());
    // 37 channels: part of one block of 64; 131: two whole blocks and part of a third. K = 9 > length 3.
    for (const ssm::index_t K : {1, 2, 4, 9}) {
        using sizes = std::pair<ssm::index_t, ssm::index_t>;  // length, channels
        for (const auto& [length, channels] : {sizes{1, 37}, sizes{3, 131}, sizes{61, 37}, sizes{61, 131}}) {
            const ssm::index_t batch = 2;
            const auto x = uniform(rng, std::size_t(batch * length * channels), -2.0f, 2.0f);
            const auto w = uniform(rng, std::size_t(channels * K), -1.0f, 1.0f);
            const auto bias = uniform(rng, std::size_t(channels), -0.5f, 0.5f);
            const auto history = uniform(rng, std::size_t(batch * channels * (K - 1)), -2.0f, 2.0f);
            std::vector<double> xd(x.begin(), x.end());
            const ssm::tensor_view<const float, 2> wv(w.data(), channels, K);
            const ssm::tensor_view<const float, 1> bv(bias.data(), channels);
            const ssm::host_exec exec{.threads = 2};

            // Whole sequence, no history, no SiLU.
            std::vector<float> y(x.size(), ref::poison<float>());
            ssm::causal_conv1d<float>(exec, {.x = {x.data(), batch, length, channels}, .weight = wv, .bias = bv, .silu = false},
                                      {}, {y.data(), batch, length, channels});
            require_rows_close(y, reference_conv(xd, w, bias, {}, batch, length, channels, K, false));

            // With a history in the state, SiLU, and the state then holding the last K-1 inputs.
            std::vector<float> state = history;
            std::fill(y.begin(), y.end(), ref::poison<float>());
            ssm::causal_conv1d<float>(exec, {.x = {x.data(), batch, length, channels}, .weight = wv, .bias = bv},
                                      {state.data(), batch, channels, K - 1}, {y.data(), batch, length, channels});
            require_rows_close(y, reference_conv(xd, w, bias, history, batch, length, channels, K, true));

            // The same sequence token by token through the state equals the whole call.
            std::vector<float> stepped(x.size(), ref::poison<float>()), step_state = history;
            for (ssm::index_t t = 0; t < length; ++t)
                ssm::causal_conv1d<float>(
                    exec, {.x = {x.data() + t * channels, {batch, 1, channels}, {length * channels, channels, 1}}, .weight = wv, .bias = bv},
                    {step_state.data(), batch, channels, K - 1},
                    {stepped.data() + t * channels, {batch, 1, channels}, {length * channels, channels, 1}});
            CHECK(stepped == y);
            CHECK(step_state == state);
            for (ssm::index_t b = 0; b < batch; ++b)
                for (ssm::index_t c = 0; c < channels; ++c)
                    for (ssm::index_t k = 0; k + 1 < K; ++k) {
                        const ssm::index_t s = length - (K - 1) + k;  // input position the slot holds
                        const float want = s >= 0 ? x[std::size_t((b * length + s) * channels + c)]
                                                  : history[std::size_t((b * channels + c) * (K - 1) + (K - 1 + s))];
                        REQUIRE(state[std::size_t((b * channels + c) * (K - 1) + k)] == want);
                    }
        }
    }
}

TEST_CASE("causal_conv1d rejects bad shapes", "[layers][conv1d][errors]") {
    std::vector<float> x(2 * 5 * 3), w(3 * 4), y(x.size()), state(2 * 3 * 3);
    const ssm::conv1d_inputs<float> in{.x = {x.data(), 2, 5, 3}, .weight = {w.data(), 3, 4}};
    const ssm::host_exec exec{};
    CHECK_THROWS_WITH(ssm::causal_conv1d(exec, in, {state.data(), 2, 3, 2}, {y.data(), 2, 5, 3}),
                      Catch::Contains("causal_conv1d: state has extent 2 in dimension 2 (taps - 1), expected 3"));
    CHECK_THROWS_WITH(ssm::causal_conv1d(exec, in, {}, {y.data(), 2, 3, 5}),
                      Catch::Contains("causal_conv1d: y has extent 3 in dimension 1 (length), expected 5"));
    CHECK_THROWS_WITH(ssm::causal_conv1d<float>(exec, {.x = in.x, .weight = {w.data(), 4, 3}}, {}, {y.data(), 2, 5, 3}),
                      Catch::Contains("weight has extent 4 in dimension 0 (channels), expected 3"));
    CHECK_THROWS_WITH(ssm::causal_conv1d<float>(exec, {.x = {}, .weight = in.weight}, {}, {y.data(), 2, 5, 3}),
                      Catch::Contains("causal_conv1d: x is missing"));
}
