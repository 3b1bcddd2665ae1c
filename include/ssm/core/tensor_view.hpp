#pragma once
// Non-owning, strided views of tensors: the library's API boundary. A view never allocates and never
// owns; a default-constructed view is "absent" (used for optional arguments).
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>

#include "error.hpp"
#include "macros.hpp"

namespace ssm {

using index_t = std::int64_t;

template <class T, int Rank>
class tensor_view {
public:
    using element_type = T;
    static constexpr int rank = Rank;

    tensor_view() = default;

    // Row-major (C order) contiguous view over `data`.
    template <class... Extents>
        requires(sizeof...(Extents) == Rank && (std::is_integral_v<Extents> && ...))
    tensor_view(T* data, Extents... extents) : data_(data), extents_{index_t(extents)...} {
        static_assert(Rank > 0);
        index_t stride = 1;
        for (int r = Rank - 1; r >= 0; --r) {
            strides_[r] = stride;
            stride *= extents_[r];
        }
    }

    // Arbitrary strides, counted in elements.
    tensor_view(T* data, const std::array<index_t, Rank>& extents, const std::array<index_t, Rank>& strides)
        : data_(data) {
        std::copy(extents.begin(), extents.end(), extents_);
        std::copy(strides.begin(), strides.end(), strides_);
    }

    // A view of T converts to a view of const T.
    template <class U>
        requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
    tensor_view(const tensor_view<U, Rank>& other) : tensor_view(other.data(), other.extents(), other.strides()) {}

    SSM_HOST_DEVICE T* data() const { return data_; }
    SSM_HOST_DEVICE index_t extent(int r) const { return extents_[r]; }
    SSM_HOST_DEVICE index_t stride(int r) const { return strides_[r]; }
    std::array<index_t, Rank> extents() const { return std::to_array(extents_); }
    std::array<index_t, Rank> strides() const { return std::to_array(strides_); }
    SSM_HOST_DEVICE bool empty() const { return data_ == nullptr; }
    index_t size() const {
        index_t n = 1;
        for (index_t e : extents_) n *= e;
        return n;
    }

    template <class... Indices>
        requires(sizeof...(Indices) == Rank)
    SSM_HOST_DEVICE T& operator()(Indices... indices) const {
        return data_[offset(std::make_integer_sequence<int, Rank>{}, index_t(indices)...)];
    }

private:
    template <int... R, class... Indices>
    SSM_HOST_DEVICE index_t offset(std::integer_sequence<int, R...>, Indices... indices) const {
        return ((indices * strides_[R]) + ... + 0);
    }

    T* data_ = nullptr;
    // Plain arrays: std::array's accessors are host-only functions under nvcc.
    index_t extents_[Rank] = {};
    index_t strides_[Rank] = {};
};

// One-dimensional view over a span, for parameters like D or per-channel factors.
template <class T>
tensor_view<T, 1> as_view(std::span<T> s) {
    return tensor_view<T, 1>(s.data(), s.size());
}

namespace detail {
// Checks a present view's extents against the expected ones; names the argument, the dimension and
// both numbers in the error.
template <class T, int Rank>
void check_shape(std::string_view where, std::string_view name, const tensor_view<T, Rank>& v,
                 const std::array<index_t, std::size_t(Rank)>& expected,
                 const std::array<const char*, std::size_t(Rank)>& dimension_names) {
    require(!v.empty(), where, ": ", name, " is missing");
    for (int r = 0; r < Rank; ++r)
        require(v.extent(r) == expected[r], where, ": ", name, " has extent ", v.extent(r),
                " in dimension ", r, " (", dimension_names[r], "), expected ", expected[r]);
}
}  // namespace detail

}  // namespace ssm
