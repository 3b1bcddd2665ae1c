#pragma once
// Matrix products on the device through cuBLAS, the device counterpart of blas_gemm: y = x·Wᵀ with
// W stored (out_features, in_features). Inputs are float32 or bf16 (both the same), products and
// outputs float32; float32 products stay in full float32 (no TF32), as the reference tests need.
#include <cublas_v2.h>

#include <concepts>
#include <memory>

#include "../core/error.hpp"
#include "../core/storage.hpp"
#include "../core/tensor_view.hpp"
#include "../cuda/selective_scan.cuh"

namespace ssm {

template <class G>
concept device_gemm = std::copyable<G> && requires(const G g, const cuda_exec& exec, tensor_view<const float, 2> x,
                                                   tensor_view<const float, 2> weight, tensor_view<float, 2> y) {
    g.multiply(exec, x, weight, y);
};

class cublas_gemm {
public:
    // One handle with its own workspace, so that products can be captured in CUDA graphs.
    cublas_gemm() : state_(std::make_shared<state>()) {}

    template <class E>
        requires std::same_as<E, float> || std::same_as<E, bfloat16>
    void multiply(const cuda_exec& exec, tensor_view<const E, 2> x, tensor_view<const E, 2> weight,
                  tensor_view<float, 2> y) const {
        constexpr const char* where = "cublas_gemm";
        const index_t rows = x.extent(0), in = x.extent(1), out = weight.extent(0);
        detail::check_shape(where, "weight", weight, {out, in}, {"out features", "in features"});
        detail::check_shape(where, "y", y, {rows, out}, {"rows", "out features"});
        detail::require(x.stride(1) == 1 && weight.stride(1) == 1 && y.stride(1) == 1, where,
                        ": views must have contiguous rows");
        if (rows == 0 || out == 0) return;
        // Row-major y (rows, out) is column-major yᵀ (out, rows) = W·xᵀ, with W read transposed from
        // its column-major (in, out) layout and xᵀ read as stored.
        constexpr cudaDataType_t type = std::same_as<E, float> ? CUDA_R_32F : CUDA_R_16BF;
        const float one = 1.0f, zero = 0.0f;
        set_stream(exec.stream);
        check(cublasGemmEx(state_->handle, CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(rows), int(in), &one,
                           weight.data(), type, int(weight.stride(0)), x.data(), type, int(x.stride(0)), &zero,
                           y.data(), CUDA_R_32F, int(y.stride(0)), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx");
    }

private:
    static void check(cublasStatus_t status, const char* what) {
        detail::require(status == CUBLAS_STATUS_SUCCESS, "cublas_gemm: ", what, " failed: ",
                        cublasGetStatusName(status), " (", cublasGetStatusString(status), ")");
    }
    void set_stream(cudaStream_t stream) const {
        check(cublasSetStream(state_->handle, stream), "cublasSetStream");
        // Setting a stream resets the workspace to cuBLAS's pool, which graph capture cannot use.
        check(cublasSetWorkspace(state_->handle, state_->workspace, workspace_bytes), "cublasSetWorkspace");
    }

    static constexpr std::size_t workspace_bytes = std::size_t(32) << 20;
    struct state {
        cublasHandle_t handle = nullptr;
        void* workspace = nullptr;
        state() {
            check(cublasCreate(&handle), "cublasCreate");
            cuda::check(cudaMalloc(&workspace, workspace_bytes), "cublas_gemm: workspace");
        }
        state(const state&) = delete;
        state& operator=(const state&) = delete;
        ~state() {
            cudaFree(workspace);
            cublasDestroy(handle);
        }
    };
    std::shared_ptr<state> state_;
};

}  // namespace ssm
