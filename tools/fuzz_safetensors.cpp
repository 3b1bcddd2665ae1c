// libFuzzer target for the safetensors header parser: any input must parse or raise ssm::error, and
// every tensor view must stay inside the input. Build and run for a bounded time with clang:
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
//       tools/fuzz_safetensors.cpp -o build/fuzz_safetensors
//   build/fuzz_safetensors -max_total_time=60 -max_len=4096
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include <ssm/io/safetensors.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
    try {
        const ssm::io::safetensors_view view(input, "fuzz");
        for (const auto& name : view.names()) {
            const auto& t = view.tensor(name);
            if (t.bytes.data() < input.data() || t.bytes.data() + t.bytes.size() > input.data() + input.size())
                std::abort();
        }
    } catch (const ssm::error&) {
    }
    return 0;
}
