#pragma once
// Storage element types. Arithmetic always happens in float (or double for double inputs
// converted to float state); these types only say how values are stored in memory.
#include <bit>
#include <concepts>
#include <cstdint>
#include <type_traits>

#include "macros.hpp"

namespace ssm {

// bfloat16 storage: the upper 16 bits of an IEEE float.
struct bfloat16 {
    std::uint16_t bits;
};

// IEEE binary16 storage.
struct float16 {
    std::uint16_t bits;
};

namespace detail {
SSM_ALWAYS_INLINE SSM_HOST_DEVICE std::uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(x);
#else
    return std::bit_cast<std::uint32_t>(x);
#endif
}
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float bits_float(std::uint32_t b) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(b);
#else
    return std::bit_cast<float>(b);
#endif
}
}  // namespace detail

SSM_HOST_DEVICE float to_float(float x) { return x; }
SSM_HOST_DEVICE float to_float(double x) { return static_cast<float>(x); }
SSM_ALWAYS_INLINE SSM_HOST_DEVICE float to_float(bfloat16 x) { return detail::bits_float(std::uint32_t(x.bits) << 16); }
// On a GPU the 16-bit conversions are single instructions with the same results (round to nearest
// even, NaN stays NaN); the portable forms serve the host.
SSM_HOST_DEVICE float to_float(float16 x) {
#if defined(__CUDA_ARCH__)
    float v;
    asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(x.bits));
    return v;
#else
    const std::uint32_t sign = std::uint32_t(x.bits & 0x8000u) << 16;
    const std::uint32_t exponent = (x.bits >> 10) & 0x1fu;
    const std::uint32_t mantissa = x.bits & 0x3ffu;
    if (exponent == 0x1f) return detail::bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
    if (exponent == 0) {  // zero or subnormal: value = mantissa * 2^-24
        const float magnitude = float(mantissa) * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    return detail::bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
#endif
}

template <class T>
SSM_HOST_DEVICE T from_float(float x);

template <>
SSM_HOST_DEVICE float from_float<float>(float x) { return x; }
template <>
SSM_HOST_DEVICE double from_float<double>(float x) { return x; }
template <>
SSM_HOST_DEVICE bfloat16 from_float<bfloat16>(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    std::uint16_t bits;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(bits) : "f"(x));
    return {bits};
#else
    const std::uint32_t b = detail::float_bits(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return {std::uint16_t((b >> 16) | 0x40u)};  // keep NaN a NaN
    const std::uint32_t rounding = 0x7fffu + ((b >> 16) & 1u);                      // to nearest even
    return {std::uint16_t((b + rounding) >> 16)};
#endif
}
template <>
SSM_HOST_DEVICE float16 from_float<float16>(float x) {
#if defined(__CUDA_ARCH__)
    std::uint16_t bits;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(x));
    return {bits};
#else
    const std::uint32_t b = detail::float_bits(x);
    const std::uint16_t sign = std::uint16_t((b >> 16) & 0x8000u);
    const std::uint32_t magnitude = b & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return {std::uint16_t(sign | 0x7e00u)};     // NaN
    if (magnitude >= 0x477ff000u) return {std::uint16_t(sign | 0x7c00u)};    // rounds to inf
    if (magnitude < 0x38800000u) {                                             // subnormal half
        const float scaled = detail::bits_float(magnitude) * 16777216.0f;      // * 2^24
        const float rounded = scaled + 12582912.0f - 12582912.0f;              // to nearest even
        return {std::uint16_t(sign | std::uint16_t(rounded))};
    }
    const std::uint32_t rounding = 0xfffu + ((magnitude >> 13) & 1u);
    return {std::uint16_t(sign | ((magnitude - 0x38000000u + rounding) >> 13))};
#endif
}

// The element types the scans accept as storage.
template <class T>
concept storage_type = std::same_as<T, float> || std::same_as<T, double> ||
                       std::same_as<T, bfloat16> || std::same_as<T, float16>;

template <class T>
inline constexpr const char* storage_name = "float32";
template <>
inline constexpr const char* storage_name<double> = "float64";
template <>
inline constexpr const char* storage_name<bfloat16> = "bfloat16";
template <>
inline constexpr const char* storage_name<float16> = "float16";

}  // namespace ssm
