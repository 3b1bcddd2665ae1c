// Runs a small Mamba-style scan through the public API and checks it against a direct recurrence.
#include <cmath>
#include <cstdio>
#include <vector>

#include <ssm/ssm.hpp>

int main() {
    constexpr int length = 37, channels = 3, state = 2;
    std::vector<float> A{-1.0f, -0.5f, -0.25f, -2.0f, -0.1f, -1.5f};
    std::vector<float> u(length * channels), delta(length * channels), B(length * state), C(length * state),
        y(length * channels);
    for (int i = 0; i < length * channels; ++i) {
        u[i] = std::sin(0.3f * float(i));
        delta[i] = 0.05f + 0.01f * float(i % 7);
    }
    for (int i = 0; i < length * state; ++i) {
        B[i] = std::cos(0.2f * float(i));
        C[i] = 1.0f - 0.01f * float(i);
    }
    const ssm::selective_ssm<ssm::diagonal_real> model{{ssm::tensor_view<const float, 2>(A.data(), channels, state)}};
    ssm::selective_scan(ssm::host_exec{}, ssm::sequential{}, model,
                        ssm::scan_inputs<float>{.u = {u.data(), 1, length, channels},
                                                .delta = {delta.data(), 1, length, channels},
                                                .B = {B.data(), 1, length, 1, state},
                                                .C = {C.data(), 1, length, 1, state}},
                        ssm::scan_outputs<float>{.y = {y.data(), 1, length, channels}});
    double worst = 0.0;
    for (int d = 0; d < channels; ++d) {
        double h[state] = {};
        for (int t = 0; t < length; ++t) {
            double out = 0.0;
            for (int n = 0; n < state; ++n) {
                const double dt = delta[t * channels + d];
                h[n] = std::exp(dt * A[d * state + n]) * h[n] + dt * B[t * state + n] * u[t * channels + d];
                out += C[t * state + n] * h[n];
            }
            worst = std::max(worst, std::abs(out - y[t * channels + d]));
        }
    }
    std::printf("consumer: max |y - direct recurrence| = %.2e\n", worst);
    return worst < 1e-5 ? 0 : 1;
}
