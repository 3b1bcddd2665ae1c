#pragma once
// The model shapes the model benchmarks run (mamba-130m and mamba2-130m: 24 layers, d_model 768)
// and their random token input.
#include <cstdint>
#include <random>
#include <vector>

#include <ssm/io/config.hpp>

namespace bench {

using ssm::index_t;

inline ssm::io::model_config mamba_130m() {
    ssm::io::model_config c;
    c.architecture = ssm::io::architecture::mamba1;
    c.hidden_size = 768, c.intermediate_size = 1536, c.state_size = 16, c.layers = 24, c.conv_kernel = 4;
    c.vocab_size = 50280, c.time_step_rank = 48;
    return c;
}

inline ssm::io::model_config mamba2_130m() {
    ssm::io::model_config c;
    c.architecture = ssm::io::architecture::mamba2;
    c.hidden_size = 768, c.intermediate_size = 1536, c.state_size = 128, c.layers = 24, c.conv_kernel = 4;
    c.vocab_size = 50288, c.heads = 24, c.head_dim = 64, c.groups = 1, c.chunk_size = 256;
    return c;
}

inline std::vector<std::int32_t> tokens(index_t count, index_t vocab) {
    std::mt19937 rng(3);
    std::vector<std::int32_t> out(static_cast<std::size_t>(count));
    for (auto& t : out) t = std::int32_t(rng() % std::uint32_t(vocab));
    return out;
}

}  // namespace bench
