// Mask <-> keep-byte conversion for kselect_ (csrc/cpu/kselect_cpu.cpp).
// Included more than once on purpose, with no include guard: at namespace
// scope for the direct path, and inside each instruction-set namespace of
// kselect_radix.h, so that these loops are compiled (vectorised) for the
// instruction set of the radix select that calls them.

// keep[j] = (unit j of the chunk is non-zero in `mask`), 0/1.
inline void load_keep(const at::Tensor& mask, bool packed, int64_t begin, int64_t n, uint8_t* keep) {
  if (packed) {
    const uint8_t* p = mask.data_ptr<uint8_t>() + begin / 8;
    for (int64_t j = 0; j < n; ++j) keep[j] = (p[j >> 3] >> (j & 7)) & 1;
    return;
  }
  dispatch_dtype(mask.scalar_type(), "kselect_", [&](auto tag) {
    using M = typename decltype(tag)::type;
    const M* m = mask.data_ptr<M>() + begin;
    for (int64_t j = 0; j < n; ++j) keep[j] = nonzero<M>(m[j]);
  });
}

// Writes keep[0..n) (0/1) to `out` at units [begin, begin + n). In packed mode
// `keep` must hold zeros up to the next multiple of 8 (padding bits are 0).
inline void store_keep(const at::Tensor& out, bool packed, int64_t begin, int64_t n, const uint8_t* keep) {
  if (packed) {
    uint8_t* p = out.data_ptr<uint8_t>() + begin / 8;
    const int64_t nbytes = (n + 7) / 8;
    for (int64_t b = 0; b < nbytes; ++b) {
      const uint8_t* q = keep + 8 * b;
      p[b] = uint8_t(q[0] | (q[1] << 1) | (q[2] << 2) | (q[3] << 3) | (q[4] << 4) | (q[5] << 5) | (q[6] << 6) |
                     (q[7] << 7));
    }
    return;
  }
  dispatch_dtype(out.scalar_type(), "kselect_", [&](auto tag) {
    using O = typename decltype(tag)::type;
    O* o = out.data_ptr<O>() + begin;
    if constexpr (sizeof(O) == 1) {
      std::memcpy(o, keep, n);  // bool/uint8/int8 0/1 have the same bytes
    } else {
      for (int64_t j = 0; j < n; ++j) o[j] = zero_or_one<O>(keep[j]);
    }
  });
}


// applied[begin, begin + n) = values * keep (keep 0/1), in values' dtype: as
// torch's values * mask, x * 0 is -0.0 for negative x and NaN for inf or NaN.
inline void apply_keep(const at::Tensor& values, const at::Tensor& applied, int64_t begin, int64_t n,
                       const uint8_t* keep) {
  dispatch_dtype(values.scalar_type(), "kselect_", [&](auto tag) {
    using V = typename decltype(tag)::type;
    const V* v = values.data_ptr<V>() + begin;
    V* a = applied.data_ptr<V>() + begin;
    if constexpr (std::is_same_v<V, bool>) {
      for (int64_t j = 0; j < n; ++j) a[j] = v[j] && keep[j];
    } else if constexpr (std::is_same_v<V, at::Half> || std::is_same_v<V, at::BFloat16>) {
      for (int64_t j = 0; j < n; ++j) a[j] = V(static_cast<float>(v[j]) * static_cast<float>(keep[j]));
    } else {
      for (int64_t j = 0; j < n; ++j) a[j] = static_cast<V>(v[j] * static_cast<V>(keep[j]));
    }
  });
}
