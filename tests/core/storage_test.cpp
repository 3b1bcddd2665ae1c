// bfloat16 and float16 storage: conversions against known bit patterns and against an independent
// round-to-nearest-even computed in double.
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "reference.hpp"

namespace {

float from_bits(std::uint32_t b) { return std::bit_cast<float>(b); }
std::uint32_t to_bits(float x) { return std::bit_cast<std::uint32_t>(x); }

std::uint16_t bf16_bits(float x) { return ssm::from_float<ssm::bfloat16>(x).bits; }
std::uint16_t fp16_bits(float x) { return ssm::from_float<ssm::float16>(x).bits; }
float bf16_value(std::uint16_t b) { return ssm::to_float(ssm::bfloat16{b}); }
float fp16_value(std::uint16_t b) { return ssm::to_float(ssm::float16{b}); }

bool bf16_is_nan(std::uint16_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0; }
bool fp16_is_nan(std::uint16_t b) { return (b & 0x7c00u) == 0x7c00u && (b & 0x3ffu) != 0; }

// The value of a binary16 pattern, decoded from the definition in double.
double fp16_definition(std::uint16_t b) {
    const double sign = (b & 0x8000u) ? -1.0 : 1.0;
    const int exponent = (b >> 10) & 0x1f;
    const int mantissa = b & 0x3ff;
    if (exponent == 0x1f) return mantissa ? std::numeric_limits<double>::quiet_NaN() : sign * HUGE_VAL;
    if (exponent == 0) return sign * std::ldexp(mantissa, -24);
    return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// Round-to-nearest-even of a finite double onto a grid of representable values given by their
// patterns in increasing order (values beyond the last one round to infinity past the midpoint
// between the largest finite value and the next power of two).
template <class Value>
std::uint16_t nearest_even(double x, Value&& value, std::uint16_t largest_finite, std::uint16_t infinity) {
    const double magnitude = std::abs(x);
    const std::uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
    const double largest = value(largest_finite);
    const double overflow_midpoint = largest + (value(largest_finite) - value(std::uint16_t(largest_finite - 1))) / 2;
    if (magnitude >= overflow_midpoint) return std::uint16_t(sign | infinity);
    // Binary search for the last pattern whose value is <= magnitude (patterns of positive values
    // are ordered like their values).
    std::uint16_t lo = 0, hi = largest_finite;
    while (lo < hi) {
        const auto mid = std::uint16_t((lo + hi + 1) / 2);
        if (value(mid) <= magnitude) lo = mid;
        else hi = std::uint16_t(mid - 1);
    }
    if (lo == largest_finite) return std::uint16_t(sign | lo);
    const double below = value(lo), above = value(std::uint16_t(lo + 1));
    std::uint16_t pick = lo;
    if (magnitude - below > above - magnitude) pick = std::uint16_t(lo + 1);
    else if (magnitude - below == above - magnitude) pick = (lo & 1u) ? std::uint16_t(lo + 1) : lo;
    return std::uint16_t(sign | pick);
}

std::uint16_t fp16_reference(float x) {
    return nearest_even(double(x), [](std::uint16_t b) { return fp16_definition(b); }, 0x7bffu, 0x7c00u);
}
std::uint16_t bf16_reference(float x) {
    return nearest_even(double(x), [](std::uint16_t b) { return double(from_bits(std::uint32_t(b) << 16)); }, 0x7f7fu,
                        0x7f80u);
}

// Floats to convert: special values, the neighbourhood of every 16-bit pattern's value and of
// the midpoints between neighbours, and random bit patterns.
std::vector<float> probe_floats(ref::random_source& rng, float (*value)(std::uint16_t)) {
    std::vector<float> probes{0.0f, -0.0f, std::numeric_limits<float>::max(), std::numeric_limits<float>::lowest(),
                              std::numeric_limits<float>::min(), std::numeric_limits<float>::denorm_min(), 65504.0f,
                              65519.99f, 65520.0f, -65520.0f, 1e30f, -1e-30f, 5.9604645e-8f, 2.9802322e-8f};
    for (std::uint32_t b = 0; b < 0x7f80u; b += 7) {
        const float v = value(std::uint16_t(b));
        const float next = value(std::uint16_t(b + 1));
        if (!std::isfinite(v) || !std::isfinite(next)) continue;
        const float mid = float((double(v) + double(next)) / 2);
        for (const float x : {v, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, HUGE_VALF)}) {
            probes.push_back(x);
            probes.push_back(-x);
        }
    }
    for (int i = 0; i < 200000; ++i) {
        const float x = from_bits(std::uint32_t(rng.integer(0, 0xffffffff)));
        if (std::isfinite(x)) probes.push_back(x);
    }
    return probes;
}

struct encoding {
    float value;
    std::uint16_t bits;
};

void check_encodings(std::uint16_t (*encode)(float), std::initializer_list<encoding> cases) {
    for (const auto& [value, bits] : cases) {
        INFO("value " << value << " (float bits " << std::hex << to_bits(value) << "), expected bits " << bits);
        CHECK(encode(value) == bits);
    }
}

void check_decodings(float (*decode)(std::uint16_t), std::initializer_list<encoding> cases) {
    for (const auto& [value, bits] : cases) {
        INFO("bits " << std::hex << bits);
        CHECK(decode(bits) == value);
        CHECK(std::signbit(decode(bits)) == std::signbit(value));
    }
}

}  // namespace

TEST_CASE("bfloat16 known bit patterns", "[core][storage]") {
    check_encodings(bf16_bits, {{1.0f, 0x3f80u},
                                  {-2.0f, 0xc000u},
                                  {0.0f, 0x0000u},
                                  {-0.0f, 0x8000u},
                                  {HUGE_VALF, 0x7f80u},
                                  {-HUGE_VALF, 0xff80u},
                                  {3.140625f, 0x4049u},
                                  // Round to nearest, ties to even: 1 + 2^-8 is halfway between 0x3f80 and 0x3f81.
                                  {from_bits(0x3f808000u), 0x3f80u},
                                  {from_bits(0x3f818000u), 0x3f82u},
                                  {from_bits(0x3f808001u), 0x3f81u},
                                  {from_bits(0x3f807fffu), 0x3f80u},
                                  // The largest float rounds up to infinity; subnormals keep their upper bits.
                                  {std::numeric_limits<float>::max(), 0x7f80u},
                                  {from_bits(0x00010000u), 0x0001u}});
    check_decodings(bf16_value, {{1.0f, 0x3f80u}, {-3.140625f, 0xc049u}, {from_bits(0x00010000u), 0x0001u},
                                   {-HUGE_VALF, 0xff80u}});
}

TEST_CASE("bfloat16 keeps NaN a NaN", "[core][storage]") {
    CHECK(bf16_is_nan(bf16_bits(std::numeric_limits<float>::quiet_NaN())));
    // Signalling NaNs whose payload lies only in the dropped lower bits would otherwise become inf.
    for (const std::uint32_t b : {0x7f800001u, 0xff800001u, 0x7f80ffffu, 0x7fc00000u, 0xffffffffu}) {
        INFO("float bits " << std::hex << b);
        CHECK(bf16_is_nan(bf16_bits(from_bits(b))));
        CHECK((bf16_bits(from_bits(b)) & 0x8000u) == (b >> 16 & 0x8000u));
    }
    CHECK(std::isnan(bf16_value(0x7fc0u)));
    CHECK(std::isnan(bf16_value(0xff81u)));
}

TEST_CASE("float16 known bit patterns", "[core][storage]") {
    check_encodings(fp16_bits, {{1.0f, 0x3c00u},
                                  {-2.0f, 0xc000u},
                                  {0.5f, 0x3800u},
                                  {0.0f, 0x0000u},
                                  {-0.0f, 0x8000u},
                                  {65504.0f, 0x7bffu},
                                  {-65504.0f, 0xfbffu},
                                  {HUGE_VALF, 0x7c00u},
                                  {-HUGE_VALF, 0xfc00u},
                                  // Overflow: below the midpoint 65520 to the largest half, from it to infinity.
                                  {65519.99f, 0x7bffu},
                                  {65520.0f, 0x7c00u},
                                  {1e10f, 0x7c00u},
                                  // Normals, ties to even: 1 + 2^-11 is halfway between 0x3c00 and 0x3c01.
                                  {1.0f + 0x1p-11f, 0x3c00u},
                                  {1.0f + 3 * 0x1p-11f, 0x3c02u},
                                  {std::nextafter(1.0f + 0x1p-11f, 2.0f), 0x3c01u},
                                  // Smallest normal, largest and smallest subnormal.
                                  {0x1p-14f, 0x0400u},
                                  {1023 * 0x1p-24f, 0x03ffu},
                                  {0x1p-24f, 0x0001u},
                                  {-0x1p-24f, 0x8001u},
                                  // Subnormals, ties to even: 0.5 → 0, 1.5 → 2, 2.5 → 2 (units of 2^-24).
                                  {0x1p-25f, 0x0000u},
                                  {std::nextafter(0x1p-25f, 1.0f), 0x0001u},
                                  {3 * 0x1p-25f, 0x0002u},
                                  {5 * 0x1p-25f, 0x0002u},
                                  // Rounding up out of the subnormals into the smallest normal.
                                  {1023.5f * 0x1p-24f, 0x0400u},
                                  {1e-10f, 0x0000u},
                                  {std::numeric_limits<float>::denorm_min(), 0x0000u}});
    check_decodings(fp16_value, {{1.0f, 0x3c00u},
                                   {65504.0f, 0x7bffu},
                                   {0x1p-24f, 0x0001u},
                                   {1023 * 0x1p-24f, 0x03ffu},
                                   {-0x1p-24f, 0x8001u},
                                   {0x1p-14f, 0x0400u},
                                   {-HUGE_VALF, 0xfc00u}});
}

TEST_CASE("float16 keeps NaN a NaN", "[core][storage]") {
    for (const std::uint32_t b : {0x7fc00000u, 0x7f800001u, 0xffc00000u, 0x7fffffffu}) {
        INFO("float bits " << std::hex << b);
        CHECK(fp16_is_nan(fp16_bits(from_bits(b))));
    }
    CHECK(std::isnan(fp16_value(0x7e00u)));
    CHECK(std::isnan(fp16_value(0x7c01u)));
    CHECK(std::isnan(fp16_value(0xfe00u)));
}

TEST_CASE("every 16-bit pattern survives to_float and back", "[core][storage]") {
    int bf16_mismatches = 0, fp16_mismatches = 0, fp16_decode_mismatches = 0;
    for (std::uint32_t b = 0; b <= 0xffffu; ++b) {
        const auto bits = std::uint16_t(b);
        if (bf16_is_nan(bits)) bf16_mismatches += !bf16_is_nan(bf16_bits(bf16_value(bits)));
        else bf16_mismatches += bf16_bits(bf16_value(bits)) != bits;
        if (fp16_is_nan(bits)) {
            fp16_mismatches += !fp16_is_nan(fp16_bits(fp16_value(bits)));
            fp16_decode_mismatches += !std::isnan(fp16_value(bits));
        } else {
            fp16_mismatches += fp16_bits(fp16_value(bits)) != bits;
            fp16_decode_mismatches += double(fp16_value(bits)) != fp16_definition(bits) ||
                                      std::signbit(fp16_value(bits)) != bool(bits & 0x8000u);
        }
    }
    CHECK(bf16_mismatches == 0);
    CHECK(fp16_mismatches == 0);
    CHECK(fp16_decode_mismatches == 0);
}

TEST_CASE("from_float rounds to nearest even like a reference rounding in double", "[core][storage]") {
    SSM_SEEDED_RANDOM(rng);
    auto check_all = [](const std::vector<float>& probes, std::uint16_t (*convert)(float),
                        std::uint16_t (*reference)(float)) {
        std::size_t mismatches = 0;
        float first = 0.0f;
        for (const float x : probes)
            if (convert(x) != reference(x) && mismatches++ == 0) first = x;
        INFO("first mismatch at " << first << " (bits " << std::hex << to_bits(first) << ") of " << std::dec
                                  << probes.size() << " probes: got " << convert(first) << ", expected "
                                  << reference(first));
        CHECK(mismatches == 0);
    };
    check_all(probe_floats(rng, fp16_value), fp16_bits, fp16_reference);
    check_all(probe_floats(rng, bf16_value), bf16_bits, bf16_reference);
}

TEST_CASE("float and double storage pass values through", "[core][storage]") {
    CHECK(ssm::to_float(1.5f) == 1.5f);
    CHECK(ssm::to_float(0.1) == 0.1f);
    CHECK(ssm::from_float<float>(-3.25f) == -3.25f);
    CHECK(ssm::from_float<double>(0.1f) == double(0.1f));
    STATIC_REQUIRE(ssm::storage_type<float>);
    STATIC_REQUIRE(ssm::storage_type<double>);
    STATIC_REQUIRE(ssm::storage_type<ssm::bfloat16>);
    STATIC_REQUIRE(ssm::storage_type<ssm::float16>);
    STATIC_REQUIRE_FALSE(ssm::storage_type<int>);
    STATIC_REQUIRE_FALSE(ssm::storage_type<std::uint16_t>);
    CHECK(std::string(ssm::storage_name<float>) == "float32");
    CHECK(std::string(ssm::storage_name<double>) == "float64");
    CHECK(std::string(ssm::storage_name<ssm::bfloat16>) == "bfloat16");
    CHECK(std::string(ssm::storage_name<ssm::float16>) == "float16");
}
