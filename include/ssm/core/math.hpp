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
// further math (the polynomial after exp in softplus) into branches, and the lane loop no longer vectorizes.
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

// a / b; on the device an approximate division (2 ulp) without the IEEE division's check and slow
// path, which cost the scan kernels a branch per activation.
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float divide(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fdividef(a, b);
#else
    return a / b;
#endif
}

// log(1 + e^x) as max(x, 0) + log1p(e^-|x|): e^-|x| lies in (0, 1], where log1p(e) = e + e²·Q(e) with
// Q a degree-7 minimax polynomial (1.4e-7 relative error in float). No log, division or branch: on the
// device a third of the instructions of log1pf(expf(x)), which had been a quarter of the scan kernels'
// (docs/performance.md). From x = 20 up the result is x itself, as mamba_ssm computes it.
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float softplus(float x) {
    const float e = exp(detail::bits_float(detail::float_bits(x) | 0x80000000u));  // e^-|x|
    float q = 5.365370571e-3f;
    q = q * e - 3.006787176e-2f;
    q = q * e + 7.920775174e-2f;
    q = q * e - 1.375406155e-1f;
    q = q * e + 1.915377083e-1f;
    q = q * e - 2.485719182e-1f;
    q = q * e + 3.332132595e-1f;
    q = q * e - 4.999964810e-1f;
    return detail::select(x > 0.0f, x, 0.0f) + (e + e * (e * q));  // x > 0 is false for NaN: e carries it
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
