// What the device tests share: device buffers filled from float64 values, views of them, and the
// check of a device scan against the float64 reference (outputs poisoned before every call).
#pragma once

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <variant>
#include <vector>

#include <ssm/cuda/selective_scan.cuh>
#include <ssm/cuda/ssd.cuh>

#include "reference.hpp"

namespace device_test {

inline void cuda_require(cudaError_t status, const char* what) {
    INFO(what << ": " << cudaGetErrorString(status));
    REQUIRE(status == cudaSuccess);
}

// Device memory holding a copy of a host vector (absent when the vector is empty).
template <class E>
class device_buffer {
public:
    explicit device_buffer(const std::vector<E>& host) : size_(host.size()) {
        if (host.empty()) return;
        cuda_require(cudaMalloc(&data_, bytes()), "cudaMalloc");
        cuda_require(cudaMemcpy(data_, host.data(), bytes(), cudaMemcpyHostToDevice), "cudaMemcpy to device");
    }
    device_buffer(const device_buffer&) = delete;
    device_buffer& operator=(const device_buffer&) = delete;
    ~device_buffer() { cudaFree(data_); }

    E* data() const { return data_; }
    bool empty() const { return data_ == nullptr; }
    std::vector<E> to_host() const {
        std::vector<E> host(size_);
        cuda_require(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
        return host;
    }

private:
    std::size_t bytes() const { return size_ * sizeof(E); }
    E* data_ = nullptr;
    std::size_t size_ = 0;
};

template <class E>
std::vector<E> stored(const std::vector<double>& values) {
    std::vector<E> out(values.size());
    std::transform(values.begin(), values.end(), out.begin(), [](double x) { return ref::store<E>(x); });
    return out;
}

template <class E, class... Extents>
ssm::tensor_view<const E, int(sizeof...(Extents))> view(const device_buffer<E>& b, Extents... extents) {
    if (b.empty()) return {};
    return {b.data(), extents...};
}

// Every element written (finite: the poison is NaN), in float64.
template <class E>
std::vector<double> written(const device_buffer<E>& b, const char* what) {
    std::vector<double> out;
    for (const E& e : b.to_host()) out.push_back(ref::load(e));
    const auto bad = std::find_if(out.begin(), out.end(), [](double v) { return !std::isfinite(v); });
    INFO(what << ": element " << (bad - out.begin()) << " was not written or is not finite");
    REQUIRE(bad == out.end());
    return out;
}

using device_strategy = std::variant<ssm::sequential, ssm::chunked, ssm::look_back, ssm::ssd>;

// The device strategies every test runs: one thread per channel, the chunked scan as one pass and
// with chunks of 1, 7 and 64 tokens, and the look-back scan with chunks of 1, 7 and 64 tokens.
inline std::vector<device_strategy> device_strategies() {
    return {ssm::sequential{},          ssm::chunked{.chunk = ssm::index_t(1) << 40},
            ssm::chunked{.chunk = 1},   ssm::chunked{.chunk = 7},
            ssm::chunked{.chunk = 64},  ssm::look_back{.chunk = 1},
            ssm::look_back{.chunk = 7}, ssm::look_back{.chunk = 64}};
}

inline std::string describe(const device_strategy& s) {
    if (const auto* c = std::get_if<ssm::chunked>(&s)) return "chunked{" + std::to_string(c->chunk) + "}";
    if (const auto* c = std::get_if<ssm::look_back>(&s)) return "look_back{" + std::to_string(c->chunk) + "}";
    if (const auto* c = std::get_if<ssm::ssd>(&s))
        return "ssd{workspace " + std::to_string(c->workspace) + ", heads_per_block " +
               std::to_string(c->heads_per_block) + ", chunks_per_span " + std::to_string(c->chunks_per_span) + "}";
    return "sequential";
}

template <class Structure>
Structure device_structure(const ref::problem& p, const device_buffer<float>& A) {
    if constexpr (std::is_same_v<Structure, ssm::diagonal_real>) return {view(A, p.channels, p.state)};
    else if constexpr (std::is_same_v<Structure, ssm::scalar_identity>)
        return {view(A, p.delta_channels()), p.head_dim, p.state};
    else return {view(A, p.channels, p.state, ssm::index_t(2)), p.conjugate_pairs};
}

// D is read from `d_offset` floats into its buffer, after NaN: an offset of 1 leaves it unaligned for
// vector loads.
template <class Structure, class Rule, class T, class Modulation = ssm::no_modulation>
void check_device_scan(ref::problem p, const std::vector<device_strategy>& strategies = device_strategies(),
                       const Modulation& modulation = {}, ssm::index_t d_offset = 0) {
    INFO("storage " << ssm::storage_name<T>);
    ref::round_to_storage<T>(p);
    const ref::result want = ref::scan(p);
    for (const auto& how : strategies) {
        INFO("strategy " << describe(how));
        std::vector<float> d_values = stored<float>(p.D);
        if (!d_values.empty()) d_values.insert(d_values.begin(), std::size_t(d_offset), ref::poison<float>());
        const device_buffer<float> A(stored<float>(p.A)), D(d_values), bias(stored<float>(p.delta_bias)),
            initial(stored<float>(p.initial_state));
        const device_buffer<T> u(stored<T>(p.u)), delta(stored<T>(p.delta)), B(stored<T>(p.B)), C(stored<T>(p.C)),
            z(stored<T>(p.z));
        const device_buffer<T> y(std::vector<T>(std::size_t(p.batch * p.length * p.channels), ref::poison<T>()));
        const device_buffer<float> final_state(
            std::vector<float>(std::size_t(p.batch * p.channels * p.width()), ref::poison<float>()));

        const ssm::selective_ssm<Structure, Rule, Modulation> model{device_structure<Structure>(p, A), Rule{},
                                                                    modulation};

        const ssm::scan_inputs<T> in{.u = view(u, p.batch, p.length, p.channels),
                                     .delta = view(delta, p.batch, p.length, p.delta_channels()),
                                     .B = view(B, p.batch, p.length, p.groups, p.width()),
                                     .C = view(C, p.batch, p.length, p.groups, p.width()),
                                     .z = view(z, p.batch, p.length, p.channels),
                                     .D = D.empty() ? ssm::tensor_view<const float, 1>{}
                                                    : ssm::tensor_view<const float, 1>{D.data() + d_offset, p.channels},
                                     .delta_bias = view(bias, p.delta_channels()),
                                     .delta_softplus = p.delta_softplus,
                                     .initial_state = view(initial, p.batch, p.channels, p.width())};
        const ssm::scan_outputs<T> out{.y = {y.data(), p.batch, p.length, p.channels},
                                       .final_state = {final_state.data(), p.batch, p.channels, p.width()}};
        std::visit([&](const auto& strategy) {
            if constexpr (requires { ssm::selective_scan(ssm::cuda_exec{}, strategy, model, in, out); })
                ssm::selective_scan(ssm::cuda_exec{}, strategy, model, in, out);
            else FAIL("the strategy does not apply to this model");
        }, how);
        cuda_require(cudaDeviceSynchronize(), "selective_scan kernel");

        // SSD's products run on tensor cores: TF32 split in three for float inputs (float32 accuracy
        // up to the summation order), operands in the storage type for 16-bit inputs (the decayed
        // C·Bᵀ, the weighted x and the states rounded to it: a term of y meets up to three roundings).
        const bool tensor_cores = std::holds_alternative<ssm::ssd>(how);
        const double relative = !tensor_cores ? 1e-5 : std::is_same_v<T, float> ? 1e-4 : 4 * ref::unit_roundoff<T>;
        ref::tolerance y_tolerance = ref::scan_tolerance<T>();
        y_tolerance.relative = relative;
        ref::require_close(written(y, "y"), want.y, y_tolerance, "y", want.y_scale);
        ref::require_close(written(final_state, "final_state"), want.final_state, {relative}, "final_state",
                           want.final_state_scale);
    }
}

template <class Structure, class Rule>
void check_storage_types(const ref::problem& p) {
    check_device_scan<Structure, Rule, float>(p);
    check_device_scan<Structure, Rule, ssm::bfloat16>(p);
    check_device_scan<Structure, Rule, ssm::float16>(p);
}

template <class Structure>
void check_structure(ref::random_source& rng, const ref::shape& s) {
    ref::for_each_rule([&]<class Rule>(std::type_identity<Rule>) {
        const auto p = ref::random_problem(rng, ref::structure_of<Structure>, ref::rule_of<Rule>, s);
        INFO(ref::name(p.kind) << " / " << ref::name(p.discretization) << " / " << s);
        check_storage_types<Structure, Rule>(p);
    });
}

}  // namespace device_test
