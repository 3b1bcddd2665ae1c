#pragma once
// Host selective-scan strategies. Each is a small type whose `run` computes the problem of
// scan/problem.hpp; all agree within float rounding and differ in how work is spread:
//   sequential       one pass over time per channel block; threads over (batch, channel block).
//   chunked          time cut into chunks scanned independently, then a pass of chunk carries and
//                    a final pass from the right starting states; threads over blocks x chunks, so
//                    it scales with threads even for a single channel.
//   parallel_prefix  work-efficient (Brent-Kung) prefix over the associative affine operator
//                    (a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2) within tiles of tokens, tiles
//                    chained by their carry; threads over (batch, channel block).
#include <algorithm>
#include <concepts>
#include <memory>
#include <vector>

#include "../../core/parallel.hpp"
#include "../segment.hpp"

namespace ssm {

// Channels per host lane block: two 512-bit vectors of floats. Wider blocks read longer runs of each
// token-major row, which the strided walk over tokens needs more than it needs fine-grained tasks.
inline constexpr int host_lanes = 32;

namespace detail {
template <class V>
using lane_state = V[max_state][host_lanes];

inline index_t channel_blocks(const scan_shape& s) { return (s.channels + host_lanes - 1) / host_lanes; }
}  // namespace detail

struct sequential {
    template <class Ssm, class T>
    void run(const host_exec& exec, const Ssm& model, const scan_problem<T>& p) const {
        using V = typename Ssm::value_type;
        const index_t blocks = detail::channel_blocks(p.shape);
        detail::parallel_for(exec, p.shape.batch * blocks, [&](index_t task) {
            const index_t b = task / blocks, d0 = (task % blocks) * host_lanes;
            detail::lane_state<V> state;
            detail::load_initial_state<host_lanes>(p, b, d0, state);
            detail::scan_segment<host_lanes>(model, p, b, d0, 0, p.shape.length, state, nullptr, true);
            detail::store_final_state<host_lanes>(p, b, d0, state);
        });
    }
};

struct chunked {
    index_t chunk = 2048;  // tokens per chunk

    template <class Ssm, class T>
    void run(const host_exec& exec, const Ssm& model, const scan_problem<T>& p) const {
        using V = typename Ssm::value_type;
        detail::require(chunk > 0, "selective_scan: chunked chunk length must be positive, got ", chunk);
        const index_t blocks = detail::channel_blocks(p.shape);
        const index_t tasks = p.shape.batch * blocks;
        const index_t chunks = (p.shape.length + chunk - 1) / chunk;
        const index_t per_state = p.shape.state * host_lanes;
        // start[task][k]: state entering chunk k; pass 1 leaves there the state chunk k-1 reaches
        // from zero (from the initial state for k-1 = 0), and decay[task][k] 1 minus the product of
        // its Ā (see scan_segment).
        const auto rows = std::size_t(tasks * chunks * p.shape.state);
        const auto start = std::make_unique<V[][host_lanes]>(rows);
        const auto decay = std::make_unique<V[][host_lanes]>(rows);
        auto slot = [&](const std::unique_ptr<V[][host_lanes]>& v, index_t task, index_t k) {
            return v.get() + (task * chunks + k) * p.shape.state;
        };
        auto locate = [&](index_t item, index_t& task, index_t& k, index_t& b, index_t& d0) {
            task = item / chunks, k = item % chunks;
            b = task / blocks, d0 = (task % blocks) * host_lanes;
        };
        detail::parallel_for(exec, tasks * chunks, [&](index_t item) {  // pass 1: chunk-local scans
            index_t task, k, b, d0;
            locate(item, task, k, b, d0);
            if (k + 1 == chunks) return;
            auto state = slot(start, task, k + 1);
            auto complement = slot(decay, task, k + 1);
            if (k == 0) detail::load_initial_state<host_lanes>(p, b, d0, state);
            else std::fill_n(&state[0][0], per_state, V{});
            std::fill_n(&complement[0][0], per_state, V{});
            detail::scan_segment<host_lanes>(model, p, b, d0, k * chunk, (k + 1) * chunk, state,
                                             k == 0 ? nullptr : complement, false);
        });
        detail::parallel_for(exec, tasks, [&](index_t task) {  // pass 2: carries across chunks
            for (index_t k = 2; k < chunks; ++k) {
                auto carry = slot(start, task, k - 1);
                auto state = slot(start, task, k);
                auto complement = slot(decay, task, k);
                for (index_t n = 0; n < p.shape.state; ++n)
                    for (int lane = 0; lane < host_lanes; ++lane)
                        state[n][lane] = (carry[n][lane] - complement[n][lane] * carry[n][lane]) + state[n][lane];
            }
        });
        detail::parallel_for(exec, tasks * chunks, [&](index_t item) {  // pass 3: outputs
            index_t task, k, b, d0;
            locate(item, task, k, b, d0);
            detail::lane_state<V> state;
            if (k == 0) detail::load_initial_state<host_lanes>(p, b, d0, state);
            else std::copy_n(&slot(start, task, k)[0][0], per_state, &state[0][0]);
            const index_t t1 = std::min((k + 1) * chunk, p.shape.length);
            detail::scan_segment<host_lanes>(model, p, b, d0, k * chunk, t1, state, nullptr, true);
            if (k + 1 == chunks) detail::store_final_state<host_lanes>(p, b, d0, state);
        });
    }
};

struct parallel_prefix {
    index_t tile = 128;  // tokens per tile of the prefix tree

    template <class Ssm, class T>
    void run(const host_exec& exec, const Ssm& model, const scan_problem<T>& p) const {
        using V = typename Ssm::value_type;
        detail::require(tile > 0, "selective_scan: parallel_prefix tile length must be positive, got ", tile);
        const index_t blocks = detail::channel_blocks(p.shape);
        const index_t tokens = std::min(tile, p.shape.length);
        const index_t per_token = p.shape.state * host_lanes;
        detail::parallel_for(exec, p.shape.batch * blocks, [&](index_t task) {
            const index_t b = task / blocks, d0 = (task % blocks) * host_lanes;
            const auto blk = detail::make_lane_block<host_lanes>(model, p, d0);
            detail::lane_state<V> lambda, carry;
            detail::modulated_eigenvalues(model, p, blk, lambda);
            detail::load_initial_state<host_lanes>(p, b, d0, carry);
            // (a, b) pairs of the tile, [token][n][lane]; x kept for the D skip.
            std::vector<V> a(std::size_t(tokens * per_token)), bx(a.size());
            std::vector<float> xs(std::size_t(tokens * host_lanes));
            for (index_t t0 = 0; t0 < p.shape.length; t0 += tokens) {
                const index_t count = std::min(tokens, p.shape.length - t0);
                if (blk.uniform_group) fill<true>(model, p, blk, b, t0, count, lambda, a, bx, xs);
                else fill<false>(model, p, blk, b, t0, count, lambda, a, bx, xs);
                inclusive_scan(a.data(), bx.data(), count, per_token);
                if (blk.uniform_group) emit<true>(model, p, blk, b, t0, count, a, bx, xs, carry);
                else emit<false>(model, p, blk, b, t0, count, a, bx, xs, carry);
            }
            detail::store_final_state<host_lanes>(p, b, d0, carry);
        });
    }

    // Brent-Kung inclusive scan of `count` affine pairs, each a vector of `width` independent
    // elements: an up-sweep building power-of-two partial products, then a down-sweep filling in
    // the rest; 2·count combines instead of count·log(count).
    template <class V>
    static void inclusive_scan(V* a, V* b, index_t count, index_t width) {
        auto combine = [&](index_t earlier, index_t later) {
            V* a_later = a + later * width;
            V* b_later = b + later * width;
            const V* a_earlier = a + earlier * width;
            const V* b_earlier = b + earlier * width;
            for (index_t e = 0; e < width; ++e) {
                b_later[e] = a_later[e] * b_earlier[e] + b_later[e];
                a_later[e] = a_earlier[e] * a_later[e];
            }
        };
        index_t top = 1;
        for (; top < count; top *= 2)
            for (index_t i = 2 * top - 1; i < count; i += 2 * top) combine(i - top, i);
        for (index_t d = top / 2; d >= 1; d /= 2)
            for (index_t i = 3 * d - 1; i < count; i += 2 * d) combine(i - d, i);
    }

private:
    template <bool UniformGroup, class Ssm, class T, class V>
    static void fill(const Ssm& model, const scan_problem<T>& p, const detail::lane_block<host_lanes>& blk,
                     index_t b, index_t t0, index_t count, const detail::lane_state<V>& lambda,
                     std::vector<V>& a, std::vector<V>& bx, std::vector<float>& xs) {
        const index_t N = p.shape.state;
        for (index_t i = 0; i < count; ++i) {
            float delta[host_lanes], x[host_lanes];
            detail::token_inputs(model, p, blk, b, t0 + i, delta, x);
            std::copy_n(x, host_lanes, &xs[std::size_t(i * host_lanes)]);
            discretized<V> shared[host_lanes];
            if constexpr (Ssm::structure_type::state_invariant_decay)
                for (int lane = 0; lane < host_lanes; ++lane)
                    shared[lane] = Ssm::discretization_type::apply(lambda[0][lane], delta[lane]);
            for (index_t n = 0; n < N; ++n) {
                V bn[host_lanes], cn[host_lanes];
                detail::load_bc<UniformGroup>(p, blk, b, t0 + i, n, bn, cn);
                V* a_row = &a[std::size_t((i * N + n) * host_lanes)];
                V* b_row = &bx[std::size_t((i * N + n) * host_lanes)];
                for (int lane = 0; lane < host_lanes; ++lane) {
                    const auto q = detail::discretize<Ssm>(shared[lane], lambda[n][lane], delta[lane]);
                    a_row[lane] = q.decay;
                    b_row[lane] = q.input * bn[lane] * x[lane];
                }
            }
        }
    }

    // With the tile's prefixes (A_t, B_t), h_t = A_t h_in + B_t; contracts with C and writes y.
    template <bool UniformGroup, class Ssm, class T, class V>
    static void emit(const Ssm& model, const scan_problem<T>& p, const detail::lane_block<host_lanes>& blk,
                     index_t b, index_t t0, index_t count, const std::vector<V>& a, const std::vector<V>& bx,
                     const std::vector<float>& xs, detail::lane_state<V>& carry) {
        const index_t N = p.shape.state;
        const float scale = model.transition.output_scale();
        for (index_t i = 0; i < count; ++i) {
            float acc[host_lanes] = {}, x[host_lanes];
            std::copy_n(&xs[std::size_t(i * host_lanes)], host_lanes, x);
            for (index_t n = 0; n < N; ++n) {
                V bn[host_lanes], cn[host_lanes];
                detail::load_bc<UniformGroup>(p, blk, b, t0 + i, n, bn, cn);
                const V* a_row = &a[std::size_t((i * N + n) * host_lanes)];
                const V* b_row = &bx[std::size_t((i * N + n) * host_lanes)];
                for (int lane = 0; lane < host_lanes; ++lane)
                    acc[lane] += detail::real_product(cn[lane], a_row[lane] * carry[n][lane] + b_row[lane]);
            }
            detail::write_output(p, blk, b, t0 + i, scale, acc, x);
        }
        const index_t last = (count - 1) * N;
        for (index_t n = 0; n < N; ++n)
            for (int lane = 0; lane < host_lanes; ++lane) {
                const std::size_t e = std::size_t((last + n) * host_lanes + lane);
                carry[n][lane] = a[e] * carry[n][lane] + bx[e];
            }
    }
};

template <class S>
concept host_scan_strategy = std::same_as<S, sequential> || std::same_as<S, chunked> ||
                             std::same_as<S, parallel_prefix>;

}  // namespace ssm
