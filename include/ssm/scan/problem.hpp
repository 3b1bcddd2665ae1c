#pragma once
// What a selective scan computes, independent of how (strategy) and where (host or device):
//   Δ_t  = modulation.delta(softplus?(delta_t + delta_bias))
//   λ    = modulation.eigenvalue(eigenvalue of A)
//   h_t  = Ā(λ, Δ_t) ⊙ h_{t-1} + B̄(λ, Δ_t) ⊙ B_t x_t          (state kept in float32)
//   y_t  = (scale·Re<C_t, h_t> + D ⊙ x_t) ⊙ SiLU(z_t)             (D and z optional)
// Layouts are token-major like Hugging Face activations: u, z, y are (batch, length, channels);
// delta is (batch, length, delta_channels); B and C are (batch, length, groups, state·components)
// with channel d reading group d / (channels / groups); states are (batch, channels, state·components).
#include <string_view>

#include "../core/error.hpp"
#include "../core/storage.hpp"
#include "../core/tensor_view.hpp"
#include "../discretization/discretization.hpp"
#include "../modulation/modulation.hpp"
#include "../transition/transition.hpp"

namespace ssm {

// A selective SSM composed from policies: transition structure, discretization rule, modulation.
template <transition_structure Structure, discretization Discretization = zoh_euler,
          modulation Modulation = no_modulation>
struct selective_ssm {
    using structure_type = Structure;
    using discretization_type = Discretization;
    using modulation_type = Modulation;
    using value_type = typename Structure::value_type;

    Structure transition;
    Discretization discretization{};
    Modulation modulation{};
};

template <class T>
concept selective_ssm_type = requires {
    typename T::structure_type;
    typename T::discretization_type;
    typename T::modulation_type;
} && std::same_as<T, selective_ssm<typename T::structure_type, typename T::discretization_type,
                                   typename T::modulation_type>>;

template <storage_type T>
struct scan_inputs {
    tensor_view<const T, 3> u;                     // (batch, length, channels)
    tensor_view<const T, 3> delta;                 // (batch, length, delta_channels), before bias/softplus
    tensor_view<const T, 4> B;                     // (batch, length, groups, state·components)
    tensor_view<const T, 4> C;                     // (batch, length, groups, state·components)
    tensor_view<const T, 3> z{};                   // optional gate (batch, length, channels)
    tensor_view<const float, 1> D{};               // optional skip (channels)
    tensor_view<const float, 1> delta_bias{};      // optional (delta_channels)
    bool delta_softplus = false;
    tensor_view<const float, 3> initial_state{};  // optional (batch, channels, state·components)
};

template <storage_type T>
struct scan_outputs {
    tensor_view<T, 3> y;                   // (batch, length, channels)
    tensor_view<float, 3> final_state{};  // optional (batch, channels, state·components)
};

struct scan_shape {
    index_t batch, length, channels, state, groups, delta_channels, components;
    index_t channels_per_group() const { return channels / groups; }
};

template <storage_type T>
struct scan_problem {
    scan_inputs<T> in;
    scan_outputs<T> out;
    scan_shape shape;
};

// Largest state size the scans keep per channel (Mamba-2 uses up to 128).
inline constexpr index_t max_state = 256;

// Checks every view against the model and each other; throws ssm::error naming the first mismatch.
template <selective_ssm_type Ssm, storage_type T>
scan_problem<T> make_problem(std::string_view where, const Ssm& model, const scan_inputs<T>& in,
                             const scan_outputs<T>& out) {
    using detail::check_shape;
    using detail::require;
    model.transition.validate(where);
    const index_t channels = model.transition.channels();
    const index_t state = model.transition.state_size();
    const index_t delta_channels = model.transition.delta_channels();
    const index_t components = ssm::components<typename Ssm::value_type>;
    model.modulation.validate(where, delta_channels);
    require(state <= max_state, where, ": state size ", state, " exceeds the supported maximum ", max_state);

    require(!in.u.empty(), where, ": u is missing");
    const index_t batch = in.u.extent(0), length = in.u.extent(1);
    require(batch > 0, where, ": u has an empty batch dimension");
    require(length > 0, where, ": u has length 0; a scan needs at least one token");
    check_shape(where, "u", in.u, {batch, length, channels}, {"batch", "length", "channels"});
    check_shape(where, "delta", in.delta, {batch, length, delta_channels},
                {"batch", "length", "delta channels"});
    require(!in.B.empty(), where, ": B is missing");
    const index_t groups = in.B.extent(2);
    require(groups > 0 && channels % groups == 0, where, ": B has ", groups,
            " groups, which must divide the ", channels, " channels");
    if (std::same_as<typename Ssm::structure_type, scalar_identity>)
        require(delta_channels % groups == 0, where, ": B has ", groups,
                " groups, which must divide the ", delta_channels, " heads");
    const std::array<const char*, 4> bc_names{"batch", "length", "groups", "state x components"};
    check_shape(where, "B", in.B, {batch, length, groups, state * components}, bc_names);
    check_shape(where, "C", in.C, {batch, length, groups, state * components}, bc_names);
    if (!in.z.empty())
        check_shape(where, "z", in.z, {batch, length, channels}, {"batch", "length", "channels"});
    if (!in.D.empty()) check_shape(where, "D", in.D, {channels}, {"channels"});
    if (!in.delta_bias.empty())
        check_shape(where, "delta_bias", in.delta_bias, {delta_channels}, {"delta channels"});
    const std::array<const char*, 3> state_names{"batch", "channels", "state x components"};
    if (!in.initial_state.empty())
        check_shape(where, "initial_state", in.initial_state, {batch, channels, state * components},
                    state_names);
    check_shape(where, "y", out.y, {batch, length, channels}, {"batch", "length", "channels"});
    if (!out.final_state.empty())
        check_shape(where, "final_state", out.final_state, {batch, channels, state * components},
                    state_names);
    return {in, out, {batch, length, channels, state, groups, delta_channels, components}};
}

}  // namespace ssm
