#pragma once
// Elementwise functions the scans need per state element. On the host they are branch-free
// polynomial forms that compilers vectorize inside lane loops (libm's expf does not vectorize
// without -ffast-math); on the device they map to CUDA's math library.
#include <bit>
#include <cmath>
#include <cstdint>

#include "macros.hpp"
#include "storage.hpp"

namespace ssm::detail {
// c ? a : b as a bitwise blend. Written as a select, GCC's jump threading turns a clamp followed by
// further math (log after exp in softplus) into branches, and the lane loop no longer vectorizes.
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float select(bool c, float a, float b) {
    const std::uint32_t mask = 0u - std::uint32_t(c);
    return bits_float((float_bits(a) & mask) | (float_bits(b) & ~mask));
}
}  // namespace ssm::detail

namespace ssm::math {

inline constexpr float log2e = 1.44269504088896341f;

// 2^x; on the device one MUFU.EX2 (results below 2^-126 flush to 0), so that a caller holding
// x·log₂e already saves exp's multiply.
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float exp2(float x) {
#if defined(__CUDA_ARCH__)
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return std::exp2(x);
#endif
}

// e^x with a relative error of a few ulp; NaN stays NaN. On the host overflow saturates near
// FLT_MAX and underflow flushes to about 1e-38 (the range is clamped so that 2^n stays a normal
// float); on the device results below 2^-126 flush to 0. The device form is one multiply and one
// MUFU.EX2 (exp2f adds three instructions for subnormal results to every state update).
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float exp(float x) {
#if defined(__CUDA_ARCH__)
    return exp2(x * log2e);
#else
    x = detail::select(x < -87.3f, -87.3f, x);  // comparisons are false for NaN: it stays NaN
    x = detail::select(x > 88.3f, 88.3f, x);
    // n = round(x / ln2) by the 1.5·2^23 trick (std::floor would block loop vectorization); the low
    // bits of `shifted` hold n as an integer.
    const float shifted = x * log2e + 12582912.0f;
    const float n = shifted - 12582912.0f;
    // Cody-Waite reduction: r = x - n ln2, with ln2 split so that n * ln2_hi is exact.
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    // Minimax polynomial for e^r on |r| <= ln2/2 (Cephes expf coefficients).
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    // 2^n from those bits (converting n itself to an integer is undefined behaviour for NaN).
    const std::uint32_t scale = (detail::float_bits(shifted) - 0x4b400000u + 127u) << 23;
    return p * detail::bits_float(scale);
#endif
}

// Natural logarithm for positive normal x (Cephes logf form); used by softplus on values >= 1.
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float log(float x) {
#if defined(__CUDA_ARCH__)
    return ::logf(x);
#else
    const std::uint32_t bits = detail::float_bits(x);
    float e = float(std::int32_t((bits >> 23) & 0xffu) - 126);
    float m = detail::bits_float((bits & 0x807fffffu) | 0x3f000000u);  // mantissa in [0.5, 1)
    // Below sqrt(1/2), use 2m and e - 1 instead.
    const bool low = m < 0.707106781186547524f;
    e = detail::select(low, e - 1.0f, e);
    m = detail::select(low, m + m, m) - 1.0f;
    const float z = m * m;
    float p = 7.0376836292e-2f;
    p = p * m - 1.1514610310e-1f;
    p = p * m + 1.1676998740e-1f;
    p = p * m - 1.2420140846e-1f;
    p = p * m + 1.4249322787e-1f;
    p = p * m - 1.6668057665e-1f;
    p = p * m + 2.0000714765e-1f;
    p = p * m - 2.4999993993e-1f;
    p = p * m + 3.3333331174e-1f;
    float y = p * m * z;
    y += -2.12194440e-4f * e;
    y += -0.5f * z;
    return (m + y) + 0.693359375f * e;
#endif
}

// a / b; on the device an approximate division (2 ulp) without the IEEE division's check and slow
// path, which cost the scan kernels a branch per activation.
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float divide(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fdividef(a, b);
#else
    return a / b;
#endif
}

// log(1 + e^x), as mamba_ssm computes it: identity above 20.
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float softplus(float x) {
    const float e = exp(detail::select(x < 20.0f, x, 0.0f));
    const float small = e * (1.0f - 0.5f * e);  // log1p(e) for e < 1e-4, where 1 + e rounds
    // log1p(e) = log(u)·e/(u - 1) for u = 1 + e rounded: the ratio undoes the rounding of u, which
    // log(u) alone would pass on (a relative error up to 6e-4 for e near 1e-4).
    const float u = 1.0f + e;
    const float value = detail::select(e < 1e-4f, small, log(u) * divide(e, u - 1.0f));
    return detail::select(x < 20.0f, value, x);
}

// softplus(x) clamped to [low, high], as Mamba-2 limits Δ (time_step_limit); NaN stays NaN.
SSM_HOST_DEVICE float clamped_softplus(float x, float low, float high) {
    const float d = softplus(x);
    return d < low ? low : (d > high ? high : d);
}

SSM_ALWAYS_INLINE SSM_HOST_DEVICE float sigmoid(float x) { return divide(1.0f, 1.0f + exp(-x)); }
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float silu(float x) { return x * sigmoid(x); }

// e^x - 1 without cancellation near 0 (used by zero-order hold's input matrix).
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float expm1(float x) {
#if defined(__CUDA_ARCH__)
    return ::expm1f(x);
#else
    return std::expm1(x);
#endif
}

SSM_ALWAYS_INLINE SSM_HOST_DEVICE float cos(float x) {
#if defined(__CUDA_ARCH__)
    return ::cosf(x);
#else
    return std::cos(x);
#endif
}

SSM_ALWAYS_INLINE SSM_HOST_DEVICE float sin(float x) {
#if defined(__CUDA_ARCH__)
    return ::sinf(x);
#else
    return std::sin(x);
#endif
}

}  // namespace ssm::math
