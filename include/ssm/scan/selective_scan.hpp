#pragma once
// The host entry points: a whole-sequence scan and the one-token recurrent step.
#include <utility>

#include "host/strategies.hpp"
#include "problem.hpp"

namespace ssm {

// Runs the selective scan of `model` over `in`, writing `out`, on the host.
//
//   ssm::selective_ssm<ssm::diagonal_real> mamba{{A}};            // A: (channels, state)
//   ssm::selective_scan(ssm::host_exec{.threads = 2}, ssm::chunked{.chunk = 1024}, mamba,
//                       ssm::scan_inputs<float>{.u = u, .delta = dt, .B = B, .C = C},
//                       ssm::scan_outputs<float>{.y = y});
//
// Throws ssm::error, before touching any output, when a view's shape disagrees with the model.
template <host_scan_strategy Strategy, selective_ssm_type Ssm, storage_type T>
void selective_scan(const host_exec& exec, const Strategy& strategy, const Ssm& model,
                    const scan_inputs<T>& in, const scan_outputs<T>& out) {
    strategy.run(exec, model, make_problem("selective_scan", model, in, out));
}

// One token's inputs for the recurrent step: the scan's inputs without the length axis.
template <storage_type T>
struct step_inputs {
    tensor_view<const T, 2> u;                 // (batch, channels)
    tensor_view<const T, 2> delta;             // (batch, delta_channels)
    tensor_view<const T, 3> B;                 // (batch, groups, state·components)
    tensor_view<const T, 3> C;                 // (batch, groups, state·components)
    tensor_view<const T, 2> z{};               // optional (batch, channels)
    tensor_view<const float, 1> D{};           // optional (channels)
    tensor_view<const float, 1> delta_bias{};  // optional (delta_channels)
    bool delta_softplus = false;
};

namespace detail {
// Inserts a length axis of extent 1 after the batch axis.
template <class E, int Rank>
tensor_view<E, Rank + 1> with_length_axis(const tensor_view<E, Rank>& v) {
    if (v.empty()) return {};
    std::array<index_t, Rank + 1> extents{}, strides{};
    extents[0] = v.extent(0), strides[0] = v.stride(0);
    extents[1] = 1, strides[1] = 0;
    for (int r = 1; r < Rank; ++r) extents[r + 1] = v.extent(r), strides[r + 1] = v.stride(r);
    return {v.data(), extents, strides};
}

// One token's inputs as a scan of length 1 whose initial and final state are both `state`.
template <storage_type T>
std::pair<scan_inputs<T>, scan_outputs<T>> step_as_scan(const step_inputs<T>& in, tensor_view<float, 3> state,
                                                        tensor_view<T, 2> y) {
    require(!state.empty(), "step: state is missing");
    return {{with_length_axis(in.u), with_length_axis(in.delta), with_length_axis(in.B), with_length_axis(in.C),
             with_length_axis(in.z), in.D, in.delta_bias, in.delta_softplus, state},
            {with_length_axis(y), state}};
}
}  // namespace detail

// Advances `state` (batch, channels, state·components) by one token and writes y (batch, channels):
// the decoding form of selective_scan, equal to it token by token.
template <selective_ssm_type Ssm, storage_type T>
void step(const host_exec& exec, const Ssm& model, const step_inputs<T>& in, tensor_view<float, 3> state,
          tensor_view<T, 2> y) {
    const auto [scan_in, scan_out] = detail::step_as_scan(in, state, y);
    // Each channel block reads its state before writing it, so state may be both input and output.
    sequential{}.run(exec, model, make_problem("step", model, scan_in, scan_out));
}

}  // namespace ssm
