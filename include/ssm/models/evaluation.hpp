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
    index_t scored = 0;       // score only the last `scored` positions of each window (0: all, 1..window-1)
};

// loss[t]: the loss (nats) of predicting window position t, summed over the windows; 0 where not scored.
struct position_losses {
    std::vector<double> loss;
    index_t windows = 0;
};

// on_progress(windows done, windows in all) is called after each batch. The model reads tokens
// 0..window-2 of each window and is asked for the logits of its last `scored` positions only (the
// tokens that reach the head when layers decimate, see decimation.hpp).
template <class Model, class Progress>
position_losses window_losses(const Model& model, const host_exec& exec, std::span<const std::int32_t> tokens,
                              const window_options& options, Progress&& on_progress) {
    constexpr const char* where = "window_losses";
    detail::require(options.window >= 2, where, ": window must be at least 2 tokens, got ", options.window);
    detail::require(options.batch >= 1, where, ": batch must be positive, got ", options.batch);
    detail::require(options.scored >= 0 && options.scored < options.window, where, ": scored positions must be in [0, ",
                    options.window - 1, "], got ", options.scored);
    index_t windows = index_t(tokens.size()) / options.window;
    detail::require(windows > 0, where, ": ", tokens.size(), " tokens, fewer than one window of ", options.window);
    if (options.max_windows > 0) windows = std::min(windows, options.max_windows);

    const index_t window = options.window, vocab = model.config().vocab_size, read = window - 1;
    const index_t scored = options.scored > 0 ? options.scored : read, first_scored = window - scored;
    position_losses out{std::vector<double>(static_cast<std::size_t>(window), 0.0), windows};
    std::vector<float> logits;
    std::vector<std::int32_t> inputs;
    for (index_t first = 0; first < windows; first += options.batch) {
        const index_t rows = std::min(options.batch, windows - first);
        const std::int32_t* chunk = tokens.data() + first * window;
        inputs.clear();
        for (index_t b = 0; b < rows; ++b) inputs.insert(inputs.end(), chunk + b * window, chunk + b * window + read);
        logits.assign(static_cast<std::size_t>(rows * scored * vocab), NAN);
        auto cache = model.make_cache(rows);
        model.forward(exec, {inputs.data(), rows, read}, cache, {logits.data(), rows, scored, vocab});
        std::vector<double> batch_loss(static_cast<std::size_t>(rows * window), 0.0);
        detail::parallel_for(exec, rows * scored, [&](index_t i) {
            const index_t b = i / scored, t = first_scored + i % scored;
            const float* l = logits.data() + i * vocab;  // predicts position t
            const float top = *std::max_element(l, l + vocab);
            double sum = 0.0;
            for (index_t v = 0; v < vocab; ++v) sum += std::exp(double(l[v]) - double(top));
            batch_loss[std::size_t(b * window + t)] = std::log(sum) + double(top) - double(l[chunk[b * window + t]]);
        });
        for (index_t b = 0; b < rows; ++b)
            for (index_t t = first_scored; t < window; ++t) out.loss[std::size_t(t)] += batch_loss[std::size_t(b * window + t)];
        on_progress(first + rows, windows);
    }
    return out;
}

}  // namespace ssm::models
