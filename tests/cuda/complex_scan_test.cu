// The device selective scans with complex diagonal states (S4D / LRU style) against the float64
// reference.
#include <catch2/catch.hpp>

#include "device_test.cuh"

using namespace device_test;

TEST_CASE("device scans match the float64 reference with complex states", "[cuda]") {
    SSM_SEEDED_RANDOM(rng);
    for (const ssm::index_t length : {1, 2, 97, 1000})
        for (const ssm::index_t channels : {1, 5, 130})
            check_structure<ssm::diagonal_complex>(
                rng, {.batch = 2, .length = length, .channels = channels, .state = 5, .groups = 1, .z = true,
                      .D = true, .delta_bias = true, .softplus = true, .initial_state = true});
}
