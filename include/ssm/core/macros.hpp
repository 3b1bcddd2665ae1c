#pragma once
// The one host/device annotation: functions marked with it compile for the host with any C++20
// compiler and, under nvcc, for the device as well.
#if defined(__CUDACC__)
#define SSM_HOST_DEVICE __host__ __device__ inline
#else
#define SSM_HOST_DEVICE inline
#endif

// For the small elementwise functions called per state element inside lane loops: GCC's inliner
// sometimes leaves them out of line, and a call in the loop body stops it from vectorizing.
#if defined(__GNUC__)
#define SSM_ALWAYS_INLINE [[gnu::always_inline]]
#else
#define SSM_ALWAYS_INLINE
#endif
