#pragma once
// Decimation (DeciMamba): a decimating layer keeps only its most important tokens, in their original
// order, and the layers after it see the shorter sequence. These are the pure pieces a model uses:
// token importance from Δ, the per-layer keep schedule, and the top-k selection.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <span>
#include <vector>

#include "../core/error.hpp"
#include "../core/storage.hpp"
#include "../core/tensor_view.hpp"

namespace ssm {

// Importance of each token: the L2 norm of its Δ over the channels (DeciMamba's score).
// delta is (length, channels), after bias and softplus.
template <storage_type T>
std::vector<float> delta_importance(tensor_view<const T, 2> delta) {
    detail::require(!delta.empty() && delta.extent(0) > 0 && delta.extent(1) > 0,
                    "delta_importance: delta must be a non-empty (length, channels) view");
    std::vector<float> score(static_cast<std::size_t>(delta.extent(0)));
    for (index_t t = 0; t < delta.extent(0); ++t) {
        double sum = 0.0;
        for (index_t d = 0; d < delta.extent(1); ++d) {
            const double v = to_float(delta(t, d));
            sum += v * v;
        }
        score[std::size_t(t)] = float(std::sqrt(sum));
    }
    return score;
}

// How many tokens a decimating layer keeps: k = max(min(L', base_length · β^s), min_length), where s
// is the layer's position among the decimating layers and L' the number of candidate tokens.
struct decimation_schedule {
    index_t base_length = 2000;
    double beta = 0.5;
    index_t min_length = 20;

    index_t keep(index_t layer_position, index_t candidates) const {
        detail::require(base_length > 0 && beta > 0.0 && beta <= 1.0 && min_length >= 0,
                        "decimation_schedule: needs base_length > 0, 0 < beta <= 1, min_length >= 0");
        detail::require(layer_position >= 0, "decimation_schedule: layer position must be >= 0, got ",
                        layer_position);
        const double budget = double(base_length) * std::pow(beta, double(layer_position));
        const index_t k = std::max(std::min(candidates, index_t(budget)), min_length);
        return std::min(k, candidates);
    }
};

// Indices of the tokens a decimating layer keeps, ascending: the last `response_length` tokens
// always, and of the others the `keep` with the highest importance (ties keep the earlier token).
inline std::vector<index_t> decimate(std::span<const float> importance, index_t keep,
                                     index_t response_length = 0) {
    const auto length = index_t(importance.size());
    detail::require(length > 0, "decimate: importance is empty");
    detail::require(response_length >= 0 && response_length <= length, "decimate: response_length ",
                    response_length, " is outside [0, ", length, "]");
    detail::require(keep >= 0, "decimate: keep must be >= 0, got ", keep);
    for (index_t t = 0; t < length; ++t)
        detail::require(!std::isnan(importance[std::size_t(t)]), "decimate: importance of token ", t, " is NaN");
    const index_t candidates = length - response_length;
    std::vector<index_t> order(static_cast<std::size_t>(candidates));
    std::iota(order.begin(), order.end(), index_t(0));
    const index_t k = std::min(keep, candidates);
    auto more_important = [&](index_t a, index_t b) {
        const float sa = importance[std::size_t(a)], sb = importance[std::size_t(b)];
        return sa > sb || (sa == sb && a < b);
    };
    std::nth_element(order.begin(), order.begin() + k, order.end(), more_important);
    order.resize(std::size_t(k));
    std::sort(order.begin(), order.end());
    for (index_t t = candidates; t < length; ++t) order.push_back(t);
    return order;
}

// A decimating layer's policy: schedule plus selection, from Δ.
struct decimator {
    decimation_schedule schedule{};

    template <storage_type T>
    std::vector<index_t> select(tensor_view<const T, 2> delta, index_t layer_position,
                                index_t response_length = 0) const {
        const auto score = delta_importance(delta);
        const index_t candidates = index_t(score.size()) - response_length;
        return decimate(score, schedule.keep(layer_position, std::max<index_t>(candidates, 0)), response_length);
    }
};

}  // namespace ssm
