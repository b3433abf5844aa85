// Fused mask multiply: out = input * mask.to(input.dtype) (torch's apply_mask),
// its in-place multi-tensor form, and zeroing by a 1-bit packed mask.
//
// The mask is converted to the input dtype before multiplying, so float inputs
// keep IEEE semantics (x * 0 is -0 for negative x and NaN for inf/NaN), exactly
// as in the reference. Same-shape contiguous pairs take the fast loops; other
// cases (broadcast masks, non-contiguous inputs) are handed to ATen.
#include "../op_args.h"

#include <torch/library.h>

#include <cstring>

namespace fastprune {
namespace {

constexpr int64_t kGrain = 32768;
constexpr int64_t kChunk = int64_t(1) << 16;

// Bit layout of the float formats, for multiplying by a mask value of 1 or +-0
// without a float round trip: x * 1 = x; x * +-0 = +-0 with sign(x) ^ sign(m),
// or NaN when x is inf/NaN. This is exact IEEE arithmetic (NaN payloads aside),
// and vectorises as integer selects, including for fp16/bf16, whose conversions
// to fp32 would otherwise be scalar.
template <typename T>
struct FloatBits;
template <>
struct FloatBits<at::Half> {
  using U = uint16_t;
  static constexpr U kSign = 0x8000, kExp = 0x7C00, kQuiet = 0x0200, kOne = 0x3C00;
};
template <>
struct FloatBits<at::BFloat16> {
  using U = uint16_t;
  static constexpr U kSign = 0x8000, kExp = 0x7F80, kQuiet = 0x0040, kOne = 0x3F80;
};
template <>
struct FloatBits<float> {
  using U = uint32_t;
  static constexpr U kSign = 0x80000000u, kExp = 0x7F800000u, kQuiet = 0x00400000u, kOne = 0x3F800000u;
};
template <>
struct FloatBits<double> {
  using U = uint64_t;
  static constexpr U kSign = 0x8000000000000000ull, kExp = 0x7FF0000000000000ull, kQuiet = 0x0008000000000000ull,
                     kOne = 0x3FF0000000000000ull;
};

template <typename T>
constexpr bool is_float_v = std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16> ||
                            std::is_same_v<T, float> || std::is_same_v<T, double>;

// General x * m with m already in x's dtype; fp16/bf16 multiply in fp32 and round
// once, as ATen does (exact for these formats' products).
template <typename T>
C10_ALWAYS_INLINE T mul(T x, T m) {
  if constexpr (std::is_same_v<T, bool>) {
    return x && m;
  } else if constexpr (std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>) {
    return T(static_cast<float>(x) * static_cast<float>(m));
  } else if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;  // wrap-around like ATen, without signed overflow
    return static_cast<T>(static_cast<U>(x) * static_cast<U>(m));
  } else {
    return x * m;
  }
}

// out[0..n) = x * cast<T>(mb) for a bool mask (bytes 0/1). out may equal x.
template <typename T>
C10_ALWAYS_INLINE void mul_bool_range(const T* x, const uint8_t* mb, T* out, int64_t n) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    // The IEEE product itself: widening the mask bytes to float and one
    // multiply vectorise to fewer instructions than the bitwise form below.
    // 1 for a non-zero byte is computed arithmetically (sign bit of -byte):
    // from (byte != 0) or min(byte, 1) GCC derives a per-unit branch around
    // the multiply instead, which random masks mispredict (~10 ns a unit).
    for (int64_t i = 0; i < n; ++i) {
      const int32_t one = static_cast<int32_t>(static_cast<uint32_t>(-static_cast<int32_t>(mb[i])) >> 31);
      out[i] = x[i] * static_cast<T>(one);
    }
  } else if constexpr (is_float_v<T>) {
    using B = FloatBits<T>;
    using U = typename B::U;
    const U* xb = reinterpret_cast<const U*>(x);
    U* ob = reinterpret_cast<U*>(out);
    for (int64_t i = 0; i < n; ++i) {
      const U xv = xb[i];
      const U keep = U(0) - U(mb[i] != 0);
      const U naninf = U(0) - U((xv & U(~B::kSign)) >= B::kExp);
      const U tz = U((U(xv | B::kQuiet) & naninf) | (xv & B::kSign & U(~naninf)));
      ob[i] = U((xv & keep) | (tz & U(~keep)));
    }
  } else if constexpr (std::is_same_v<T, bool>) {
    const uint8_t* xu = reinterpret_cast<const uint8_t*>(x);
    uint8_t* ou = reinterpret_cast<uint8_t*>(out);
    for (int64_t i = 0; i < n; ++i) ou[i] = xu[i] & uint8_t(mb[i] != 0);
  } else {
    using U = std::make_unsigned_t<T>;
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<U>(x[i]) & (U(0) - U(mb[i] != 0)));
  }
}

// out[0..n) = x * m, m of x's dtype. out may equal x.
template <typename T>
C10_ALWAYS_INLINE void mul_same_range(const T* x, const T* m, T* out, int64_t n) {
  if constexpr (std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>) {
    // Masks hold 1 and +-0 almost always: those take the bitwise path, anything
    // else (left untouched there) is multiplied afterwards in fp32.
    using B = FloatBits<T>;
    using U = typename B::U;
    constexpr int64_t kBlock = 256;
    const U* xb = reinterpret_cast<const U*>(x);
    const U* mbits = reinterpret_cast<const U*>(m);
    U* ob = reinterpret_cast<U*>(out);
    for (int64_t b = 0; b < n; b += kBlock) {
      const int64_t e = std::min(n, b + kBlock);
      U other = 0;  // written branch-free in U-wide lanes so that it vectorises
      for (int64_t i = b; i < e; ++i) {
        const U mv = mbits[i];
        const U xv = xb[i];
        const U is_zero = U(0) - U((mv & U(~B::kSign)) == 0);
        const U is_one = U(0) - U(mv == B::kOne);
        other |= U(~(is_zero | is_one));
        const U naninf = U(0) - U((xv & U(~B::kSign)) >= B::kExp);
        const U tz = U((U(xv | B::kQuiet) & naninf) | (U((xv ^ mv) & B::kSign) & U(~naninf)));
        ob[i] = U((tz & is_zero) | (xv & U(~is_zero)));
      }
      if (other) {
        for (int64_t i = b; i < e; ++i) {
          const U mv = mbits[i];
          if ((mv & ~B::kSign) != 0 && mv != B::kOne) out[i] = mul<T>(out[i], m[i]);
        }
      }
    }
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = mul<T>(x[i], m[i]);
  }
}

template <typename T>
C10_ALWAYS_INLINE void mul_range_impl(const T* x, const void* m, bool mask_is_bool, T* out, int64_t n) {
  if (mask_is_bool) {
    mul_bool_range<T>(x, static_cast<const uint8_t*>(m), out, n);
  } else {
    mul_same_range<T>(x, static_cast<const T*>(m), out, n);
  }
}


// One entry point per dtype, cloned for AVX2 where GCC can dispatch at load
// time (ifunc): the loops above are inlined into each clone and vectorised for it.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTPRUNE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FASTPRUNE_CLONES
#endif
#define FASTPRUNE_DEFINE_MUL_RANGE(T)                                                           \
  FASTPRUNE_CLONES void mul_range(const T* x, const void* m, bool mask_is_bool, T* out, int64_t n) { \
    mul_range_impl<T>(x, m, mask_is_bool, out, n);                                                 \
  }
FASTPRUNE_DEFINE_MUL_RANGE(bool)
FASTPRUNE_DEFINE_MUL_RANGE(uint8_t)
FASTPRUNE_DEFINE_MUL_RANGE(int8_t)
FASTPRUNE_DEFINE_MUL_RANGE(int16_t)
FASTPRUNE_DEFINE_MUL_RANGE(int32_t)
FASTPRUNE_DEFINE_MUL_RANGE(int64_t)
FASTPRUNE_DEFINE_MUL_RANGE(at::Half)
FASTPRUNE_DEFINE_MUL_RANGE(at::BFloat16)
FASTPRUNE_DEFINE_MUL_RANGE(float)
FASTPRUNE_DEFINE_MUL_RANGE(double)
#undef FASTPRUNE_DEFINE_MUL_RANGE

// Brings `mask` to a dtype the fast loops read (the input's own, or bool).
at::Tensor fast_mask(const at::Tensor& mask, at::ScalarType dtype) {
  if (mask.scalar_type() == dtype || mask.scalar_type() == at::kBool) return mask.contiguous();
  return mask.to(dtype).contiguous();
}

at::Tensor mask_mul_cpu(const at::Tensor& input, const at::Tensor& mask) {
  check_cpu(input, "mask_mul", "input");
  check_cpu(mask, "mask_mul", "mask");
  if (!mask_mul_fast_pair(input, mask)) {
    return at::mul(input, mask.to(input.scalar_type()));
  }
  const at::Tensor m = fast_mask(mask, input.scalar_type());
  at::Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
  const bool mask_is_bool = m.scalar_type() == at::kBool && input.scalar_type() != at::kBool;
  dispatch_dtype(input.scalar_type(), "mask_mul", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = input.data_ptr<T>();
    const char* mp = static_cast<const char*>(m.data_ptr());
    const int64_t msize = m.element_size();
    T* o = out.data_ptr<T>();
    at::parallel_for(0, input.numel(), kGrain, [&](int64_t b, int64_t e) {
      mul_range(x + b, mp + b * msize, mask_is_bool, o + b, e - b);
    });
  });
  return out;
}

void mask_mul__cpu(at::TensorList inputs, at::TensorList masks) {
  const std::vector<bool> fast = check_mask_mul__args(inputs, masks, CheckCpu{});
  const int64_t n = static_cast<int64_t>(fast.size());
  std::vector<at::Tensor> ms(n);
  std::vector<int64_t> numels(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    if (!fast[i]) continue;
    ms[i] = fast_mask(masks[i], inputs[i].scalar_type());
    numels[i] = inputs[i].numel();
  }
  const std::vector<Chunk> chunks = make_chunks(numels, kChunk);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const Chunk& ch = chunks[c];
      const at::Tensor& x = inputs[ch.t];
      const at::Tensor& m = ms[ch.t];
      const bool mask_is_bool = m.scalar_type() == at::kBool && x.scalar_type() != at::kBool;
      dispatch_dtype(x.scalar_type(), "mask_mul_", [&](auto tag) {
        using T = typename decltype(tag)::type;
        T* xp = x.data_ptr<T>() + ch.begin;
        const char* mp = static_cast<const char*>(m.data_ptr()) + ch.begin * m.element_size();
        mul_range(xp, mp, mask_is_bool, xp, ch.end - ch.begin);
      });
    }
  });
  for (int64_t i = 0; i < n; ++i) {
    if (!fast[i]) inputs[i].mul_(masks[i].to(inputs[i].scalar_type()));
  }
}

// Zeroes the units of x whose bit is 0. Clearing all bits of an element gives
// +0 / 0 / false for every dtype, so this works on raw words of the element size.
template <typename W>
void zero_by_bits(W* x, const uint8_t* p, int64_t begin, int64_t end) {
  // begin is a multiple of 8
  const int64_t full_end = begin + ((end - begin) / 8) * 8;
  for (int64_t i = begin; i < full_end; i += 8) {
    const uint8_t bits = p[i >> 3];
    if (bits == 0xFF) continue;
    for (int j = 0; j < 8; ++j) x[i + j] &= static_cast<W>(W(0) - W((bits >> j) & 1));
  }
  if (full_end < end) {
    const uint8_t bits = p[full_end >> 3];
    for (int64_t i = full_end; i < end; ++i) x[i] &= static_cast<W>(W(0) - W((bits >> (i - full_end)) & 1));
  }
}

void apply_packed_mask__cpu(at::TensorList inputs, at::TensorList packed) {
  check_apply_packed_mask__args(inputs, packed, CheckCpu{});
  const int64_t n = static_cast<int64_t>(inputs.size());
  const PackedMaskViews v = packed_mask_views(inputs, packed);
  const std::vector<at::Tensor>& xs = v.xs;
  const std::vector<at::Tensor>& ps = v.ps;
  std::vector<int64_t> numels(n);
  for (int64_t i = 0; i < n; ++i) numels[i] = xs[i].numel();
  const std::vector<Chunk> chunks = make_chunks(numels, kChunk);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const Chunk& ch = chunks[c];
      void* x = xs[ch.t].data_ptr();
      const uint8_t* p = ps[ch.t].data_ptr<uint8_t>();
      switch (xs[ch.t].element_size()) {
        case 1: zero_by_bits(static_cast<uint8_t*>(x), p, ch.begin, ch.end); break;
        case 2: zero_by_bits(static_cast<uint16_t*>(x), p, ch.begin, ch.end); break;
        case 4: zero_by_bits(static_cast<uint32_t*>(x), p, ch.begin, ch.end); break;
        case 8: zero_by_bits(static_cast<uint64_t*>(x), p, ch.begin, ch.end); break;
        default: {  // 16-byte elements (complex128): two words per element
          uint64_t* w = static_cast<uint64_t*>(x);
          for (int64_t i = ch.begin; i < ch.end; ++i) {
            const uint64_t keep = uint64_t(0) - uint64_t((p[i >> 3] >> (i & 7)) & 1);
            w[2 * i] &= keep;
            w[2 * i + 1] &= keep;
          }
        }
      }
    }
  });
  v.copy_back(inputs);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, CPU, m) {
  m.impl("mask_mul", &mask_mul_cpu);
  m.impl("mask_mul_", &mask_mul__cpu);
  m.impl("apply_packed_mask_", &apply_packed_mask__cpu);
}

}  // namespace fastprune
