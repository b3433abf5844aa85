// Torch-free test of the fastprune CUDA kernels against simple host
// implementations of fastprune/ops/reference.py. Needs a GPU to run; compiled
// (and linked against the kernel objects) by .ci/compile_cuda.sh everywhere,
// and run (also under compute-sanitizer) by scripts/gpu_check.sh.
//
//   nvcc -std=c++17 -O2 -arch=sm_90 -Icsrc/cuda -o /tmp/fp_test tests/cuda/test_kernels_standalone.cu
//        csrc/cuda/kselect_cuda.cu csrc/cuda/mask_mul_cuda.cu csrc/cuda/channel_norms_cuda.cu
//   (one command line)
//   /tmp/fp_test            # prints one line per case, exit status 0 when all pass
//   compute-sanitizer --tool memcheck /tmp/fp_test --quick
//
// Random data includes ties, NaN, +-inf, -0.0 and integer extremes.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels.h"

using namespace fastprune::cuda;

namespace {

int g_failures = 0;
int g_cases = 0;
bool g_quick = false;

#define CUDA_OK(expr)                                                                              \
  do {                                                                                             \
    cudaError_t e_ = (expr);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, \
                   cudaGetErrorString(e_));                                                        \
      std::exit(2);                                                                                \
    }                                                                                              \
  } while (0)

void report(const std::string& name, bool ok, const std::string& detail = "") {
  ++g_cases;
  if (!ok) ++g_failures;
  std::printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.empty() ? "" : ": ", detail.c_str());
}

const char* dtype_name(int32_t dt) {
  static const char* names[] = {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"};
  return dtype_valid(dt) ? names[dt] : "?";
}

// ---------------------------------------------------------------------------
// Host tensors of any dtype (raw bytes) and conversions
// ---------------------------------------------------------------------------

uint16_t f2bf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float bf2f(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t f2h(float f) {
  const __half_raw r = static_cast<__half_raw>(__float2half_rn(f));
  return r.x;
}
float h2f(uint16_t b) {
  __half_raw r;
  r.x = b;
  return __half2float(__half(r));
}

struct HostTensor {
  int32_t dtype = kFloat;
  int64_t numel = 0;
  std::vector<uint8_t> bytes;

  HostTensor() = default;
  HostTensor(int32_t dt, int64_t n) : dtype(dt), numel(n), bytes(static_cast<size_t>(n) * dtype_size(dt) + 16, 0) {}

  template <typename T>
  T raw(int64_t i) const {
    T v;
    std::memcpy(&v, bytes.data() + i * sizeof(T), sizeof(T));
    return v;
  }
  template <typename T>
  void set_raw(int64_t i, T v) {
    std::memcpy(bytes.data() + i * sizeof(T), &v, sizeof(T));
  }
  bool is_int() const { return !dtype_is_float(dtype); }
  int64_t get_int(int64_t i) const {
    switch (dtype) {
      case kBool: return raw<uint8_t>(i) != 0;
      case kUInt8: return raw<uint8_t>(i);
      case kInt8: return raw<int8_t>(i);
      case kInt16: return raw<int16_t>(i);
      case kInt32: return raw<int32_t>(i);
      case kInt64: return raw<int64_t>(i);
      default: return static_cast<int64_t>(get(i));
    }
  }
  double get(int64_t i) const {
    switch (dtype) {
      case kHalf: return h2f(raw<uint16_t>(i));
      case kBFloat16: return bf2f(raw<uint16_t>(i));
      case kFloat: return raw<float>(i);
      case kDouble: return raw<double>(i);
      default: return static_cast<double>(get_int(i));
    }
  }
  // Stores v converted the way torch converts a double to this dtype
  // (floats round to nearest; integers truncate).
  void set(int64_t i, double v) {
    switch (dtype) {
      case kBool: set_raw<uint8_t>(i, v != 0 ? 1 : 0); break;
      case kUInt8: set_raw<uint8_t>(i, static_cast<uint8_t>(static_cast<int64_t>(v))); break;
      case kInt8: set_raw<int8_t>(i, static_cast<int8_t>(static_cast<int64_t>(v))); break;
      case kInt16: set_raw<int16_t>(i, static_cast<int16_t>(static_cast<int64_t>(v))); break;
      case kInt32: set_raw<int32_t>(i, static_cast<int32_t>(static_cast<int64_t>(v))); break;
      case kInt64: set_raw<int64_t>(i, static_cast<int64_t>(v)); break;
      case kHalf: set_raw<uint16_t>(i, f2h(static_cast<float>(v))); break;
      case kBFloat16: set_raw<uint16_t>(i, f2bf(static_cast<float>(v))); break;
      case kFloat: set_raw<float>(i, static_cast<float>(v)); break;
      case kDouble: set_raw<double>(i, v); break;
    }
  }
  void set_int(int64_t i, int64_t v) {
    switch (dtype) {
      case kInt64: set_raw<int64_t>(i, v); break;
      default: set(i, static_cast<double>(v)); break;
    }
  }
};

// Device copy, optionally placed `offset_elems` elements past an aligned
// allocation so that the kernels' scalar (unaligned) paths are exercised.
struct DeviceBuf {
  void* base = nullptr;
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuf() = default;
  DeviceBuf(const HostTensor& h, int offset_elems = 0) { upload(h, offset_elems); }
  void upload(const HostTensor& h, int offset_elems = 0) {
    const size_t es = dtype_size(h.dtype);
    bytes = static_cast<size_t>(h.numel) * es;
    CUDA_OK(cudaMalloc(&base, bytes + es * offset_elems + 16));
    ptr = static_cast<char*>(base) + es * offset_elems;
    if (bytes) CUDA_OK(cudaMemcpy(ptr, h.bytes.data(), bytes, cudaMemcpyHostToDevice));
  }
  void download(HostTensor& h) const {
    if (bytes) CUDA_OK(cudaMemcpy(h.bytes.data(), ptr, bytes, cudaMemcpyDeviceToHost));
  }
  ~DeviceBuf() {
    if (base) cudaFree(base);
  }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
};

std::mt19937_64 rng(12345);

double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng); }
int64_t randint(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }

// Random scores: a few distinct magnitudes (many ties), signs, zeros of both
// signs, and (floats) NaN / +-inf; integers include their extremes.
HostTensor random_scores(int32_t dt, int64_t n, int distinct, bool specials) {
  HostTensor h(dt, n);
  std::vector<double> pool(distinct);
  for (auto& v : pool) v = std::ldexp(uniform() + 0.5, static_cast<int>(randint(-6, 6)));
  for (int64_t i = 0; i < n; ++i) {
    const double r = uniform();
    if (dtype_is_float(dt)) {
      double v = pool[randint(0, distinct - 1)] * (uniform() < 0.5 ? -1 : 1);
      if (specials) {
        if (r < 0.01) v = std::numeric_limits<double>::quiet_NaN();
        else if (r < 0.02) v = std::numeric_limits<double>::infinity();
        else if (r < 0.03) v = -std::numeric_limits<double>::infinity();
        else if (r < 0.05) v = 0.0;
        else if (r < 0.07) v = -0.0;
      }
      h.set(i, v);
      if (specials && r < 0.005 && dt == kFloat) {
        // A NaN with a different payload and the sign bit set.
        h.set_raw<uint32_t>(i, 0xFFC01234u);
      }
    } else if (dt == kBool) {
      h.set(i, r < 0.5 ? 1.0 : 0.0);
    } else {
      int64_t lo = 0, hi = 0;
      switch (dt) {
        case kUInt8: lo = 0; hi = 255; break;
        case kInt8: lo = -128; hi = 127; break;
        case kInt16: lo = -32768; hi = 32767; break;
        case kInt32: lo = INT32_MIN; hi = INT32_MAX; break;
        default: lo = INT64_MIN; hi = INT64_MAX; break;
      }
      int64_t v = randint(-distinct, distinct);
      if (specials && r < 0.02) v = lo;
      else if (specials && r < 0.04) v = hi;
      else if (specials && r < 0.05) v = (dt == kInt64) ? (int64_t(1) << 60) + 1 : hi;
      if (dt == kUInt8 && v < 0) v = -v;
      h.set_int(i, v);
    }
  }
  return h;
}

// ---------------------------------------------------------------------------
// k-selection
// ---------------------------------------------------------------------------

// Ranking key of the reference: int64 when every score is integer/bool, else
// float64 with NaN above everything (all NaNs equal).
struct RefKey {
  bool nan;
  double d;
  uint64_t u;
};

struct KCase {
  std::string name;
  std::vector<HostTensor> scores;
  std::vector<HostTensor> masks;  // numel == 0 and dtype == -1: none
  std::vector<bool> has_mask;
  std::vector<int32_t> out_dtypes;
  int64_t k = 0;
  double fraction = -1.0;  // >= 0: select nearbyint(fraction * selectable) instead of k
  bool largest = false;
  bool exclude_masked = true;
  bool packed = false;
  bool alias_out_mask = false;  // out[i] is masks[i] (same dtype and buffer)
  int misalign = 0;             // element offset of every device buffer
};

uint64_t int_key_host(int64_t x) {
  if (x == INT64_MIN) return static_cast<uint64_t>(INT64_MAX);
  return static_cast<uint64_t>(x < 0 ? -x : x);
}

std::vector<std::vector<uint8_t>> reference_kselect(const KCase& c, int64_t* selectable) {
  bool all_int = true;
  for (const auto& s : c.scores) all_int = all_int && s.is_int();
  std::vector<RefKey> keys;
  std::vector<uint8_t> elig;
  for (size_t t = 0; t < c.scores.size(); ++t) {
    const HostTensor& s = c.scores[t];
    for (int64_t i = 0; i < s.numel; ++i) {
      RefKey k{};
      if (all_int) {
        k.u = int_key_host(s.get_int(i));
      } else if (s.is_int()) {
        k.d = static_cast<double>(static_cast<int64_t>(int_key_host(s.get_int(i))));
      } else {
        const double v = s.get(i);
        k.nan = std::isnan(v);
        k.d = std::fabs(v);
      }
      keys.push_back(k);
      uint8_t e = 1;
      if (c.has_mask[t]) {
        if (c.packed) {
          e = (c.masks[t].raw<uint8_t>(i / 8) >> (i % 8)) & 1;
        } else {
          e = c.masks[t].dtype == kHalf || c.masks[t].dtype == kBFloat16
                  ? ((c.masks[t].raw<uint16_t>(i) & 0x7FFF) != 0)
                  : (std::isnan(c.masks[t].get(i)) || c.masks[t].get(i) != 0.0 || c.masks[t].get_int(i) != 0);
        }
      }
      elig.push_back(e);
    }
  }
  auto less = [&](int64_t a, int64_t b) {
    const RefKey &x = keys[a], &y = keys[b];
    if (all_int) return x.u < y.u;
    if (x.nan || y.nan) return !x.nan && y.nan;
    return x.d < y.d;
  };
  std::vector<int64_t> cand;
  for (int64_t i = 0; i < static_cast<int64_t>(keys.size()); ++i)
    if (!c.exclude_masked || elig[i]) cand.push_back(i);
  *selectable = static_cast<int64_t>(cand.size());
  if (c.largest) {
    std::stable_sort(cand.begin(), cand.end(), [&](int64_t a, int64_t b) { return less(b, a); });
  } else {
    std::stable_sort(cand.begin(), cand.end(), less);
  }
  std::vector<uint8_t> keep = elig;
  const int64_t k =
      c.fraction >= 0.0 ? static_cast<int64_t>(std::nearbyint(c.fraction * static_cast<double>(cand.size()))) : c.k;
  for (int64_t j = 0; j < k && j < static_cast<int64_t>(cand.size()); ++j) keep[cand[j]] = 0;
  std::vector<std::vector<uint8_t>> out;
  int64_t off = 0;
  for (const auto& s : c.scores) {
    out.emplace_back(keep.begin() + off, keep.begin() + off + s.numel);
    off += s.numel;
  }
  return out;
}

void run_kselect_case(const KCase& c, bool expect_out_of_range = false) {
  const int n = static_cast<int>(c.scores.size());
  int64_t selectable = 0;
  const auto expect = reference_kselect(c, &selectable);
  std::vector<DeviceBuf> dscore(n), dmask(n), dout(n);
  std::vector<HostTensor> outs(n);
  std::vector<KSelectTensor> desc(n);
  bool any_mask = false;
  int64_t total = 0;
  for (int i = 0; i < n; ++i) {
    const HostTensor& s = c.scores[i];
    total += s.numel;
    dscore[i].upload(s, c.misalign);
    const int64_t out_numel = c.packed ? (s.numel + 7) / 8 : s.numel;
    const int32_t odt = c.packed ? kUInt8 : c.out_dtypes[i];
    outs[i] = HostTensor(odt, out_numel);
    for (auto& b : outs[i].bytes) b = 0xAB;  // garbage the kernel must overwrite
    if (c.has_mask[i]) {
      any_mask = true;
      dmask[i].upload(c.masks[i], c.misalign);
    }
    if (c.alias_out_mask && c.has_mask[i]) {
      outs[i] = HostTensor(c.masks[i].dtype, c.masks[i].numel);
    } else {
      dout[i].upload(outs[i], c.misalign);
    }
    KSelectTensor& d = desc[i];
    d.score = dscore[i].ptr;
    d.score_dtype = s.dtype;
    d.numel = s.numel;
    d.mask = c.has_mask[i] ? dmask[i].ptr : nullptr;
    d.mask_dtype = c.has_mask[i] ? c.masks[i].dtype : kBool;
    d.out = (c.alias_out_mask && c.has_mask[i]) ? dmask[i].ptr : dout[i].ptr;
    d.out_dtype = (c.alias_out_mask && c.has_mask[i]) ? c.masks[i].dtype : odt;
    d.reserved = 0;
  }
  size_t bytes = 0;
  CUDA_OK(kselect_workspace_bytes(desc.data(), n, &bytes));
  void* ws = nullptr;
  CUDA_OK(cudaMalloc(&ws, bytes + 1));
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));
  const int64_t known = (!c.exclude_masked || !any_mask) ? total : -1;
  // As the torch wrapper: a fraction is resolved on the host when every unit is selectable.
  int64_t k = c.k;
  double fraction = c.fraction;
  if (fraction >= 0.0) {
    k = known >= 0 ? static_cast<int64_t>(std::nearbyint(fraction * static_cast<double>(known))) : -1;
    if (known >= 0) fraction = -1.0;
  }
  const KSelectStatus st =
      kselect_cuda(desc.data(), n, k, fraction, c.largest, c.exclude_masked, c.packed, known, ws, bytes, stream);
  CUDA_OK(st.error);
  CUDA_OK(cudaStreamSynchronize(stream));
  CUDA_OK(cudaStreamDestroy(stream));
  CUDA_OK(cudaFree(ws));
  if (expect_out_of_range) {
    report(c.name, st.k_out_of_range && st.selectable == selectable,
           "k_out_of_range=" + std::to_string(st.k_out_of_range) + " selectable=" + std::to_string(st.selectable) +
               " expected " + std::to_string(selectable));
    return;
  }
  if (st.k_out_of_range) {
    report(c.name, false, "unexpected k_out_of_range, selectable=" + std::to_string(st.selectable));
    return;
  }
  std::string detail;
  bool ok = true;
  int64_t mism = 0, first_t = -1, first_i = -1;
  for (int t = 0; t < n && ok; ++t) {
    HostTensor got = outs[t];
    if (c.alias_out_mask && c.has_mask[t]) {
      dmask[t].download(got);
    } else {
      dout[t].download(got);
    }
    const int64_t numel = c.scores[t].numel;
    for (int64_t i = 0; i < numel; ++i) {
      uint8_t g;
      if (c.packed) {
        g = (got.raw<uint8_t>(i / 8) >> (i % 8)) & 1;
      } else {
        const double v = got.get(i);
        g = v != 0.0 ? 1 : 0;
        if (!(v == 0.0 || v == 1.0)) {
          ++mism;
          if (first_t < 0) first_t = t, first_i = i;
          continue;
        }
      }
      if (g != expect[t][i]) {
        ++mism;
        if (first_t < 0) first_t = t, first_i = i;
      }
    }
    if (c.packed && numel % 8) {
      const uint8_t last = got.raw<uint8_t>(numel / 8);
      if (last >> (numel % 8)) {
        ok = false;
        detail = "padding bits not zero";
      }
    }
  }
  if (mism) {
    ok = false;
    detail = std::to_string(mism) + " mismatches, first at tensor " + std::to_string(first_t) + " unit " +
             std::to_string(first_i);
  }
  report(c.name, ok, detail);
}

KCase make_kcase(const std::string& name, const std::vector<int32_t>& dts, const std::vector<int64_t>& sizes,
                 int distinct, bool specials, double frac, bool largest, int mask_dtype /* -1 none */,
                 bool exclude_masked, bool packed, int32_t out_dt = -1) {
  KCase c;
  c.name = name;
  c.largest = largest;
  c.exclude_masked = exclude_masked;
  c.packed = packed;
  int64_t total = 0, eligible = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const int32_t dt = dts[i % dts.size()];
    c.scores.push_back(random_scores(dt, sizes[i], distinct, specials));
    c.out_dtypes.push_back(out_dt < 0 ? dt : out_dt);
    total += sizes[i];
    const bool has = mask_dtype >= 0 && (i % 3 != 2);  // some tensors without mask
    c.has_mask.push_back(has);
    if (has) {
      HostTensor m = packed ? HostTensor(kUInt8, (sizes[i] + 7) / 8) : HostTensor(mask_dtype, sizes[i]);
      for (int64_t u = 0; u < sizes[i]; ++u) {
        const bool keep = uniform() < 0.7;
        eligible += keep;
        if (packed) {
          if (keep) m.set_raw<uint8_t>(u / 8, static_cast<uint8_t>(m.raw<uint8_t>(u / 8) | (1u << (u % 8))));
        } else if (keep) {
          // Non-zero includes NaN and negative values; zero includes -0.0.
          const double r = uniform();
          m.set(u, dtype_is_float(mask_dtype) && r < 0.1 ? std::numeric_limits<double>::quiet_NaN()
                   : r < 0.2 && mask_dtype != kBool && mask_dtype != kUInt8 ? -1.0
                                                                           : 1.0);
        } else {
          m.set(u, dtype_is_float(mask_dtype) && uniform() < 0.5 ? -0.0 : 0.0);
        }
      }
      c.masks.push_back(m);
    } else {
      eligible += sizes[i];
      c.masks.push_back(HostTensor());
    }
  }
  const int64_t pool = exclude_masked ? eligible : total;
  c.k = static_cast<int64_t>(frac * static_cast<double>(pool));
  return c;
}

void test_kselect() {
  const std::vector<int64_t> edge = {0, 1, 7, 8, 9, 2047, 2048, 2049, 16383, 16384, 16385, 40000};
  const int64_t big = g_quick ? 70000 : 600000;
  const std::vector<int32_t> float_types = {kFloat, kHalf, kBFloat16, kDouble};
  for (int32_t dt : float_types) {
    for (bool largest : {false, true}) {
      const std::string tag = std::string(dtype_name(dt)) + (largest ? " largest" : " smallest");
      run_kselect_case(make_kcase("kselect " + tag + " one tensor, distinct-ish", {dt}, {big}, 100000, true, 0.5, largest, -1, true, false));
      run_kselect_case(make_kcase("kselect " + tag + " heavy ties across chunks", {dt}, {big}, 5, false, 0.37, largest, -1, true, false));
      run_kselect_case(make_kcase("kselect " + tag + " edge sizes, bool masks", {dt}, edge, 50, true, 0.3, largest, kBool, true, false, kBool));
      run_kselect_case(make_kcase("kselect " + tag + " packed masks", {dt}, edge, 50, true, 0.6, largest, kUInt8, true, true));
    }
  }
  // Mixed dtypes pick a wider key space.
  run_kselect_case(make_kcase("kselect fp16+bf16 (f32 keys)", {kHalf, kBFloat16}, {5000, 7000, 30000}, 40, true, 0.4, false, -1, true, false));
  run_kselect_case(make_kcase("kselect fp32+int32 (f64 keys)", {kFloat, kInt32}, {5000, 7000, 30000}, 40, true, 0.4, false, -1, true, false));
  run_kselect_case(make_kcase("kselect fp16+fp64", {kHalf, kDouble}, {5000, 20000}, 40, true, 0.4, true, -1, true, false));
  // Integer scores, with extremes (INT64_MIN ranks with INT64_MAX).
  for (int32_t dt : {kBool, kUInt8, kInt8, kInt16, kInt32, kInt64}) {
    run_kselect_case(make_kcase(std::string("kselect ") + dtype_name(dt) + " scores", {dt}, {3000, 50000}, 100, true, 0.45, false, -1, true, false, kFloat));
    run_kselect_case(make_kcase(std::string("kselect ") + dtype_name(dt) + " scores largest", {dt}, {3000, 50000}, 100, true, 0.45, true, kInt8, true, false, kInt64));
  }
  // Output and mask dtypes.
  for (int32_t odt : {kBool, kUInt8, kInt8, kInt16, kInt32, kInt64, kHalf, kBFloat16, kFloat, kDouble}) {
    run_kselect_case(make_kcase(std::string("kselect out dtype ") + dtype_name(odt), {kFloat}, {1000, 17}, 30, true, 0.5, false, odt, true, false, odt));
  }
  // exclude_masked = false: masks only combine.
  run_kselect_case(make_kcase("kselect exclude_masked=false", {kFloat}, edge, 30, true, 0.5, false, kFloat, false, false));
  run_kselect_case(make_kcase("kselect exclude_masked=false packed", {kBFloat16}, edge, 30, true, 0.5, false, kUInt8, false, true));
  // k as a fraction of the selectable units, counted by the first histogram pass.
  for (double frac : {0.0, 0.3, 0.5, 1.0}) {
    KCase f = make_kcase("kselect fraction " + std::to_string(frac) + ", float masks", {kFloat}, edge, 30, true, 0.5,
                         false, kFloat, true, false);
    f.fraction = frac;
    run_kselect_case(f);
    KCase p = make_kcase("kselect fraction " + std::to_string(frac) + ", packed", {kHalf}, edge, 30, true, 0.5, true,
                         kUInt8, true, true);
    p.fraction = frac;
    run_kselect_case(p);
  }
  KCase fn = make_kcase("kselect fraction, no masks", {kBFloat16}, edge, 30, false, 0.5, false, -1, true, false);
  fn.fraction = 0.25;
  run_kselect_case(fn);
  // k = 0 and k = everything.
  run_kselect_case(make_kcase("kselect k=0", {kFloat}, edge, 30, true, 0.0, false, kBool, true, false));
  run_kselect_case(make_kcase("kselect k=all", {kFloat}, edge, 30, true, 1.0, false, kBool, true, false));
  run_kselect_case(make_kcase("kselect k=all packed", {kHalf}, edge, 30, true, 1.0, true, kUInt8, true, true));
  // out aliases the mask.
  {
    KCase c = make_kcase("kselect out aliases mask (float)", {kFloat}, edge, 30, true, 0.5, false, kFloat, true, false);
    c.alias_out_mask = true;
    run_kselect_case(c);
    KCase p = make_kcase("kselect out aliases mask (packed)", {kBFloat16}, edge, 30, true, 0.5, false, kUInt8, true, true);
    p.alias_out_mask = true;
    run_kselect_case(p);
  }
  // Unaligned buffers: scalar paths.
  {
    KCase c = make_kcase("kselect misaligned buffers", {kHalf, kFloat}, {1000, 20001, 9}, 30, true, 0.5, false, kHalf, true, false, kBFloat16);
    c.misalign = 1;
    run_kselect_case(c);
  }
  // k larger than the selectable units: reported, nothing written.
  {
    KCase c = make_kcase("kselect k > selectable", {kFloat}, {1000, 3000}, 30, true, 1.0, false, kBool, true, false);
    int64_t sel = 0;
    (void)reference_kselect(c, &sel);
    c.k = sel + 1;
    run_kselect_case(c, true);
  }
  // Many tensors (pointer table) and all-equal data.
  {
    std::vector<int64_t> sizes;
    for (int i = 0; i < 300; ++i) sizes.push_back(randint(0, 3000));
    run_kselect_case(make_kcase("kselect 300 tensors", {kBFloat16, kHalf, kFloat}, sizes, 20, true, 0.5, false, kBool, true, false));
    KCase c = make_kcase("kselect all equal", {kFloat}, {big, 12345}, 1, false, 0.5, false, -1, true, false);
    for (auto& s : c.scores)
      for (int64_t i = 0; i < s.numel; ++i) s.set(i, 0.25);
    run_kselect_case(c);
  }
}

// ---------------------------------------------------------------------------
// mask_mul / apply_packed_mask
// ---------------------------------------------------------------------------

// Host x * mask.to(x.dtype); NaN compared by NaN-ness.
bool mul_matches(const HostTensor& x, const HostTensor& m, const HostTensor& got, int64_t* bad) {
  HostTensor mc(x.dtype, x.numel);
  for (int64_t i = 0; i < x.numel; ++i) {
    if (m.dtype == kHalf || m.dtype == kBFloat16 || m.dtype == kFloat || m.dtype == kDouble) {
      if (x.is_int()) {
        mc.set(i, x.dtype == kBool ? (m.get(i) != 0 || std::isnan(m.get(i))) : std::trunc(m.get(i)));
      } else {
        mc.set(i, m.get(i));
      }
    } else {
      mc.set_int(i, m.get_int(i));
    }
  }
  for (int64_t i = 0; i < x.numel; ++i) {
    bool ok;
    if (x.dtype == kBool) {
      ok = got.get_int(i) == ((x.get_int(i) != 0 && mc.get_int(i) != 0) ? 1 : 0);
    } else if (x.is_int()) {
      const uint64_t prod = static_cast<uint64_t>(x.get_int(i)) * static_cast<uint64_t>(mc.get_int(i));
      HostTensor tmp(x.dtype, 1);
      tmp.set_int(0, static_cast<int64_t>(prod));
      ok = std::memcmp(tmp.bytes.data(), got.bytes.data() + i * dtype_size(x.dtype), dtype_size(x.dtype)) == 0;
    } else {
      HostTensor tmp(x.dtype, 1);
      if (x.dtype == kDouble) {
        tmp.set(0, x.get(i) * mc.get(i));
      } else {
        tmp.set(0, static_cast<double>(static_cast<float>(x.get(i)) * static_cast<float>(mc.get(i))));
      }
      const double a = tmp.get(0), b = got.get(i);
      ok = (std::isnan(a) && std::isnan(b)) ||
           std::memcmp(tmp.bytes.data(), got.bytes.data() + i * dtype_size(x.dtype), dtype_size(x.dtype)) == 0;
    }
    if (!ok) {
      *bad = i;
      return false;
    }
  }
  return true;
}

// NaN masks only where converting NaN to the input dtype is defined (float or
// bool inputs); float -> integer conversion of NaN is undefined behaviour.
HostTensor random_mask(int32_t dt, int64_t n, bool allow_nan) {
  HostTensor m(dt, n);
  for (int64_t i = 0; i < n; ++i) {
    const double r = uniform();
    if (dtype_is_float(dt)) {
      m.set(i, r < 0.4 ? 0.0 : r < 0.5 ? -0.0 : r < 0.9 ? 1.0 : (r < 0.95 || !allow_nan) ? 0.5 : std::numeric_limits<double>::quiet_NaN());
    } else {
      m.set_int(i, r < 0.5 ? 0 : r < 0.9 ? 1 : (dt == kBool ? 1 : 3));
    }
  }
  return m;
}

void test_mask_mul() {
  const std::vector<int32_t> in_types = {kFloat, kHalf, kBFloat16, kDouble, kInt32, kInt64, kInt8, kUInt8, kBool};
  const std::vector<int32_t> mask_types = {kBool, kUInt8, kFloat, kHalf, kDouble, kInt64};
  // Single tensor (inline table) and many tensors (device table), aligned and not.
  for (int32_t dt : in_types) {
    for (int32_t mt : mask_types) {
      for (int ntens : {1, 11}) {
        for (int mis : {0, 1}) {
          if (g_quick && (ntens == 11 || mis == 1) && dt != kFloat) continue;
          std::vector<HostTensor> xs, ms, outs;
          std::vector<DeviceBuf> dx(ntens), dm(ntens), dout(ntens);
          std::vector<MaskMulTensor> desc(ntens);
          const bool in_place = (ntens > 1);
          for (int t = 0; t < ntens; ++t) {
            const int64_t n = t == 0 ? 70001 : randint(0, 5000);
            xs.push_back(random_scores(dt, n, 1000, true));
            ms.push_back(random_mask(mt, n, dtype_is_float(dt) || dt == kBool));
            outs.push_back(HostTensor(dt, n));
            dx[t].upload(xs[t], mis);
            dm[t].upload(ms[t], mis);
            if (!in_place) dout[t].upload(outs[t], mis);
            desc[t] = MaskMulTensor{dx[t].ptr, dm[t].ptr, in_place ? dx[t].ptr : dout[t].ptr, n, dt, mt};
          }
          const size_t bytes = mask_mul_workspace_bytes(ntens);
          void* ws = nullptr;
          if (bytes) CUDA_OK(cudaMalloc(&ws, bytes));
          CUDA_OK(mask_mul_cuda(desc.data(), ntens, ws, bytes, 0));
          CUDA_OK(cudaDeviceSynchronize());
          if (ws) CUDA_OK(cudaFree(ws));
          bool ok = true;
          std::string detail;
          for (int t = 0; t < ntens && ok; ++t) {
            HostTensor got(dt, xs[t].numel);
            (in_place ? dx[t] : dout[t]).download(got);
            int64_t bad = -1;
            if (!mul_matches(xs[t], ms[t], got, &bad)) {
              ok = false;
              detail = "tensor " + std::to_string(t) + " element " + std::to_string(bad) + ": x=" +
                       std::to_string(xs[t].get(bad)) + " m=" + std::to_string(ms[t].get(bad)) + " got " +
                       std::to_string(got.get(bad));
            }
          }
          report(std::string("mask_mul ") + dtype_name(dt) + " x " + dtype_name(mt) + (in_place ? " in place x11" : "") +
                     (mis ? " misaligned" : ""),
                 ok, detail);
        }
      }
    }
  }
}

void test_packed() {
  for (int es : {1, 2, 4, 8, 16}) {
    for (int ntens : {3, 12}) {
      for (int mis : {0, 1}) {
        if (es == 16 && mis) continue;  // 16-byte elements are always 16-byte aligned in torch
        std::vector<std::vector<uint8_t>> xs, bits;
        std::vector<void*> dxb(ntens), dbits(ntens);
        std::vector<PackedMaskTensor> desc(ntens);
        std::vector<int64_t> ns(ntens);
        for (int t = 0; t < ntens; ++t) {
          const int64_t n = t == 0 ? 65536 * 2 + 13 : randint(0, 4000);
          ns[t] = n;
          std::vector<uint8_t> x(static_cast<size_t>(n) * es);
          for (auto& b : x) b = static_cast<uint8_t>(randint(0, 255));
          std::vector<uint8_t> p(static_cast<size_t>((n + 7) / 8));
          for (auto& b : p) {
            const double r = uniform();
            b = r < 0.2 ? 0x00 : r < 0.4 ? 0xFF : static_cast<uint8_t>(randint(0, 255));
          }
          xs.push_back(x);
          bits.push_back(p);
          CUDA_OK(cudaMalloc(&dxb[t], x.size() + es * mis + 16));
          CUDA_OK(cudaMalloc(&dbits[t], p.size() + 1));
          char* dptr = static_cast<char*>(dxb[t]) + es * mis;
          if (!x.empty()) CUDA_OK(cudaMemcpy(dptr, x.data(), x.size(), cudaMemcpyHostToDevice));
          if (!p.empty()) CUDA_OK(cudaMemcpy(dbits[t], p.data(), p.size(), cudaMemcpyHostToDevice));
          desc[t] = PackedMaskTensor{dptr, static_cast<const uint8_t*>(dbits[t]), n, es, 0};
        }
        const size_t bytes = apply_packed_mask_workspace_bytes(ntens);
        void* ws = nullptr;
        if (bytes) CUDA_OK(cudaMalloc(&ws, bytes));
        CUDA_OK(apply_packed_mask_cuda(desc.data(), ntens, ws, bytes, 0));
        CUDA_OK(cudaDeviceSynchronize());
        if (ws) CUDA_OK(cudaFree(ws));
        bool ok = true;
        std::string detail;
        for (int t = 0; t < ntens; ++t) {
          std::vector<uint8_t> got(xs[t].size());
          if (!got.empty())
            CUDA_OK(cudaMemcpy(got.data(), static_cast<char*>(dxb[t]) + es * mis, got.size(), cudaMemcpyDeviceToHost));
          for (int64_t i = 0; i < ns[t] && ok; ++i) {
            const bool keep = (bits[t][i / 8] >> (i % 8)) & 1;
            for (int b = 0; b < es; ++b) {
              const uint8_t want = keep ? xs[t][i * es + b] : 0;
              if (got[i * es + b] != want) {
                ok = false;
                detail = "tensor " + std::to_string(t) + " element " + std::to_string(i);
                break;
              }
            }
          }
          cudaFree(dxb[t]);
          cudaFree(dbits[t]);
        }
        report("apply_packed_mask elem_size " + std::to_string(es) + " x" + std::to_string(ntens) +
                   (mis ? " misaligned" : ""),
               ok, detail);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// channel_norms
// ---------------------------------------------------------------------------

double host_norm(const HostTensor& x, int64_t A, int64_t C, int64_t B, int64_t c, double p) {
  const bool is_max = std::isinf(p) && p > 0, is_min = std::isinf(p) && p < 0;
  double acc = is_min ? INFINITY : 0.0;
  bool nan = false;
  for (int64_t a = 0; a < A; ++a) {
    for (int64_t b = 0; b < B; ++b) {
      const double v = x.get((a * C + c) * B + b);
      if (std::isnan(v)) nan = true;
      const double av = std::fabs(v);
      if (p == 0) acc += (v != 0 || std::isnan(v)) ? 1 : 0;
      else if (is_max) acc = std::max(acc, av);
      else if (is_min) acc = std::min(acc, av);
      else if (p == 1) acc += av;
      else if (p == 2) acc += av * av;
      else acc += std::pow(av, p);
    }
  }
  if (nan && p != 0) return NAN;
  if (p == 2) return std::sqrt(acc);
  if (p != 0 && p != 1 && !std::isinf(p)) return std::pow(acc, 1.0 / p);
  return acc;
}

void test_channel_norms() {
  struct Shape {
    int64_t A, C, B;
  };
  const std::vector<Shape> shapes = {{1, 5, 1000},  {300, 7, 1},  {3, 4, 5},    {1, 1, 100000}, {1000, 3, 2},
                                     {2, 3, 64},    {1, 10, 1},   {64, 33, 63}, {5, 2, 70000},  {4096, 2, 1},
                                     {1, 2000, 64}, {17, 1, 17}};
  const std::vector<double> ps = {0.0, 1.0, 2.0, INFINITY, -INFINITY, 3.0, 0.5, -1.0};
  const std::vector<int32_t> dts = {kFloat, kHalf, kBFloat16, kDouble, kInt32, kBool};
  for (int32_t dt : dts) {
    for (const Shape& s : shapes) {
      for (bool with_nan : {false, true}) {
        if (with_nan && !dtype_is_float(dt)) continue;
        const int64_t n = s.A * s.C * s.B;
        HostTensor x(dt, n);
        for (int64_t i = 0; i < n; ++i) {
          if (dtype_is_float(dt)) {
            const double r = uniform();
            x.set(i, r < 0.05 ? 0.0 : (uniform() * 4 - 2));
          } else {
            x.set_int(i, dt == kBool ? randint(0, 1) : randint(-50, 50));
          }
        }
        if (with_nan) x.set(n / 2, NAN);
        DeviceBuf dx(x);
        const int32_t acc_dt = dt == kDouble ? kDouble : kFloat;
        HostTensor out(acc_dt, s.C);
        DeviceBuf dout(out);
        for (double p : ps) {
          const size_t bytes = channel_norms_workspace_bytes(s.A, s.C, s.B, dt);
          void* ws = nullptr;
          if (bytes) CUDA_OK(cudaMalloc(&ws, bytes));
          CUDA_OK(channel_norms_cuda(dx.ptr, dt, s.A, s.C, s.B, p, dout.ptr, ws, bytes, 0));
          CUDA_OK(cudaDeviceSynchronize());
          if (ws) CUDA_OK(cudaFree(ws));
          dout.download(out);
          bool ok = true;
          std::string detail;
          const double tol = dt == kDouble ? 1e-10 : 2e-4;
          for (int64_t c = 0; c < s.C && ok; ++c) {
            const double want = host_norm(x, s.A, s.C, s.B, c, p);
            const double got = out.get(c);
            const bool same = (std::isnan(want) && std::isnan(got)) || (std::isinf(want) && want == got) ||
                              std::fabs(got - want) <= tol * std::max(1.0, std::fabs(want));
            if (!same) {
              ok = false;
              detail = "channel " + std::to_string(c) + ": got " + std::to_string(got) + " want " + std::to_string(want);
            }
          }
          // Determinism: a second run gives the same bits.
          if (ok) {
            HostTensor again(acc_dt, s.C);
            void* ws2 = nullptr;
            if (bytes) CUDA_OK(cudaMalloc(&ws2, bytes));
            CUDA_OK(channel_norms_cuda(dx.ptr, dt, s.A, s.C, s.B, p, dout.ptr, ws2, bytes, 0));
            CUDA_OK(cudaDeviceSynchronize());
            if (ws2) CUDA_OK(cudaFree(ws2));
            dout.download(again);
            if (std::memcmp(again.bytes.data(), out.bytes.data(), s.C * dtype_size(acc_dt)) != 0) {
              ok = false;
              detail = "not deterministic";
            }
          }
          char name[160];
          std::snprintf(name, sizeof(name), "channel_norms %s [%lld,%lld,%lld] p=%g%s", dtype_name(dt),
                        static_cast<long long>(s.A), static_cast<long long>(s.C), static_cast<long long>(s.B), p,
                        with_nan ? " with NaN" : "");
          report(name, ok, detail);
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--quick") g_quick = true;
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: nothing run\n");
    return 0;
  }
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d)%s\n", prop.name, prop.major, prop.minor, g_quick ? " [quick]" : "");
  test_kselect();
  // Again with pass 0 on the global-histogram kernel (the path of devices
  // without 128 KiB of shared memory per block).
  setenv("FASTPRUNE_CUDA_GLOBAL_HIST", "1", 1);
  std::printf("-- kselect with FASTPRUNE_CUDA_GLOBAL_HIST=1\n");
  test_kselect();
  unsetenv("FASTPRUNE_CUDA_GLOBAL_HIST");
  test_mask_mul();
  test_packed();
  test_channel_norms();
  std::printf("%d cases, %d failed\n", g_cases, g_failures);
  return g_failures == 0 ? 0 : 1;
}
