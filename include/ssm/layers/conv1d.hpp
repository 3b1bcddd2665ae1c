#pragma once
// The causal depthwise convolution in front of Mamba's scan: for each channel c,
//   y_t = bias_c + Σ_{k<K} w_{c,k} · x_{t-K+1+k},   optionally followed by SiLU,
// where inputs before the sequence come from `state`, the channel's K-1 previous inputs (zeros when
// no state is given). The state, when given, is then replaced by the sequence's last K-1 inputs, so
// that a prefill followed by token-by-token calls equals one call over the whole sequence.
#include <algorithm>
#include <vector>

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

    // A task is a block of channels of one sequence, walked in time: every row of x it reads is a
    // contiguous run of channels, and the taps are laid out tap-major so the inner loops vectorize.
    constexpr index_t block = 64;
    const index_t blocks = (channels + block - 1) / block;
    detail::parallel_for(exec, batch * blocks, [&](index_t task) {
        const index_t b = task / blocks, first = task % blocks * block, n = std::min(block, channels - first);
        std::vector<float> taps(std::size_t(K * n));  // taps[k·n + j] = weight(first + j, k)
        for (index_t k = 0; k < K; ++k)
            for (index_t j = 0; j < n; ++j) taps[std::size_t(k * n + j)] = in.weight(first + j, k);
        float acc[block];
        for (index_t t = 0; t < length; ++t) {
            for (index_t j = 0; j < n; ++j) acc[j] = in.bias.empty() ? 0.0f : in.bias(first + j);
            for (index_t k = 0; k < K; ++k) {
                const float* w = taps.data() + k * n;
                const index_t source = t - K + 1 + k;  // before the sequence: the carried history, or zeros
                if (source >= 0)
                    for (index_t j = 0; j < n; ++j) acc[j] += w[j] * to_float(in.x(b, source, first + j));
                else if (!state.empty())
                    for (index_t j = 0; j < n; ++j) acc[j] += w[j] * state(b, first + j, K - 1 + source);
            }
            for (index_t j = 0; j < n; ++j) y(b, t, first + j) = from_float<T>(in.silu ? math::silu(acc[j]) : acc[j]);
        }
        // The new history is inputs length-K+1 .. length-1; in ascending k, an entry taken from the old
        // history lies to the right of k and is still unread.
        if (state.empty()) return;
        for (index_t j = 0; j < n; ++j)
            for (index_t k = 0; k + 1 < K; ++k) {
                const index_t source = length - K + 1 + k;
                state(b, first + j, k) = source >= 0 ? to_float(in.x(b, source, first + j)) : state(b, first + j, K - 1 + source);
            }
    });
}

}  // namespace ssm
