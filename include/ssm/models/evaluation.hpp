#pragma once
// Next-token loss over windows of a token stream, the measurement behind perplexity-against-position
// curves: the stream is cut into non-overlapping windows of `window` tokens, each run from an empty
// cache, and window token t (t >= 1) is scored by the model's prediction after tokens 0..t-1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "../core/error.hpp"
#include "../core/parallel.hpp"

namespace ssm::models {

struct window_options {
    index_t window = 2048;
    index_t max_windows = 0;  // 0: every whole window of the stream
    index_t batch = 4;        // windows per forward call
};

// loss[t]: the loss (nats) of predicting window position t, summed over the windows; loss[0] = 0.
struct position_losses {
    std::vector<double> loss;
    index_t windows = 0;
};

// on_progress(windows done, windows in all) is called after each batch.
template <class Model, class Progress>
position_losses window_losses(const Model& model, const host_exec& exec, std::span<const std::int32_t> tokens,
                              const window_options& options, Progress&& on_progress) {
    constexpr const char* where = "window_losses";
    detail::require(options.window >= 2, where, ": window must be at least 2 tokens, got ", options.window);
    detail::require(options.batch >= 1, where, ": batch must be positive, got ", options.batch);
    index_t windows = index_t(tokens.size()) / options.window;
    detail::require(windows > 0, where, ": ", tokens.size(), " tokens, fewer than one window of ", options.window);
    if (options.max_windows > 0) windows = std::min(windows, options.max_windows);

    const index_t window = options.window, vocab = model.config().vocab_size;
    position_losses out{std::vector<double>(static_cast<std::size_t>(window), 0.0), windows};
    std::vector<float> logits;
    for (index_t first = 0; first < windows; first += options.batch) {
        const index_t rows = std::min(options.batch, windows - first);
        const std::int32_t* chunk = tokens.data() + first * window;
        logits.assign(static_cast<std::size_t>(rows * window * vocab), NAN);
        auto cache = model.make_cache(rows);
        model.forward(exec, {chunk, rows, window}, cache, {logits.data(), rows, window, vocab});
        std::vector<double> batch_loss(static_cast<std::size_t>(rows * window), 0.0);
        detail::parallel_for(exec, rows * (window - 1), [&](index_t i) {
            const index_t b = i / (window - 1), t = i % (window - 1) + 1;
            const float* l = logits.data() + (b * window + t - 1) * vocab;  // predicts position t
            const float top = *std::max_element(l, l + vocab);
            double sum = 0.0;
            for (index_t v = 0; v < vocab; ++v) sum += std::exp(double(l[v]) - double(top));
            batch_loss[std::size_t(b * window + t)] = std::log(sum) + double(top) - double(l[chunk[b * window + t]]);
        });
        for (index_t b = 0; b < rows; ++b)
            for (index_t t = 1; t < window; ++t) out.loss[std::size_t(t)] += batch_loss[std::size_t(b * window + t)];
        on_progress(first + rows, windows);
    }
    return out;
}

}  // namespace ssm::models
