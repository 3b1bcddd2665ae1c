// The safetensors reader and the checkpoint folder: values of every dtype, sharded indexes, and a
// clear ssm::error for every kind of malformed file, including randomly corrupted ones.
#include <catch2/catch.hpp>

#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <ssm/io/safetensors.hpp>

namespace {

namespace fs = std::filesystem;

// A fresh, empty folder per test case.
fs::path scratch(const std::string& name) {
    const fs::path dir = fs::temp_directory_path() / ("ssm_io_test_" + std::to_string(::getpid())) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

// A safetensors image: the header length, the header text as given, then the data bytes.
std::vector<std::byte> image(const std::string& header, const std::vector<std::byte>& data) {
    std::vector<std::byte> out(8);
    for (int i = 0; i < 8; ++i) out[std::size_t(i)] = std::byte((header.size() >> (8 * i)) & 0xff);
    for (const char c : header) out.push_back(std::byte(c));
    out.insert(out.end(), data.begin(), data.end());
    return out;
}

void write(const fs::path& path, const std::vector<std::byte>& bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

template <class T>
void append(std::vector<std::byte>& data, const std::vector<T>& values) {
    const auto* p = reinterpret_cast<const std::byte*>(values.data());
    data.insert(data.end(), p, p + values.size() * sizeof(T));
}

// A valid file: w (2, 3) F32, e (4) BF16, h (2, 2) F16, an empty tensor and metadata.
const std::vector<float> w_values{1.5f, -2.0f, 0.25f, 3.0f, -0.0f, 1e-3f};
const std::vector<float> e_values{1.0f, -2.5f, 0.15625f, 65536.0f};
const std::vector<float> h_values{0.5f, -1.0f, 2048.0f, 6.103515625e-05f};

std::vector<std::byte> valid_image() {
    std::vector<std::byte> data;
    append(data, w_values);
    std::vector<std::uint16_t> e, h;
    for (const float v : e_values) e.push_back(ssm::from_float<ssm::bfloat16>(v).bits);
    for (const float v : h_values) h.push_back(ssm::from_float<ssm::float16>(v).bits);
    append(data, e);
    append(data, h);
    const std::string header = R"({"__metadata__":{"format":"pt"},)"
                               R"("w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                               R"("e":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},)"
                               R"("h":{"dtype":"F16","shape":[2,2],"data_offsets":[32,40]},)"
                               R"("none":{"dtype":"F32","shape":[0,3],"data_offsets":[40,40]}})";
    return image(header, data);
}

// Parses an in-memory image and returns the error message ("" when it parsed).
std::string parse_error(const std::vector<std::byte>& bytes) {
    try {
        ssm::io::safetensors_view view(bytes, "mem.safetensors");
        return "";
    } catch (const ssm::error& e) {
        return e.what();
    }
}

std::string with_tensor(const std::string& description, std::size_t data_bytes) {
    return parse_error(image(R"({"t":)" + description + "}", std::vector<std::byte>(data_bytes)));
}

}  // namespace

TEST_CASE("a checkpoint file reads back every dtype as float", "[io]") {
    const fs::path dir = scratch("valid");
    write(dir / "model.safetensors", valid_image());
    const ssm::io::checkpoint ckpt(dir);
    const std::vector<ssm::index_t> w_shape{2, 3}, e_shape{4}, h_shape{2, 2}, none_shape{0, 3};
    CHECK(ckpt.load("w", w_shape) == w_values);
    CHECK(ckpt.load("e", e_shape) == e_values);  // all exactly representable in bf16
    CHECK(ckpt.load("h", h_shape) == h_values);  // all exactly representable in fp16
    CHECK(ckpt.load("none", none_shape).empty());
    CHECK(ckpt.tensor("e").dtype == ssm::io::dtype::bf16);
    CHECK(ckpt.contains("w"));
    CHECK_FALSE(ckpt.contains("__metadata__"));
    const ssm::io::safetensors_file file(dir / "model.safetensors");
    CHECK(file.view().metadata().at("format") == "pt");
    CHECK(file.view().names() == std::vector<std::string>{"e", "h", "none", "w"});
}

TEST_CASE("missing tensors and wrong shapes name the file and the tensor", "[io][errors]") {
    const fs::path dir = scratch("lookup");
    write(dir / "model.safetensors", valid_image());
    const ssm::io::checkpoint ckpt(dir);
    const std::vector<ssm::index_t> transposed{3, 2};
    CHECK_THROWS_WITH(ckpt.load("w", transposed),
                      Catch::Contains("model.safetensors: tensor 'w' has shape [2, 3], expected [3, 2]"));
    CHECK_THROWS_WITH(ckpt.tensor("lm_head.weight"), Catch::Contains("checkpoint has no tensor 'lm_head.weight'"));
    CHECK_THROWS_WITH(ssm::io::checkpoint(scratch("empty")),
                      Catch::Contains("neither model.safetensors nor model.safetensors.index.json"));
}

TEST_CASE("malformed files raise ssm::error naming the problem", "[io][errors]") {
    CHECK_THAT(parse_error({}), Catch::Contains("truncated: 0 bytes"));
    CHECK_THAT(parse_error(std::vector<std::byte>(7)), Catch::Contains("truncated: 7 bytes"));
    auto long_header = image("{}", {});
    long_header[0] = std::byte(200);
    CHECK_THAT(parse_error(long_header), Catch::Contains("header length 200 runs past the end of the file (10 bytes)"));
    CHECK_THAT(parse_error(image("{\"t\":", {})), Catch::Contains("header is not valid JSON"));
    CHECK_THAT(parse_error(image("[1,2]", {})), Catch::Contains("header must be a JSON object"));
    CHECK_THAT(with_tensor(R"({"dtype":"I64","shape":[1],"data_offsets":[0,8]})", 8),
               Catch::Contains("tensor 't' has dtype I64; supported: F32, F16, BF16"));
    CHECK_THAT(with_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 4),
               Catch::Contains("tensor 't': data_offsets [0, 8] run past the 4 data bytes"));
    CHECK_THAT(with_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})", 8),
               Catch::Contains("data_offsets [8, 0] are reversed"));
    CHECK_THAT(with_tensor(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})", 8),
               Catch::Contains("tensor 't' holds 8 bytes, but shape [3] of F32 needs 3 x 4"));
    CHECK_THAT(with_tensor(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", 8),
               Catch::Contains("shape extent must be a non-negative integer, got -2"));
    CHECK_THAT(with_tensor(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})", 8),
               Catch::Contains("shape too large"));
    CHECK_THAT(with_tensor(R"({"dtype":"F32","shape":[2]})", 8), Catch::Contains("data_offsets [begin, end]"));
    CHECK_THAT(with_tensor(R"({"shape":[2],"data_offsets":[0,8]})", 8), Catch::Contains("has no dtype"));
    CHECK_THAT(parse_error(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                 std::vector<std::byte>(12))),
               Catch::Contains("tensors 'a' and 'b' overlap"));
}

TEST_CASE("a truncated file on disk is reported, not read past its end", "[io][errors]") {
    const fs::path dir = scratch("truncated");
    auto bytes = valid_image();
    bytes.erase(bytes.end() - 3, bytes.end());
    write(dir / "model.safetensors", bytes);
    CHECK_THROWS_WITH(ssm::io::checkpoint(dir), Catch::Contains("run past the 37 data bytes (truncated file?)"));
}

TEST_CASE("sharded checkpoints follow model.safetensors.index.json", "[io]") {
    const fs::path dir = scratch("sharded");
    std::vector<std::byte> a_data, b_data;
    append(a_data, std::vector<float>{1.0f, 2.0f});
    append(b_data, std::vector<float>{3.0f});
    write(dir / "model-00001-of-00002.safetensors",
          image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", a_data));
    write(dir / "model-00002-of-00002.safetensors",
          image(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", b_data));
    auto index = [&](const std::string& text) { std::ofstream(dir / "model.safetensors.index.json") << text; };

    index(R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
    const ssm::io::checkpoint ckpt(dir);
    const std::vector<ssm::index_t> two{2}, one{1};
    CHECK(ckpt.load("a", two) == std::vector<float>{1.0f, 2.0f});
    CHECK(ckpt.load("b", one) == std::vector<float>{3.0f});
    CHECK_THAT(ckpt.source_of("b"), Catch::EndsWith("model-00002-of-00002.safetensors"));

    index(R"({"weight_map":{"a":"model-00002-of-00002.safetensors"}})");
    CHECK_THROWS_WITH(ssm::io::checkpoint(dir), Catch::Contains("tensor 'a' is mapped to") &&
                                                    Catch::Contains("which does not hold it"));
    index(R"({"weight_map":{"a":"../model-00001-of-00002.safetensors"}})");
    CHECK_THROWS_WITH(ssm::io::checkpoint(dir), Catch::Contains("must be a file name in the checkpoint folder"));
    index(R"({"weight_map":{"a":"missing.safetensors"}})");
    CHECK_THROWS_WITH(ssm::io::checkpoint(dir), Catch::Contains("missing.safetensors: cannot open"));
    index(R"({"weights":{}})");
    CHECK_THROWS_WITH(ssm::io::checkpoint(dir), Catch::Contains("needs a \"weight_map\" object"));
    index(R"({"weight_map":)");
    CHECK_THROWS_WITH(ssm::io::checkpoint(dir), Catch::Contains("not valid JSON"));
}

TEST_CASE("randomly corrupted images parse or raise ssm::error, never crash", "[io][errors]") {
    // Under the sanitizer build this also proves no read outside the image.
    const std::vector<std::byte> original = valid_image();
    std::mt19937 rng(Catch::rngSeed());
    int parsed = 0, rejected = 0;
    for (int trial = 0; trial < 20000; ++trial) {
        std::vector<std::byte> bytes = original;
        switch (trial % 3) {
            case 0:  // a few random bytes anywhere
                for (int k = 0; k < 1 + int(rng() % 4); ++k) bytes[rng() % bytes.size()] = std::byte(rng() & 0xff);
                break;
            case 1:  // cut anywhere
                bytes.resize(rng() % bytes.size());
                break;
            default:  // digits in the header changed: offsets, extents, the header length
                for (std::size_t i = 8; i < bytes.size(); ++i)
                    if (std::isdigit(std::to_integer<int>(bytes[i])) && rng() % 8 == 0) bytes[i] = std::byte('0' + rng() % 10);
                bytes[rng() % 2] = std::byte(rng() & 0xff);
        }
        std::vector<std::byte> exact(bytes);  // its own allocation: reads past it are caught
        try {
            ssm::io::safetensors_view view(exact, "fuzz");
            for (const auto& name : view.names()) {
                const auto& t = view.tensor(name);
                REQUIRE(t.bytes.data() >= exact.data());
                REQUIRE(t.bytes.data() + t.bytes.size() <= exact.data() + exact.size());
            }
            ++parsed;
        } catch (const ssm::error&) {
            ++rejected;
        }
    }
    INFO(parsed << " parsed, " << rejected << " rejected");
    CHECK(parsed > 0);
    CHECK(rejected > 0);
}
