// Decimation: the keep schedule, top-k selection in original order, importance from Δ.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "reference.hpp"

namespace {

using ssm::index_t;

using Catch::Contains;

// decimate() from its definition: sort by (importance descending, position ascending), keep the
// first `keep` of the non-response tokens, restore the original order, append the response.
std::vector<index_t> decimate_by_sorting(const std::vector<float>& importance, index_t keep, index_t response) {
    const index_t candidates = index_t(importance.size()) - response;
    std::vector<index_t> order(static_cast<std::size_t>(candidates));
    std::iota(order.begin(), order.end(), index_t(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](index_t a, index_t b) { return importance[std::size_t(a)] > importance[std::size_t(b)]; });
    order.resize(std::size_t(std::min(keep, candidates)));
    std::sort(order.begin(), order.end());
    for (index_t t = candidates; t < index_t(importance.size()); ++t) order.push_back(t);
    return order;
}

std::vector<index_t> decimate(const std::vector<float>& importance, index_t keep, index_t response = 0) {
    return ssm::decimate(std::span<const float>(importance), keep, response);
}

}  // namespace

TEST_CASE("the schedule keeps max(min(L', base * beta^s), min_length) tokens, at most L'", "[decimation]") {
    const ssm::decimation_schedule paper{};  // base 2000, beta 0.5, min 20
    CHECK(paper.keep(0, 10000) == 2000);
    CHECK(paper.keep(1, 10000) == 1000);
    CHECK(paper.keep(3, 10000) == 250);
    CHECK(paper.keep(6, 10000) == 31);   // 2000 / 64 = 31.25
    CHECK(paper.keep(7, 10000) == 20);   // 15.6 is below the minimum
    CHECK(paper.keep(40, 10000) == 20);
    CHECK(paper.keep(0, 1500) == 1500);  // fewer candidates than the budget
    CHECK(paper.keep(7, 12) == 12);      // the minimum is capped by the candidates
    CHECK(paper.keep(0, 0) == 0);
    const ssm::decimation_schedule flat{.base_length = 100, .beta = 1.0, .min_length = 0};
    CHECK(flat.keep(25, 1000) == 100);
    const ssm::decimation_schedule steep{.base_length = 1001, .beta = 0.3, .min_length = 5};
    CHECK(steep.keep(1, 5000) == 300);   // 300.3
    CHECK(steep.keep(2, 5000) == 90);    // 90.09
    CHECK(steep.keep(3, 5000) == 27);    // 27.027
    CHECK(steep.keep(4, 5000) == 8);     // 8.1081
    CHECK(steep.keep(5, 5000) == 5);     // 2.43 is below the minimum

    SSM_SEEDED_RANDOM(rng);
    // Dyadic β, where base · β^s = base / 2^(k·s) exactly: against integer arithmetic.
    for (int i = 0; i < 20000; ++i) {
        const index_t base = rng.integer(1, 5000), min_length = rng.integer(0, 60), candidates = rng.integer(0, 6000);
        const int halvings = int(rng.integer(0, 2)), position = int(rng.integer(0, 14));
        const ssm::decimation_schedule s{.base_length = base, .beta = std::ldexp(1.0, -halvings), .min_length = min_length};
        const index_t budget = base >> std::min(62, halvings * position);
        const index_t want = std::min(std::max(std::min(candidates, budget), min_length), candidates);
        INFO("base " << base << ", beta 2^-" << halvings << ", min " << min_length << ", position " << position
                     << ", candidates " << candidates);
        REQUIRE(s.keep(position, candidates) == want);
    }
}

TEST_CASE("the schedule rejects bad parameters", "[decimation][errors]") {
    auto keep = [](ssm::decimation_schedule s, index_t position) { return s.keep(position, 100); };
    const std::string needs = "decimation_schedule: needs base_length > 0, 0 < beta <= 1, min_length >= 0";
    REQUIRE_THROWS_WITH(keep({.base_length = 0}, 0), needs);
    REQUIRE_THROWS_WITH(keep({.beta = 0.0}, 0), needs);
    REQUIRE_THROWS_WITH(keep({.beta = 1.5}, 0), needs);
    REQUIRE_THROWS_WITH(keep({.beta = std::numeric_limits<double>::quiet_NaN()}, 0), needs);
    REQUIRE_THROWS_WITH(keep({.min_length = -1}, 0), needs);
    REQUIRE_THROWS_AS(keep({}, -1), ssm::error);
    REQUIRE_THROWS_WITH(keep({}, -1), "decimation_schedule: layer position must be >= 0, got -1");
}

TEST_CASE("decimate keeps the top-k tokens in their original order", "[decimation]") {
    CHECK(decimate({0.1f, 0.9f, 0.3f, 0.7f, 0.5f}, 2) == std::vector<index_t>{1, 3});
    CHECK(decimate({0.1f, 0.9f, 0.3f, 0.7f, 0.5f}, 3) == std::vector<index_t>{1, 3, 4});
    CHECK(decimate({0.1f, 0.9f, 0.3f}, 0).empty());
    CHECK(decimate({0.1f, 0.9f, 0.3f}, 10) == std::vector<index_t>{0, 1, 2});
    CHECK(decimate({-HUGE_VALF, HUGE_VALF, 0.0f}, 2) == std::vector<index_t>{1, 2});

    SSM_SEEDED_RANDOM(rng);
    for (int i = 0; i < 3000; ++i) {
        const index_t length = rng.integer(1, 300);
        std::vector<float> importance(static_cast<std::size_t>(length));
        // Few distinct values, so that ties are common.
        const index_t levels = rng.integer(1, 6);
        for (auto& v : importance) v = float(rng.integer(0, levels - 1));
        const index_t response = rng.integer(0, length);
        const index_t keep = rng.integer(0, length + 3);
        INFO("length " << length << ", keep " << keep << ", response " << response << ", levels " << levels);
        const auto got = decimate(importance, keep, response);
        REQUIRE(got == decimate_by_sorting(importance, keep, response));
        REQUIRE(index_t(got.size()) == std::min(keep, length - response) + response);
        REQUIRE(std::is_sorted(got.begin(), got.end()));
    }
}

TEST_CASE("ties keep the earlier token", "[decimation]") {
    CHECK(decimate({1.0f, 1.0f, 1.0f, 1.0f}, 2) == std::vector<index_t>{0, 1});
    CHECK(decimate({0.5f, 2.0f, 0.5f, 2.0f, 2.0f}, 2) == std::vector<index_t>{1, 3});
    CHECK(decimate({0.5f, 2.0f, 0.5f, 2.0f, 2.0f}, 4) == std::vector<index_t>{0, 1, 3, 4});
    CHECK(decimate({0.0f, -0.0f, 0.0f}, 1) == std::vector<index_t>{0});
}

TEST_CASE("the response tail is always kept", "[decimation]") {
    // The tail has the lowest importance and still stays; the head competes for `keep` places.
    const std::vector<float> importance{5.0f, 1.0f, 4.0f, 3.0f, 0.0f, 0.0f};
    CHECK(decimate(importance, 2, 2) == std::vector<index_t>{0, 2, 4, 5});
    CHECK(decimate(importance, 0, 2) == std::vector<index_t>{4, 5});
    CHECK(decimate(importance, 0, 6) == std::vector<index_t>{0, 1, 2, 3, 4, 5});
    CHECK(decimate(importance, 100, 1) == std::vector<index_t>{0, 1, 2, 3, 4, 5});
}

TEST_CASE("decimate rejects NaN importance and bad arguments", "[decimation][errors]") {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_AS(decimate({1.0f, 2.0f, 3.0f, nan}, 2), ssm::error);
    REQUIRE_THROWS_WITH(decimate({1.0f, 2.0f, 3.0f, nan}, 2), "decimate: importance of token 3 is NaN");
    // Also inside the response tail, which is kept regardless.
    REQUIRE_THROWS_WITH(decimate({1.0f, nan, 3.0f}, 1, 2), Contains("importance of token 1 is NaN"));
    REQUIRE_THROWS_WITH(decimate({}, 1), "decimate: importance is empty");
    REQUIRE_THROWS_WITH(decimate({1.0f, 2.0f}, 1, 3), "decimate: response_length 3 is outside [0, 2]");
    REQUIRE_THROWS_WITH(decimate({1.0f, 2.0f}, 1, -1), "decimate: response_length -1 is outside [0, 2]");
    REQUIRE_THROWS_WITH(decimate({1.0f, 2.0f}, -1), "decimate: keep must be >= 0, got -1");
}

TEST_CASE("delta_importance is the L2 norm of each token's delta over the channels", "[decimation]") {
    SSM_SEEDED_RANDOM(rng);
    const index_t length = 200, channels = 37;
    const auto values = rng.uniform(length * channels, -3.0, 3.0);
    auto check = [&](auto storage_tag, auto make_view) {
        using T = typename decltype(storage_tag)::type;
        INFO(ssm::storage_name<T>);
        std::vector<T> stored(values.size());
        std::transform(values.begin(), values.end(), stored.begin(), [](double v) { return ref::store<T>(v); });
        const ssm::tensor_view<const T, 2> delta = make_view(stored.data());
        const auto score = ssm::delta_importance(delta);
        REQUIRE(index_t(score.size()) == length);
        for (index_t t = 0; t < length; ++t) {
            double sum = 0.0;
            for (index_t d = 0; d < channels; ++d) sum += std::pow(ref::load(delta(t, d)), 2);
            INFO("token " << t);
            REQUIRE(double(score[std::size_t(t)]) == Approx(std::sqrt(sum)).epsilon(1e-6));
        }
    };
    auto row_major = [&](const auto* data) { return ssm::tensor_view<const std::remove_cvref_t<decltype(*data)>, 2>(data, length, channels); };
    // The same buffer read as (channels, length) transposed: a strided view.
    auto transposed = [&](const auto* data) {
        return ssm::tensor_view<const std::remove_cvref_t<decltype(*data)>, 2>(data, {length, channels}, {1, length});
    };
    check(std::type_identity<float>{}, row_major);
    check(std::type_identity<ssm::bfloat16>{}, row_major);
    check(std::type_identity<ssm::float16>{}, transposed);
    check(std::type_identity<double>{}, transposed);
    REQUIRE_THROWS_AS(ssm::delta_importance(ssm::tensor_view<const float, 2>{}), ssm::error);
    std::vector<float> one(4, 1.0f);
    REQUIRE_THROWS_WITH(ssm::delta_importance(ssm::tensor_view<const float, 2>(one.data(), 0, 4)),
                        Contains("delta_importance: delta must be a non-empty"));
    CHECK(ssm::delta_importance(ssm::tensor_view<const float, 2>(one.data(), 1, 4)) == std::vector<float>{2.0f});
}

TEST_CASE("decimator::select keeps the scheduled number of most important tokens", "[decimation]") {
    SSM_SEEDED_RANDOM(rng);
    const index_t length = 600, channels = 16;
    // Δ after softplus: positive, with a few tokens made clearly important.
    auto values = rng.uniform(length * channels, 0.01, 0.2);
    std::vector<index_t> marked;
    for (index_t t = 0; t < length; t += 37) {
        marked.push_back(t);
        for (index_t d = 0; d < channels; ++d) values[std::size_t(t * channels + d)] = 5.0;
    }
    std::vector<float> delta(values.begin(), values.end());
    const ssm::tensor_view<const float, 2> view(delta.data(), length, channels);
    const ssm::decimator layer{.schedule = {.base_length = 400, .beta = 0.5, .min_length = 10}};
    for (const index_t position : {0, 1, 2, 3, 5, 8}) {
        for (const index_t response : {0, 25}) {
            INFO("layer position " << position << ", response " << response);
            const auto kept = layer.select(view, position, response);
            const index_t keep = layer.schedule.keep(position, length - response);
            REQUIRE(kept == decimate(ssm::delta_importance(view), keep, response));
            REQUIRE(index_t(kept.size()) == keep + response);
            // The marked tokens outrank every other candidate.
            index_t marked_kept = 0;
            for (const index_t t : marked) marked_kept += std::binary_search(kept.begin(), kept.end(), t);
            const index_t marked_candidates = index_t(std::count_if(marked.begin(), marked.end(),
                                                                [&](index_t t) { return t < length - response; }));
            CHECK(marked_kept >= std::min(keep, marked_candidates));
        }
    }
    CHECK(layer.select(view, 0).size() == 400);
    CHECK(layer.select(view, 6).size() == 10);  // 400 / 64 = 6.25, raised to the minimum
    REQUIRE_THROWS_WITH(layer.select(view, 0, length + 1), Contains("response_length"));
}
