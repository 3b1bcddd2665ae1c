#pragma once
// Reading Hugging Face checkpoints in the safetensors format: an 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the tensor bytes.
// Files are memory-mapped; tensors are views into the mapping until converted. Every malformed input
// raises ssm::error naming the file, the tensor and the problem. Needs nlohmann-json (target ssm::io).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/storage.hpp"
#include "../core/tensor_view.hpp"

namespace ssm::io {

enum class dtype { f32, f16, bf16 };

inline std::size_t dtype_size(dtype t) { return t == dtype::f32 ? 4 : 2; }
inline const char* dtype_name(dtype t) { return t == dtype::f32 ? "F32" : t == dtype::f16 ? "F16" : "BF16"; }

// One tensor of a safetensors file: a view of its bytes inside the file's mapping.
struct tensor_info {
    std::string name;
    io::dtype dtype;
    std::vector<index_t> shape;
    std::span<const std::byte> bytes;

    index_t elements() const {
        index_t n = 1;
        for (const index_t e : shape) n *= e;
        return n;
    }
};

std::string shape_string(std::span<const index_t> shape);

// The parsed header of a safetensors image held in memory (not owned); `source` names it in errors.
class safetensors_view {
public:
    safetensors_view(std::span<const std::byte> image, std::string source);

    const std::string& source() const { return source_; }
    bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }
    const tensor_info& tensor(std::string_view name) const;
    // The tensor converted to float32, after checking that its shape is `shape`.
    std::vector<float> load(std::string_view name, std::span<const index_t> shape) const;
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    std::vector<std::string> names() const;

private:
    std::string source_;
    std::map<std::string, tensor_info, std::less<>> tensors_;
    std::map<std::string, std::string> metadata_;
};

// A read-only memory mapping of a whole file.
class mapped_file {
public:
    explicit mapped_file(const std::filesystem::path& path);
    mapped_file(const mapped_file&) = delete;
    mapped_file& operator=(const mapped_file&) = delete;
    ~mapped_file() {
        if (size_ > 0) ::munmap(const_cast<std::byte*>(data_), size_);
    }
    std::span<const std::byte> bytes() const { return {data_, size_}; }

private:
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
};

// A safetensors file on disk: mapped, then parsed.
class safetensors_file {
public:
    explicit safetensors_file(const std::filesystem::path& path)
        : file_(std::make_unique<mapped_file>(path)), view_(file_->bytes(), path.string()) {}
    const safetensors_view& view() const { return view_; }

private:
    std::unique_ptr<mapped_file> file_;  // before view_: the view points into it
    safetensors_view view_;
};

// A checkpoint folder in the Hugging Face layout: model.safetensors, or the shards that
// model.safetensors.index.json maps tensor names to.
class checkpoint {
public:
    explicit checkpoint(const std::filesystem::path& folder);

    const std::filesystem::path& folder() const { return folder_; }
    bool contains(std::string_view name) const { return where_.find(name) != where_.end(); }
    std::vector<std::string> names() const;  // sorted
    const tensor_info& tensor(std::string_view name) const;
    // Where a tensor lives, for messages: "path/model-00001-of-00002.safetensors".
    const std::string& source_of(std::string_view name) const;
    // The tensor converted to float32, after checking that its shape is `shape`.
    std::vector<float> load(std::string_view name, std::span<const index_t> shape) const;

private:
    std::filesystem::path folder_;
    std::vector<std::unique_ptr<safetensors_file>> files_;
    std::map<std::string, const safetensors_view*, std::less<>> where_;
};

// Reads a whole JSON file, naming it in errors.
nlohmann::json read_json(const std::filesystem::path& path);

// A float32 tensor to write: its shape and row-major values.
struct float_tensor {
    std::vector<index_t> shape;
    std::vector<float> values;
};

// Writes tensors as one F32 safetensors file (names sorted, data in that order); throws ssm::error
// when a tensor's values disagree with its shape or the file cannot be written completely.
void save_safetensors(const std::filesystem::path& path, const std::map<std::string, float_tensor>& tensors);

// ---------------------------------------------------------------------------------------------
// Implementation.

inline std::string shape_string(std::span<const index_t> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

namespace detail {
// a * b, or false when it does not fit in 63 bits.
inline bool multiply(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
    if (a != 0 && b > (std::uint64_t(INT64_MAX) / a)) return false;
    out = a * b;
    return true;
}

inline bool parse_dtype(const std::string& name, dtype& out) {
    if (name == "F32") out = dtype::f32;
    else if (name == "F16") out = dtype::f16;
    else if (name == "BF16") out = dtype::bf16;
    else return false;
    return true;
}

// A JSON value that must be a non-negative integer.
inline std::uint64_t unsigned_field(const nlohmann::json& v, const std::string& where) {
    ssm::detail::require(v.is_number_unsigned() || (v.is_number_integer() && v.get<std::int64_t>() >= 0), where,
                         " must be a non-negative integer, got ", v.dump());
    return v.get<std::uint64_t>();
}
}  // namespace detail

inline safetensors_view::safetensors_view(std::span<const std::byte> image, std::string source)
    : source_(std::move(source)) {
    using ssm::detail::fail;
    using ssm::detail::require;
    const std::string& file = source_;
    require(image.size() >= 8, file, ": truncated: ", image.size(),
            " bytes, but a safetensors file starts with an 8-byte header length");
    std::uint64_t header_length = 0;
    for (int i = 7; i >= 0; --i) header_length = header_length << 8 | std::uint64_t(image[std::size_t(i)]);
    require(header_length <= image.size() - 8, file, ": header length ", header_length,
            " runs past the end of the file (", image.size(), " bytes)");
    const auto* header_begin = reinterpret_cast<const char*>(image.data() + 8);
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(header_begin, header_begin + header_length);
    } catch (const nlohmann::json::exception& e) {
        fail(file, ": header is not valid JSON: ", e.what());
    }
    require(header.is_object(), file, ": header must be a JSON object, got ", header.type_name());
    const std::span<const std::byte> data = image.subspan(8 + std::size_t(header_length));

    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;  // [begin, end) with the tensor's index
    std::vector<const tensor_info*> by_range;
    for (const auto& [name, entry] : header.items()) {
        if (name == "__metadata__") {
            require(entry.is_object(), file, ": __metadata__ must be an object of strings");
            for (const auto& [key, value] : entry.items()) {
                require(value.is_string(), file, ": __metadata__ value of '", key, "' must be a string");
                metadata_[key] = value.get<std::string>();
            }
            continue;
        }
        const std::string what = file + ": tensor '" + name + "'";
        require(entry.is_object(), what, " must be described by an object");
        require(entry.contains("dtype") && entry["dtype"].is_string(), what, " has no dtype string");
        require(entry.contains("shape") && entry["shape"].is_array(), what, " has no shape array");
        require(entry.contains("data_offsets") && entry["data_offsets"].is_array() && entry["data_offsets"].size() == 2,
                what, " must have data_offsets [begin, end]");
        tensor_info info{name, dtype::f32, {}, {}};
        const std::string type = entry["dtype"].get<std::string>();
        require(detail::parse_dtype(type, info.dtype), what, " has dtype ", type, "; supported: F32, F16, BF16");
        std::uint64_t count = 1;
        for (const auto& extent : entry["shape"]) {
            const std::uint64_t e = detail::unsigned_field(extent, what + " shape extent");
            require(detail::multiply(count, e, count), what, " has a shape too large to address");
            info.shape.push_back(index_t(e));
        }
        const std::uint64_t begin = detail::unsigned_field(entry["data_offsets"][0], what + " data_offsets[0]");
        const std::uint64_t end = detail::unsigned_field(entry["data_offsets"][1], what + " data_offsets[1]");
        require(begin <= end, what, ": data_offsets [", begin, ", ", end, "] are reversed");
        require(end <= data.size(), what, ": data_offsets [", begin, ", ", end, "] run past the ", data.size(),
                " data bytes (truncated file?)");
        std::uint64_t bytes = 0;
        require(detail::multiply(count, dtype_size(info.dtype), bytes) && bytes == end - begin, what, " holds ",
                end - begin, " bytes, but shape ", shape_string(info.shape), " of ", type, " needs ", count, " x ",
                dtype_size(info.dtype));
        info.bytes = data.subspan(std::size_t(begin), std::size_t(end - begin));
        const auto [at, inserted] = tensors_.emplace(name, std::move(info));
        require(inserted, what, " appears twice");
        if (begin < end) {
            ranges.emplace_back(begin, end);
            by_range.push_back(&at->second);
        }
    }
    // No two tensors may share bytes.
    std::vector<std::size_t> order(ranges.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return ranges[a] < ranges[b]; });
    for (std::size_t i = 1; i < order.size(); ++i) {
        const auto& previous = ranges[order[i - 1]];
        const auto& current = ranges[order[i]];
        require(current.first >= previous.second, file, ": tensors '", by_range[order[i - 1]]->name, "' and '",
                by_range[order[i]]->name, "' overlap (bytes ", current.first, " to ", previous.second, ")");
    }
}

inline const tensor_info& safetensors_view::tensor(std::string_view name) const {
    const auto it = tensors_.find(name);
    ssm::detail::require(it != tensors_.end(), source_, ": no tensor '", name, "'");
    return it->second;
}

inline std::vector<std::string> safetensors_view::names() const {
    std::vector<std::string> out;
    for (const auto& [name, info] : tensors_) out.push_back(name);
    return out;
}

inline mapped_file::mapped_file(const std::filesystem::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ssm::detail::require(fd >= 0, path.string(), ": cannot open: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        ssm::detail::fail(path.string(), ": not a regular file");
    }
    size_ = std::size_t(st.st_size);
    if (size_ > 0) {
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        const int mmap_errno = errno;
        ::close(fd);
        ssm::detail::require(p != MAP_FAILED, path.string(), ": cannot map: ", std::strerror(mmap_errno));
        data_ = static_cast<const std::byte*>(p);
    } else {
        ::close(fd);
    }
}

inline nlohmann::json read_json(const std::filesystem::path& path) {
    std::ifstream in(path);
    ssm::detail::require(bool(in), path.string(), ": cannot open");
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        ssm::detail::fail(path.string(), ": not valid JSON: ", e.what());
    }
}

inline checkpoint::checkpoint(const std::filesystem::path& folder) : folder_(folder) {
    using ssm::detail::require;
    const auto single = folder / "model.safetensors";
    const auto index = folder / "model.safetensors.index.json";
    auto add_file = [&](const std::filesystem::path& path) -> const safetensors_view& {
        files_.push_back(std::make_unique<safetensors_file>(path));
        return files_.back()->view();
    };
    if (std::filesystem::exists(index)) {
        const nlohmann::json json = read_json(index);
        require(json.is_object() && json.contains("weight_map") && json["weight_map"].is_object(), index.string(),
                ": needs a \"weight_map\" object");
        std::map<std::string, const safetensors_view*> shards;
        for (const auto& [name, shard] : json["weight_map"].items()) {
            require(shard.is_string(), index.string(), ": shard of tensor '", name, "' must be a file name");
            const std::filesystem::path shard_name = shard.get<std::string>();
            // Shards live in the checkpoint folder: no absolute paths, no way out of it.
            require(shard_name.has_filename() && shard_name == shard_name.filename(), index.string(), ": shard '",
                    shard_name.string(), "' of tensor '", name, "' must be a file name in the checkpoint folder");
            auto [it, fresh] = shards.emplace(shard_name.string(), nullptr);
            if (fresh) it->second = &add_file(folder / shard_name);
            require(it->second->contains(name), index.string(), ": tensor '", name, "' is mapped to ",
                    it->second->source(), ", which does not hold it");
            where_[name] = it->second;
        }
    } else {
        require(std::filesystem::exists(single), folder.string(), ": neither model.safetensors nor ",
                "model.safetensors.index.json is there");
        const safetensors_view& view = add_file(single);
        for (const std::string& name : view.names()) where_[name] = &view;
    }
}

inline const std::string& checkpoint::source_of(std::string_view name) const {
    const auto it = where_.find(name);
    ssm::detail::require(it != where_.end(), folder_.string(), ": checkpoint has no tensor '", name, "'");
    return it->second->source();
}

inline std::vector<std::string> checkpoint::names() const {
    std::vector<std::string> out;
    for (const auto& entry : where_) out.push_back(entry.first);
    return out;
}

inline const tensor_info& checkpoint::tensor(std::string_view name) const {
    source_of(name);  // names the checkpoint when the tensor is missing
    return where_.find(name)->second->tensor(name);
}

inline std::vector<float> checkpoint::load(std::string_view name, std::span<const index_t> shape) const {
    source_of(name);  // names the checkpoint when the tensor is missing
    return where_.find(name)->second->load(name, shape);
}

inline std::vector<float> safetensors_view::load(std::string_view name, std::span<const index_t> shape) const {
    const tensor_info& t = tensor(name);
    ssm::detail::require(std::equal(t.shape.begin(), t.shape.end(), shape.begin(), shape.end()), source_,
                         ": tensor '", name, "' has shape ", shape_string(t.shape), ", expected ", shape_string(shape));
    std::vector<float> out(std::size_t(t.elements()));
    // Little-endian element bytes, copied out (the mapping gives no alignment guarantee).
    for (std::size_t i = 0; i < out.size(); ++i) {
        const std::byte* p = t.bytes.data() + i * dtype_size(t.dtype);
        if (t.dtype == dtype::f32) {
            std::memcpy(&out[i], p, 4);
        } else {
            std::uint16_t bits;
            std::memcpy(&bits, p, 2);
            out[i] = t.dtype == dtype::bf16 ? to_float(bfloat16{bits}) : to_float(float16{bits});
        }
    }
    return out;
}

inline void save_safetensors(const std::filesystem::path& path, const std::map<std::string, float_tensor>& tensors) {
    nlohmann::json header = nlohmann::json::object();
    std::uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
        index_t n = 1;
        for (const index_t e : t.shape) n *= e;
        ssm::detail::require(n == index_t(t.values.size()), path.string(), ": tensor '", name, "' has ",
                             t.values.size(), " values for shape ", shape_string(t.shape));
        const std::uint64_t bytes = std::uint64_t(n) * 4;
        header[name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned, as writers do
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    ssm::detail::require(bool(out), path.string(), ": cannot open for writing");
    const std::uint64_t length = text.size();
    for (int i = 0; i < 8; ++i) out.put(char((length >> (8 * i)) & 0xff));
    out.write(text.data(), std::streamsize(text.size()));
    for (const auto& entry : tensors)  // little-endian hosts: the floats' bytes as they are in memory
        out.write(reinterpret_cast<const char*>(entry.second.values.data()),
                  std::streamsize(entry.second.values.size() * 4));
    out.close();
    ssm::detail::require(bool(out), path.string(), ": writing failed");
}

}  // namespace ssm::io
