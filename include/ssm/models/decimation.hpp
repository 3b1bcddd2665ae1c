#pragma once
// DeciMamba at the model level: which layers decimate, how many tokens each keeps, and the tail of
// every call that is never dropped. A decimating layer ranks its tokens by the L2 norm of Δ inside its
// mixer (after the convolution and x_proj), keeps the top k in their original order, and its scan,
// gate and output, and every later layer, see only those (see decimator.hpp and mixers.hpp).
//
// Each forward call decimates its own tokens: prefill then decoding continues from the states the
// kept tokens produced (a one-token call keeps its token: min_length >= 1); a sequence
// split into several prefill calls is decimated call by call, so splits no longer give equal logits.
#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "mixers.hpp"

namespace ssm::models {

struct decimation_settings {
    std::vector<index_t> layers;   // the decimating layers, ascending; empty: no decimation
    decimation_schedule schedule{};
    index_t response_length = 0;   // the last tokens of each call, never dropped: the only ones whose logits
                                   // a call of several tokens can give

    bool enabled() const { return !layers.empty(); }

    // The decimation of layer `layer`, if it decimates.
    std::optional<layer_decimation> for_layer(index_t layer) const {
        const auto at = std::find(layers.begin(), layers.end(), layer);
        if (at == layers.end()) return std::nullopt;
        return layer_decimation{{schedule}, index_t(at - layers.begin()), response_length};
    }

    void validate(const std::string& where, index_t model_layers) const {
        for (std::size_t i = 0; i < layers.size(); ++i) {
            detail::require(layers[i] >= 0 && layers[i] < model_layers, where, ": decimating layer ", layers[i],
                            " is outside the model's ", model_layers, " layers");
            detail::require(i == 0 || layers[i] > layers[i - 1], where,
                            ": decimating layers must be listed in ascending order, without repeats");
        }
        schedule.keep(0, 1);  // checks base_length, beta and min_length
        detail::require(schedule.min_length >= 1, where, ": min_length must be >= 1 (a layer keeps at least one ",
                        "token), got ", schedule.min_length);
        detail::require(response_length >= 0, where, ": response length must be >= 0, got ", response_length);
    }
};

}  // namespace ssm::models
