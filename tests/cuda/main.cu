// The device tests' program: reports itself skipped (exit code 77, which CTest reads as skipped)
// where no CUDA device is present.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cstdio>

int main(int argc, char** argv) {
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0) {
        std::printf("SKIPPED: no CUDA device (%s); the device tests did not run\n",
                    status != cudaSuccess ? cudaGetErrorString(status) : "device count is 0");
        return 77;
    }
    return Catch::Session().run(argc, argv);
}
