// Mask <-> keep-byte conversion for kselect_ (csrc/cpu/kselect_cpu.cpp).
// Included more than once on purpose, with no include guard: at namespace
// scope for the direct path, and inside each instruction-set namespace of
// kselect_radix.h, so that these loops are compiled (vectorised) for the
// instruction set of the radix select that calls them.

// The loops below work on local __restrict copies of their pointers and
// counts: a store through uint8_t* may alias anything, so without them the
// compiler reloads every captured variable after each store and cannot vectorise.

// keep[j] = (unit j of the chunk is non-zero in `mask`), 0/1.
inline void load_keep(const at::Tensor& mask, bool packed, int64_t begin, int64_t n, uint8_t* keep) {
  uint8_t* __restrict k = keep;
  const int64_t len = n;
  if (packed) {
    const uint8_t* __restrict p = mask.data_ptr<uint8_t>() + begin / 8;
    for (int64_t j = 0; j < len; ++j) k[j] = (p[j >> 3] >> (j & 7)) & 1;
    return;
  }
  dispatch_dtype(mask.scalar_type(), "kselect_", [k, len, &mask, begin](auto tag) {
    using M = typename decltype(tag)::type;
    uint8_t* __restrict kk = k;  // locals, not the closure's members (see above)
    const int64_t nn = len;
    const M* __restrict m = mask.data_ptr<M>() + begin;
    for (int64_t j = 0; j < nn; ++j) kk[j] = nonzero<M>(m[j]);
  });
}

// Writes keep[0..n) (0/1) to `out` at units [begin, begin + n). In packed mode
// `keep` must hold zeros up to the next multiple of 8 (padding bits are 0).
inline void store_keep(const at::Tensor& out, bool packed, int64_t begin, int64_t n, const uint8_t* keep) {
  const uint8_t* __restrict k = keep;
  const int64_t len = n;
  if (packed) {
    uint8_t* __restrict p = out.data_ptr<uint8_t>() + begin / 8;
    const int64_t nbytes = (len + 7) / 8;
    for (int64_t b = 0; b < nbytes; ++b) {
      const uint8_t* q = k + 8 * b;
      p[b] = uint8_t(q[0] | (q[1] << 1) | (q[2] << 2) | (q[3] << 3) | (q[4] << 4) | (q[5] << 5) | (q[6] << 6) |
                     (q[7] << 7));
    }
    return;
  }
  dispatch_dtype(out.scalar_type(), "kselect_", [k, len, &out, begin](auto tag) {
    using O = typename decltype(tag)::type;
    O* __restrict o = out.data_ptr<O>() + begin;
    const uint8_t* __restrict kk = k;
    const int64_t nn = len;
    if constexpr (sizeof(O) == 1) {
      std::memcpy(o, kk, nn);  // bool/uint8/int8 0/1 have the same bytes
    } else {
      for (int64_t j = 0; j < nn; ++j) o[j] = zero_or_one<O>(kk[j]);
    }
  });
}


// applied[begin, begin + n) = values * keep (keep 0/1), in values' dtype: as
// torch's values * mask, x * 0 is -0.0 for negative x and NaN for inf or NaN.
inline void apply_keep(const at::Tensor& values, const at::Tensor& applied, int64_t begin, int64_t n,
                       const uint8_t* keep) {
  const uint8_t* __restrict k = keep;
  const int64_t len = n;
  dispatch_dtype(values.scalar_type(), "kselect_", [k, len, &values, &applied, begin](auto tag) {
    using V = typename decltype(tag)::type;
    const V* __restrict v = values.data_ptr<V>() + begin;
    V* __restrict a = applied.data_ptr<V>() + begin;
    const uint8_t* __restrict kk = k;
    const int64_t nn = len;
    if constexpr (std::is_same_v<V, bool>) {
      for (int64_t j = 0; j < nn; ++j) a[j] = v[j] && kk[j];
    } else if constexpr (std::is_same_v<V, at::Half> || std::is_same_v<V, at::BFloat16>) {
      for (int64_t j = 0; j < nn; ++j) a[j] = V(static_cast<float>(v[j]) * static_cast<float>(kk[j]));
    } else {
      for (int64_t j = 0; j < nn; ++j) a[j] = static_cast<V>(v[j] * static_cast<V>(kk[j]));
    }
  });
}
