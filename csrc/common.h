// Shared helpers for fastprune's C++ kernels: argument checks, dtype dispatch
// over the dtypes the ops accept, and the chunk table used to spread work over
// a list of tensors without concatenating them.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace fastprune {

// Every check names the op and the argument (with its list index) so that a
// user can tell which of their tensors is wrong. TORCH_CHECK_VALUE/TYPE/INDEX
// surface in Python as ValueError/TypeError/IndexError, matching the reference.
#define FP_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)
#define FP_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, __VA_ARGS__)
#define FP_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, __VA_ARGS__)
#define FP_CHECK_INDEX(cond, ...) TORCH_CHECK_INDEX(cond, __VA_ARGS__)

inline std::string arg_name(const char* name, int64_t index) {
  return index < 0 ? std::string(name) : std::string(name) + "[" + std::to_string(index) + "]";
}

inline void check_cpu(const at::Tensor& t, const char* op, const char* name, int64_t index = -1) {
  FP_CHECK(t.device().is_cpu(), op, ": ", arg_name(name, index), " must be a CPU tensor, got a tensor on ",
           t.device());
  FP_CHECK_TYPE(t.layout() == at::kStrided, op, ": ", arg_name(name, index), " must be a dense (strided) tensor");
}

// The dtypes the kernels read and write natively.
inline bool is_supported_dtype(at::ScalarType st) {
  switch (st) {
    case at::kBool:
    case at::kByte:
    case at::kChar:
    case at::kShort:
    case at::kInt:
    case at::kLong:
    case at::kHalf:
    case at::kBFloat16:
    case at::kFloat:
    case at::kDouble:
      return true;
    default:
      return false;
  }
}

inline void check_dtype(const at::Tensor& t, const char* op, const char* name, int64_t index = -1) {
  FP_CHECK_TYPE(is_supported_dtype(t.scalar_type()), op, ": ", arg_name(name, index),
                " has unsupported dtype ", t.scalar_type(),
                " (supported: bool, uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64)");
}

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<scalar_t>{}) for the supported dtypes.
template <typename F>
inline void dispatch_dtype(at::ScalarType st, const char* op, F&& f) {
  switch (st) {
    case at::kBool: f(Tag<bool>{}); break;
    case at::kByte: f(Tag<uint8_t>{}); break;
    case at::kChar: f(Tag<int8_t>{}); break;
    case at::kShort: f(Tag<int16_t>{}); break;
    case at::kInt: f(Tag<int32_t>{}); break;
    case at::kLong: f(Tag<int64_t>{}); break;
    case at::kHalf: f(Tag<at::Half>{}); break;
    case at::kBFloat16: f(Tag<at::BFloat16>{}); break;
    case at::kFloat: f(Tag<float>{}); break;
    case at::kDouble: f(Tag<double>{}); break;
    default: FP_CHECK_TYPE(false, op, ": unsupported dtype ", st);
  }
}

// "Is this element non-zero?" for a mask of any supported dtype. -0.0 counts as
// zero and NaN as non-zero, exactly like `mask != 0` in torch.
template <typename T>
C10_ALWAYS_INLINE uint8_t nonzero(T v) {
  if constexpr (std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>) {
    return (v.x & 0x7FFF) != 0;
  } else {
    return v != T(0);
  }
}

template <typename T>
C10_ALWAYS_INLINE T zero_or_one(uint8_t keep) {
  if constexpr (std::is_same_v<T, at::Half>) {
    return at::Half(keep ? 0x3C00 : 0, at::Half::from_bits());
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
    return at::BFloat16(keep ? 0x3F80 : 0, at::BFloat16::from_bits());
  } else {
    return static_cast<T>(keep);
  }
}

// A contiguous run of units [begin, end) of tensor `t`. Work over a list of
// tensors is a flat list of chunks in global order (tensor by tensor), so that
// one parallel_for covers every tensor and chunk order is global index order.
struct Chunk {
  int64_t t;
  int64_t begin;
  int64_t end;
};

// `chunk` must be a multiple of 8 so that a chunk never shares a byte of a
// 1-bit packed mask with another chunk.
inline std::vector<Chunk> make_chunks(const std::vector<int64_t>& numels, int64_t chunk) {
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < numels.size(); ++t) {
    for (int64_t b = 0; b < numels[t]; b += chunk) {
      chunks.push_back({static_cast<int64_t>(t), b, std::min(numels[t], b + chunk)});
    }
  }
  return chunks;
}

inline int64_t packed_numel(int64_t numel) { return (numel + 7) / 8; }

// The ways the CPU kselect_ can select (csrc/README.md): directly (small
// inputs), by the exact radix passes, by a sampled bracket, or by the radix
// passes after a sampled bracket missed. kselect_cpu_path_counts() tells how
// often each was taken in this process (fastprune._C.kselect_cpu_paths).
enum class KSelectPath { kDirect, kRadix, kSampled, kSampledMissed };
constexpr int kKSelectPaths = 4;
std::array<int64_t, kKSelectPaths> kselect_cpu_path_counts();

}  // namespace fastprune
