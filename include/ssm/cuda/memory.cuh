#pragma once
// Device memory that frees itself: weights, caches and workspaces of the device models.
#include <cuda_runtime.h>

#include <concepts>
#include <cstddef>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/storage.hpp"
#include "selective_scan.cuh"

namespace ssm::cuda {

// Throws ssm::error when no CUDA device can be used, before the first allocation would fail less clearly.
inline void require_device(const char* who) {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    detail::require(status == cudaSuccess && count > 0, who, ": no CUDA device (",
                    status == cudaSuccess ? "device count is 0" : cudaGetErrorString(status), ")");
}

template <class T>
class device_array {
public:
    device_array() = default;
    explicit device_array(std::size_t size) : size_(size) {
        if (size > 0) check(cudaMalloc(&data_, size * sizeof(T)), "device_array: cudaMalloc");
    }
    // A copy of host values, stored as T (float32 values are rounded to bf16 or fp16 when T is one).
    template <class E>
    static device_array copy_of(const std::vector<E>& host) {
        device_array out(host.size());
        if (host.empty()) return out;
        if constexpr (std::same_as<E, T>) {
            check(cudaMemcpy(out.data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
                  "device_array: copy to the device");
        } else {
            std::vector<T> converted(host.size());
            for (std::size_t i = 0; i < host.size(); ++i) converted[i] = from_float<T>(to_float(host[i]));
            check(cudaMemcpy(out.data_, converted.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
                  "device_array: copy to the device");
        }
        return out;
    }
    device_array(device_array&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    device_array& operator=(device_array&& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(size_, other.size_);
        return *this;
    }
    ~device_array() {
        if (data_) cudaFree(data_);
    }

    T* data() const { return data_; }
    std::size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }
    // Grows (never shrinks) to at least `size` elements; the contents are lost when it grows.
    void reserve(std::size_t size) {
        if (size > size_) *this = device_array(size);
    }

private:
    T* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace ssm::cuda
