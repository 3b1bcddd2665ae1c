#pragma once
// The causal depthwise convolution in front of Mamba's scan: for each channel c,
//   y_t = bias_c + Σ_{k<K} w_{c,k} · x_{t-K+1+k},   optionally followed by SiLU,
// where inputs before the sequence come from `state`, the channel's K-1 previous inputs (zeros when
// no state is given). The state, when given, is then replaced by the sequence's last K-1 inputs, so
// that a prefill followed by token-by-token calls equals one call over the whole sequence.
#include "../core/error.hpp"
#include "../core/math.hpp"
#include "../core/parallel.hpp"
#include "../core/storage.hpp"
#include "../core/tensor_view.hpp"

namespace ssm {

template <storage_type T>
struct conv1d_inputs {
    tensor_view<const T, 3> x;                   // (batch, length, channels)
    tensor_view<const float, 2> weight;          // (channels, K)
    tensor_view<const float, 1> bias{};          // optional (channels)
    bool silu = true;                            // SiLU on the output, as Mamba applies it
};

// state: optional (batch, channels, K-1), read and then overwritten. y must not overlap x.
template <storage_type T>
void causal_conv1d(const host_exec& exec, const conv1d_inputs<T>& in, tensor_view<float, 3> state,
                   tensor_view<T, 3> y) {
    constexpr const char* where = "causal_conv1d";
    using detail::require;
    require(!in.x.empty(), where, ": x is missing");
    const index_t batch = in.x.extent(0), length = in.x.extent(1), channels = in.x.extent(2);
    require(batch > 0 && length > 0 && channels > 0, where, ": x is empty (", batch, " x ", length, " x ", channels, ")");
    require(!in.weight.empty() && in.weight.extent(1) > 0, where, ": weight is missing or has no taps");
    const index_t K = in.weight.extent(1);
    detail::check_shape(where, "weight", in.weight, {channels, K}, {"channels", "taps"});
    if (!in.bias.empty()) detail::check_shape(where, "bias", in.bias, {channels}, {"channels"});
    if (!state.empty()) detail::check_shape(where, "state", state, {batch, channels, K - 1}, {"batch", "channels", "taps - 1"});
    detail::check_shape(where, "y", y, {batch, length, channels}, {"batch", "length", "channels"});

    detail::parallel_for(exec, batch * channels, [&](index_t task) {
        const index_t b = task / channels, c = task % channels;
        // Input t' of the channel: the sequence for t' >= 0, the carried history (or zeros) before it.
        const auto input = [&](index_t t) {
            if (t >= 0) return to_float(in.x(b, t, c));
            return state.empty() ? 0.0f : state(b, c, K - 1 + t);
        };
        const float bias = in.bias.empty() ? 0.0f : in.bias(c);
        for (index_t t = 0; t < length; ++t) {
            float acc = bias;
            for (index_t k = 0; k < K; ++k) acc += in.weight(c, k) * input(t - K + 1 + k);
            y(b, t, c) = from_float<T>(in.silu ? math::silu(acc) : acc);
        }
        // The new history is inputs length-K+1 .. length-1; in ascending k, an entry taken from the old
        // history lies to the right of k and is still unread.
        if (!state.empty())
            for (index_t k = 0; k + 1 < K; ++k) state(b, c, k) = input(length - K + 1 + k);
    });
}

}  // namespace ssm
