// tensor_view: layout, element access, const conversion and shape checks.
#include <array>
#include <numeric>
#include <span>
#include <type_traits>
#include <vector>

#include "reference.hpp"

namespace {

using ssm::index_t;
using Catch::Contains;

std::vector<float> iota_buffer(std::size_t size) {
    std::vector<float> v(size);
    std::iota(v.begin(), v.end(), 0.0f);
    return v;
}

}  // namespace

TEST_CASE("a contiguous view is row-major", "[core][tensor_view]") {
    auto data = iota_buffer(2 * 3 * 4);
    const ssm::tensor_view<float, 3> v(data.data(), 2, 3, 4);
    CHECK(v.extents() == std::array<index_t, 3>{2, 3, 4});
    CHECK(v.strides() == std::array<index_t, 3>{12, 4, 1});
    CHECK(v.extent(1) == 3);
    CHECK(v.stride(0) == 12);
    CHECK(v.size() == 24);
    CHECK_FALSE(v.empty());
    for (index_t i = 0; i < 2; ++i)
        for (index_t j = 0; j < 3; ++j)
            for (index_t k = 0; k < 4; ++k) {
                INFO(i << ", " << j << ", " << k);
                REQUIRE(&v(i, j, k) == data.data() + (i * 12 + j * 4 + k));
            }
    v(1, 2, 3) = -1.0f;
    CHECK(data.back() == -1.0f);
}

TEST_CASE("a strided view addresses elements through its strides", "[core][tensor_view]") {
    auto data = iota_buffer(6 * 5);
    // The transpose of a (6, 5) matrix: element (j, i) is data[i * 5 + j].
    const ssm::tensor_view<float, 2> transposed(data.data(), {5, 6}, {1, 5});
    CHECK(transposed(3, 4) == data[4 * 5 + 3]);
    CHECK(transposed.size() == 30);
    // Every other column of the first three rows, starting at column 1.
    const ssm::tensor_view<float, 2> columns(data.data() + 1, {3, 2}, {5, 2});
    CHECK(columns(0, 0) == 1.0f);
    CHECK(columns(0, 1) == 3.0f);
    CHECK(columns(2, 1) == 13.0f);
    // A zero stride repeats one element.
    const ssm::tensor_view<float, 2> broadcast(data.data() + 7, {4, 3}, {0, 1});
    CHECK(broadcast(0, 2) == 9.0f);
    CHECK(broadcast(3, 2) == 9.0f);
}

TEST_CASE("a view converts to a view of const, not the other way", "[core][tensor_view]") {
    STATIC_REQUIRE(std::is_convertible_v<ssm::tensor_view<float, 2>, ssm::tensor_view<const float, 2>>);
    STATIC_REQUIRE_FALSE(std::is_convertible_v<ssm::tensor_view<const float, 2>, ssm::tensor_view<float, 2>>);
    STATIC_REQUIRE_FALSE(std::is_convertible_v<ssm::tensor_view<float, 2>, ssm::tensor_view<const float, 3>>);
    STATIC_REQUIRE_FALSE(std::is_convertible_v<ssm::tensor_view<double, 1>, ssm::tensor_view<const float, 1>>);
    auto data = iota_buffer(20);
    const ssm::tensor_view<float, 2> mutable_view(data.data() + 2, {3, 4}, {6, 1});
    const ssm::tensor_view<const float, 2> read_only = mutable_view;
    CHECK(read_only.data() == mutable_view.data());
    CHECK(read_only.extents() == mutable_view.extents());
    CHECK(read_only.strides() == mutable_view.strides());
    CHECK(read_only(2, 3) == data[2 + 2 * 6 + 3]);
}

TEST_CASE("default views are absent and as_view wraps a span", "[core][tensor_view]") {
    const ssm::tensor_view<const float, 2> absent;
    CHECK(absent.empty());
    CHECK(absent.data() == nullptr);
    std::vector<float> values{1.0f, 2.0f, 3.0f};
    const auto v = ssm::as_view(std::span<float>(values));
    STATIC_REQUIRE(std::is_same_v<std::remove_const_t<decltype(v)>, ssm::tensor_view<float, 1>>);
    CHECK(v.extent(0) == 3);
    CHECK(v.stride(0) == 1);
    CHECK(&v(2) == &values[2]);
    const auto c = ssm::as_view(std::span<const float>(values));
    CHECK(c(1) == 2.0f);
}

TEST_CASE("check_shape names the argument, the dimension and both extents", "[core][tensor_view]") {
    auto data = iota_buffer(24);
    const ssm::tensor_view<const float, 3> v(data.data(), 2, 3, 4);
    const std::array<const char*, 3> names{"batch", "length", "channels"};
    using ssm::detail::check_shape;
    CHECK_NOTHROW(check_shape("f", "x", v, {2, 3, 4}, names));
    REQUIRE_THROWS_AS(check_shape("f", "x", v, {2, 5, 4}, names), ssm::error);
    REQUIRE_THROWS_WITH(check_shape("f", "x", v, {2, 5, 4}, names),
                        "f: x has extent 3 in dimension 1 (length), expected 5");
    REQUIRE_THROWS_WITH(check_shape("my_op", "weights", v, {2, 3, 7}, names),
                        Contains("my_op: weights has extent 4 in dimension 2 (channels), expected 7"));
    // The first mismatching dimension is the one reported.
    REQUIRE_THROWS_WITH(check_shape("f", "x", v, {1, 1, 1}, names), Contains("in dimension 0 (batch)"));
    REQUIRE_THROWS_WITH(check_shape("f", "x", ssm::tensor_view<const float, 3>{}, {2, 3, 4}, names),
                        "f: x is missing");
}
