// The decoding matrix-vector kernel (cuda/matvec.cuh) against a float64 reference on fresh random
// inputs: awkward shapes (one element, primes, rows that are not whole 16-byte pieces, many row
// groups, the widest rows a block holds, batches over one tile), each input and output policy but the
// convolution step (which the model tests cover), outputs poisoned before the call.
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cmath>
#include <vector>

#include <ssm/cuda/matvec.cuh>
#include <ssm/cuda/memory.cuh>

#include "reference.hpp"

namespace {

using ssm::index_t;

template <class E>
ssm::cuda::device_array<E> upload(const std::vector<double>& values) {
    std::vector<float> f(values.begin(), values.end());
    return ssm::cuda::device_array<E>::copy_of(f);
}

std::vector<float> download(const ssm::cuda::device_array<float>& a) {
    std::vector<float> host(a.size());
    REQUIRE(cudaMemcpy(host.data(), a.data(), a.size() * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
    return host;
}

// What the kernel reads of a value handed over in float and stored (or rounded) as E.
template <class E>
double as_read(double v) {
    return ref::load(ref::store<E>(double(float(v))));
}

// Checks y (batch, outs) against W·x + base for x (batch, ins) given in float64: the error of a
// float sum is bounded relative to the sum of the terms' magnitudes.
void check_products(const std::vector<float>& y, const std::vector<double>& expected,
                    const std::vector<double>& magnitude) {
    REQUIRE(y.size() == expected.size());
    for (std::size_t k = 0; k < y.size(); ++k) {
        INFO("output " << k << ": " << y[k] << " against " << expected[k]);
        REQUIRE(std::abs(double(y[k]) - expected[k]) <= 3e-5 * magnitude[k] + 1e-30);
    }
}

struct reference_product {
    std::vector<double> value, magnitude;
};

// base + Σ_i W[o, i]·x[b, i] (+ bias), W and x as the kernel reads them (in X).
template <class X>
reference_product multiply(const std::vector<double>& w, const std::vector<double>& x, const std::vector<double>& bias,
                           const std::vector<double>& base, index_t outs, index_t ins, index_t batch) {
    reference_product r{std::vector<double>(std::size_t(batch * outs)), std::vector<double>(std::size_t(batch * outs))};
    for (index_t b = 0; b < batch; ++b)
        for (index_t o = 0; o < outs; ++o) {
            const std::size_t k = std::size_t(b * outs + o);
            double sum = base.empty() ? 0.0 : double(float(base[k]));
            double size = std::abs(sum);
            if (!bias.empty()) sum += double(float(bias[std::size_t(o)])), size += std::abs(bias[std::size_t(o)]);
            for (index_t i = 0; i < ins; ++i) {
                const double term = as_read<X>(w[std::size_t(o * ins + i)]) * as_read<X>(x[std::size_t(b * ins + i)]);
                sum += term, size += std::abs(term);
            }
            r.value[k] = sum, r.magnitude[k] = size;
        }
    return r;
}

}  // namespace

TEMPLATE_TEST_CASE("matvec: a few rows times a matrix equal the float64 reference", "[cuda][matvec]", float,
                   ssm::bfloat16) {
    using X = TestType;
    SSM_SEEDED_RANDOM(rng);
    struct shape {
        index_t outs, ins;
    };
    // 1031 x 771: rows of 771 elements are no whole number of 16-byte pieces; 20000 x 24: many row
    // groups; 11776 inputs: rows wider than the default 48 KiB of shared memory holds.
    const shape s = GENERATE(shape{1, 1}, shape{5, 7}, shape{130, 64}, shape{1031, 771}, shape{67, 1536},
                             shape{20000, 24}, shape{3, 11776});
    const index_t batch = GENERATE(1, 3, 8, 11, 17);
    const bool wide = rng.coin(), with_bias = rng.coin(), residual = rng.coin();
    INFO("outs " << s.outs << ", ins " << s.ins << ", batch " << batch << ", row stride wider " << wide << ", bias "
                 << with_bias << ", residual " << residual);
    const auto w = rng.uniform(s.outs * s.ins, -1.0, 1.0);
    const auto x = rng.uniform(batch * s.ins, -1.0, 1.0);
    const auto bias = with_bias ? rng.uniform(s.outs, -1.0, 1.0) : std::vector<double>{};
    const auto base = residual ? rng.uniform(batch * s.outs, -1.0, 1.0) : std::vector<double>{};

    // The input rows, with NaN between them when the row stride is wider than a row.
    const index_t stride = wide ? s.ins + 5 : s.ins;
    std::vector<double> rows(std::size_t(batch * stride), NAN);
    for (index_t b = 0; b < batch; ++b)
        for (index_t i = 0; i < s.ins; ++i) rows[std::size_t(b * stride + i)] = x[std::size_t(b * s.ins + i)];
    const auto weight = upload<X>(w);
    const auto bias_d = upload<float>(bias);
    const auto rows_d = upload<float>(rows);
    const ssm::cuda::rows_input input{rows_d.data(), stride};
    auto y = residual ? upload<float>(base) : upload<float>(std::vector<double>(std::size_t(batch * s.outs), NAN));
    const ssm::cuda_exec exec{};
    if (residual)
        ssm::cuda::matvec(exec, weight.data(), bias_d.data(), s.outs, s.ins, batch, input,
                          ssm::cuda::residual_output{y.data(), s.outs});
    else
        ssm::cuda::matvec(exec, weight.data(), bias_d.data(), s.outs, s.ins, batch, input,
                          ssm::cuda::store_output{y.data(), s.outs});
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    const auto expected = multiply<X>(w, x, bias, base, s.outs, s.ins, batch);
    check_products(download(y), expected.value, expected.magnitude);
}

TEST_CASE("matvec: normalized inputs (RMSNorm, Mamba-2's gated norm) equal the float64 reference",
          "[cuda][matvec]") {
    SSM_SEEDED_RANDOM(rng);
    const index_t outs = GENERATE(1, 97), ins = GENERATE(1, 13, 768), batch = GENERATE(1, 11);
    const bool gated = GENERATE(false, true);
    const double epsilon = 1e-5;
    INFO("outs " << outs << ", ins " << ins << ", batch " << batch << ", gated " << gated);
    const auto w = rng.uniform(outs * ins, -1.0, 1.0);
    const auto norm = rng.uniform(ins, 0.5, 1.5);
    const auto h = rng.uniform(batch * ins, -2.0, 2.0);
    const index_t z_stride = ins + 3;
    const auto z = rng.uniform(batch * z_stride, -3.0, 3.0);
    // The normalized rows in float64 from the float values the kernel reads.
    std::vector<double> x(std::size_t(batch * ins));
    for (index_t b = 0; b < batch; ++b) {
        double squares = 0.0;
        auto value = [&](index_t i) {
            const double y = double(float(h[std::size_t(b * ins + i)]));
            if (!gated) return y;
            const double g = double(float(z[std::size_t(b * z_stride + i)]));
            return y * g / (1.0 + std::exp(-g));
        };
        for (index_t i = 0; i < ins; ++i) squares += value(i) * value(i);
        const double scale = 1.0 / std::sqrt(squares / double(ins) + double(float(epsilon)));
        for (index_t i = 0; i < ins; ++i)
            x[std::size_t(b * ins + i)] = value(i) * scale * double(float(norm[std::size_t(i)]));
    }
    const auto weight = upload<float>(w), norm_d = upload<float>(norm), h_d = upload<float>(h), z_d = upload<float>(z);
    auto y = upload<float>(std::vector<double>(std::size_t(batch * outs), NAN));
    const ssm::cuda_exec exec{};
    const ssm::cuda::store_output out{y.data(), outs};
    if (gated)
        ssm::cuda::matvec(exec, weight.data(), nullptr, outs, ins, batch,
                          ssm::cuda::gated_normed_input{h_d.data(), ins, z_d.data(), z_stride,
                                                        {norm_d.data(), float(epsilon)}},
                          out);
    else
        ssm::cuda::matvec(exec, weight.data(), nullptr, outs, ins, batch,
                          ssm::cuda::rms_normed_input{h_d.data(), ins, {norm_d.data(), float(epsilon)}}, out);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    // Unlike multiply's, these inputs are computed in float on the device: compare with x exactly.
    std::vector<double> expected(std::size_t(batch * outs)), magnitude(expected.size());
    for (index_t b = 0; b < batch; ++b)
        for (index_t o = 0; o < outs; ++o)
            for (index_t i = 0; i < ins; ++i) {
                const double term = double(float(w[std::size_t(o * ins + i)])) * x[std::size_t(b * ins + i)];
                expected[std::size_t(b * outs + o)] += term;
                magnitude[std::size_t(b * outs + o)] += std::abs(term);
            }
    check_products(download(y), expected, magnitude);
}

TEST_CASE("matvec: inputs too wide for shared memory are refused", "[cuda][matvec]") {
    const ssm::cuda::device_array<float> w(4), x(4), y(4);
    CHECK_THROWS_WITH(ssm::cuda::matvec(ssm::cuda_exec{}, w.data(), nullptr, 1, 30000, 1,
                                        ssm::cuda::rows_input{x.data(), 30000}, ssm::cuda::store_output{y.data(), 1}),
                      Catch::Contains("30000 input features do not fit in shared memory"));
}
