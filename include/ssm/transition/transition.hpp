#pragma once
// Structures of the continuous transition matrix A. Each is diagonal in some basis, so a scan sees it
// as one eigenvalue per (channel, state) pair; what differs is where the eigenvalues come from, which
// Δ column drives a channel, and whether the state is real or complex.
#include <concepts>
#include <string_view>

#include "../core/complex.hpp"
#include "../core/error.hpp"
#include "../core/macros.hpp"
#include "../core/tensor_view.hpp"

namespace ssm {

template <class S>
concept transition_structure = std::copyable<S> && requires(const S s, index_t i, std::string_view where) {
    typename S::value_type;  // float (real state) or cfloat (complex state)
    { S::state_invariant_decay } -> std::convertible_to<bool>;  // one eigenvalue for all states of a channel
    { s.channels() } -> std::same_as<index_t>;
    { s.state_size() } -> std::same_as<index_t>;
    { s.delta_channels() } -> std::same_as<index_t>;
    { s.delta_channel(i) } -> std::same_as<index_t>;
    { s.eigenvalue(i, i) } -> std::same_as<typename S::value_type>;
    { s.output_scale() } -> std::same_as<float>;
    s.validate(where);
};

// Floats per state element: 1 for real states, 2 (re, im interleaved) for complex ones. B, C and the
// states carry this many floats per state index.
template <class V>
inline constexpr index_t components = std::same_as<V, cfloat> ? 2 : 1;

// Mamba-1 / S4D-real: A is (channels, state), real; each channel has its own Δ.
struct diagonal_real {
    using value_type = float;
    static constexpr bool state_invariant_decay = false;
    tensor_view<const float, 2> A;

    SSM_HOST_DEVICE index_t channels() const { return A.extent(0); }
    SSM_HOST_DEVICE index_t state_size() const { return A.extent(1); }
    SSM_HOST_DEVICE index_t delta_channels() const { return channels(); }
    SSM_HOST_DEVICE index_t delta_channel(index_t d) const { return d; }
    SSM_HOST_DEVICE float eigenvalue(index_t d, index_t n) const { return A(d, n); }
    SSM_HOST_DEVICE float output_scale() const { return 1.0f; }
    void validate(std::string_view where) const {
        detail::require(!A.empty() && A.extent(0) > 0 && A.extent(1) > 0, where,
                        ": diagonal_real needs a non-empty A of shape (channels, state)");
    }
};

// Mamba-2: A = a_h·I per head; a head owns head_dim consecutive channels, which share its Δ.
struct scalar_identity {
    using value_type = float;
    static constexpr bool state_invariant_decay = true;
    tensor_view<const float, 1> A;  // (heads)
    index_t head_dim = 0;
    index_t state = 0;

    SSM_HOST_DEVICE index_t channels() const { return A.extent(0) * head_dim; }
    SSM_HOST_DEVICE index_t state_size() const { return state; }
    SSM_HOST_DEVICE index_t delta_channels() const { return A.extent(0); }
    SSM_HOST_DEVICE index_t delta_channel(index_t d) const { return d / head_dim; }
    SSM_HOST_DEVICE float eigenvalue(index_t d, index_t) const { return A(d / head_dim); }
    SSM_HOST_DEVICE float output_scale() const { return 1.0f; }
    void validate(std::string_view where) const {
        detail::require(!A.empty() && A.extent(0) > 0, where, ": scalar_identity needs A of shape (heads)");
        detail::require(head_dim > 0, where, ": scalar_identity head_dim must be positive, got ", head_dim);
        detail::require(state > 0, where, ": scalar_identity state must be positive, got ", state);
    }
};

// S4D-Lin / LRU: complex A of shape (channels, state, 2) holding (re, im); B, C and the state are
// complex too. With conjugate_pairs the stored eigenvalues stand for themselves and their conjugates,
// so the output is 2·Re(C·h); otherwise Re(C·h).
struct diagonal_complex {
    using value_type = cfloat;
    static constexpr bool state_invariant_decay = false;
    tensor_view<const float, 3> A;
    bool conjugate_pairs = true;

    SSM_HOST_DEVICE index_t channels() const { return A.extent(0); }
    SSM_HOST_DEVICE index_t state_size() const { return A.extent(1); }
    SSM_HOST_DEVICE index_t delta_channels() const { return channels(); }
    SSM_HOST_DEVICE index_t delta_channel(index_t d) const { return d; }
    SSM_HOST_DEVICE cfloat eigenvalue(index_t d, index_t n) const { return {A(d, n, 0), A(d, n, 1)}; }
    SSM_HOST_DEVICE float output_scale() const { return conjugate_pairs ? 2.0f : 1.0f; }
    void validate(std::string_view where) const {
        detail::require(!A.empty() && A.extent(0) > 0 && A.extent(1) > 0 && A.extent(2) == 2, where,
                        ": diagonal_complex needs A of shape (channels, state, 2)");
    }
};

}  // namespace ssm
