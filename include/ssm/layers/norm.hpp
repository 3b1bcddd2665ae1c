#pragma once
// RMSNorm as Mamba and Mamba-2 use it: y = x / sqrt(mean(x²) + ε) · weight, in float32 whatever the
// storage type, over groups of consecutive features (one group for the residual-stream norm;
// n_groups for Mamba-2's gated norm, which first multiplies x by SiLU(z)).
#include <cmath>

#include "../core/error.hpp"
#include "../core/math.hpp"
#include "../core/parallel.hpp"
#include "../core/storage.hpp"
#include "../core/tensor_view.hpp"

namespace ssm {

struct rms_norm_inputs {
    float epsilon = 1e-5f;
    index_t groups = 1;  // features are normalized in this many consecutive groups
};

namespace detail {
template <bool Gated, class T>
void rms_norm_rows(const host_exec& exec, const char* where, tensor_view<const T, 2> x, tensor_view<const T, 2> z,
                   tensor_view<const float, 1> weight, const rms_norm_inputs& options, tensor_view<T, 2> y) {
    const index_t rows = x.extent(0), features = x.extent(1);
    require(!x.empty() && rows > 0 && features > 0, where, ": x is missing or empty");
    check_shape(where, "weight", weight, {features}, {"features"});
    check_shape(where, "y", y, {rows, features}, {"rows", "features"});
    if constexpr (Gated) check_shape(where, "z", z, {rows, features}, {"rows", "features"});
    require(options.epsilon > 0.0f, where, ": epsilon must be positive, got ", options.epsilon);
    require(options.groups > 0 && features % options.groups == 0, where, ": groups ", options.groups,
            " must divide the ", features, " features");
    const index_t size = features / options.groups;
    parallel_for(exec, rows, [&](index_t r) {
        for (index_t g0 = 0; g0 < features; g0 += size) {
            auto value = [&](index_t f) {
                const float v = to_float(x(r, f));
                if constexpr (Gated) return v * math::silu(to_float(z(r, f)));
                else return v;
            };
            float sum = 0.0f;
            for (index_t f = g0; f < g0 + size; ++f) sum += value(f) * value(f);
            const float scale = 1.0f / std::sqrt(sum / float(size) + options.epsilon);
            for (index_t f = g0; f < g0 + size; ++f) y(r, f) = from_float<T>(value(f) * scale * weight(f));
        }
    });
}
}  // namespace detail

// y = RMSNorm(x)·weight for each row of x (rows, features).
template <storage_type T>
void rms_norm(const host_exec& exec, tensor_view<const T, 2> x, tensor_view<const float, 1> weight,
              const rms_norm_inputs& options, tensor_view<T, 2> y) {
    detail::rms_norm_rows<false>(exec, "rms_norm", x, {}, weight, options, y);
}

// Mamba-2's gated norm: y = RMSNorm(x ⊙ SiLU(z))·weight, per group.
template <storage_type T>
void gated_rms_norm(const host_exec& exec, tensor_view<const T, 2> x, tensor_view<const T, 2> z,
                    tensor_view<const float, 1> weight, const rms_norm_inputs& options, tensor_view<T, 2> y) {
    detail::rms_norm_rows<true>(exec, "gated_rms_norm", x, z, weight, options, y);
}

}  // namespace ssm
