#pragma once
// A minimal complex float usable on host and device (std::complex is not device code, and its
// multiplication carries inf/NaN recovery branches that block vectorization).
#include "macros.hpp"
#include "math.hpp"

namespace ssm {

struct cfloat {
    float re = 0.0f;
    float im = 0.0f;
};

SSM_HOST_DEVICE cfloat operator+(cfloat a, cfloat b) { return {a.re + b.re, a.im + b.im}; }
SSM_HOST_DEVICE cfloat operator-(cfloat a, cfloat b) { return {a.re - b.re, a.im - b.im}; }
SSM_HOST_DEVICE cfloat operator*(cfloat a, cfloat b) {
    return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}
SSM_HOST_DEVICE cfloat operator*(cfloat a, float s) { return {a.re * s, a.im * s}; }
SSM_HOST_DEVICE cfloat operator*(float s, cfloat a) { return a * s; }
SSM_HOST_DEVICE cfloat operator/(cfloat a, cfloat b) {
    const float d = b.re * b.re + b.im * b.im;
    return {(a.re * b.re + a.im * b.im) / d, (a.im * b.re - a.re * b.im) / d};
}
SSM_HOST_DEVICE float real(float x) { return x; }
SSM_HOST_DEVICE float real(cfloat z) { return z.re; }
SSM_HOST_DEVICE float magnitude(float x) { return x < 0.0f ? -x : x; }
SSM_HOST_DEVICE float magnitude(cfloat z) {
#if defined(__CUDA_ARCH__)
    return ::hypotf(z.re, z.im);
#else
    return std::hypot(z.re, z.im);
#endif
}

namespace math {
SSM_HOST_DEVICE cfloat exp(cfloat z) {
    const float r = exp(z.re);
    return {r * cos(z.im), r * sin(z.im)};
}
// e^z - 1, accurate for small |z|: (e^x cos y - 1) = expm1(x) cos y - 2 sin^2(y/2).
SSM_HOST_DEVICE cfloat expm1(cfloat z) {
    const float half_sin = sin(0.5f * z.im);
    return {expm1(z.re) * cos(z.im) - 2.0f * half_sin * half_sin, exp(z.re) * sin(z.im)};
}
}  // namespace math

}  // namespace ssm
