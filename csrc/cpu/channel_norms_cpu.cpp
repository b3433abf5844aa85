// Per-channel Lp norms: out[c] = ||t.select(dim, c)||_p, as torch.linalg.vector_norm
// over every dim but `dim` (p = 1, 2, inf, -inf, 0 = count of non-zeros, any other p).
//
// The tensor is viewed as [outer, C, inner] without copying (only a contiguous
// copy of a strided input). When outer == 1 (dim 0: conv output channels) each
// channel is one contiguous block and threads split the channels; otherwise
// (e.g. the last dim: Linear in-features) threads split `outer` and keep one
// accumulator per channel, merged at the end, so no transposed copy is made.
// Accumulation is in double (the result is rounded to fp32, or kept fp64 for
// fp64 input), which is at least as accurate as the reference's fp32 sums.
#include "../op_args.h"

#include <torch/library.h>

#include <cmath>
#include <limits>
#include <mutex>

namespace fastprune {
namespace {

enum class NormKind { P0, P1, P2, PInf, PNegInf, PGen };

// |v| in the precision the reference computes it in: fp64 for fp64, else fp32.
template <typename T>
C10_ALWAYS_INLINE auto magnitude(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return std::fabs(v);
  } else {
    return std::fabs(static_cast<float>(v));
  }
}

template <NormKind N, typename T>
struct Norm {
  using mag_t = decltype(magnitude(T()));

  static double init() {
    if constexpr (N == NormKind::PNegInf) {
      return std::numeric_limits<double>::infinity();
    } else {
      return 0.0;
    }
  }
  // Contribution of one element.
  static C10_ALWAYS_INLINE double term(T v, mag_t p) {
    const mag_t a = magnitude(v);
    if constexpr (N == NormKind::P0) {
      return a != mag_t(0) ? 1.0 : 0.0;  // NaN counts as non-zero
    } else if constexpr (N == NormKind::P2) {
      return static_cast<double>(a) * static_cast<double>(a);
    } else if constexpr (N == NormKind::PGen) {
      return static_cast<double>(std::pow(a, p));
    } else {
      return static_cast<double>(a);
    }
  }
  // max/min propagate NaN, as vector_norm does.
  static C10_ALWAYS_INLINE double combine(double acc, double x) {
    if constexpr (N == NormKind::PInf) {
      return (x > acc || x != x) ? x : acc;
    } else if constexpr (N == NormKind::PNegInf) {
      return (x < acc || x != x) ? x : acc;
    } else {
      return acc + x;
    }
  }
  static double finish(double acc, double p) {
    if constexpr (N == NormKind::P2) {
      return std::sqrt(acc);
    } else if constexpr (N == NormKind::PGen) {
      return std::pow(acc, 1.0 / p);
    } else {
      return acc;
    }
  }
  // Reduction of a contiguous block with 8 independent partial accumulators so
  // that the loop is not one long dependency chain.
  static double block(const T* x, int64_t n, mag_t p) {
    if constexpr (N == NormKind::PInf || N == NormKind::PNegInf) {
      // Plain max/min in the input's precision plus a NaN flag: vectorises,
      // unlike a NaN-propagating select.
      mag_t lanes[8];
      for (mag_t& l : lanes) l = static_cast<mag_t>(init());
      uint8_t nan = 0;
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        for (int l = 0; l < 8; ++l) {
          const mag_t a = magnitude(x[i + l]);
          nan |= uint8_t(a != a);
          if constexpr (N == NormKind::PInf) {
            lanes[l] = a > lanes[l] ? a : lanes[l];
          } else {
            lanes[l] = a < lanes[l] ? a : lanes[l];
          }
        }
      }
      double acc = init();
      for (; i < n; ++i) acc = combine(acc, term(x[i], p));
      for (mag_t l : lanes) acc = combine(acc, static_cast<double>(l));
      return nan ? std::numeric_limits<double>::quiet_NaN() : acc;
    }
    if constexpr (!std::is_same_v<T, double> &&
                  (N == NormKind::P0 || N == NormKind::P1 || N == NormKind::P2)) {
      // fp32 lanes over short blocks (16 sequential adds per lane at most, so
      // rounding stays near 1e-6 relative), blocks summed in double: vectorises
      // twice as wide as double lanes.
      constexpr int64_t kLanes = 16, kBlock = 256;
      double acc = 0.0;
      int64_t i = 0;
      for (; i + kBlock <= n; i += kBlock) {
        float lanes[kLanes] = {};
        for (int64_t j = 0; j < kBlock; j += kLanes) {
          for (int64_t l = 0; l < kLanes; ++l) {
            const float a = magnitude(x[i + j + l]);
            if constexpr (N == NormKind::P0) {
              lanes[l] += a != 0.0f ? 1.0f : 0.0f;
            } else if constexpr (N == NormKind::P2) {
              lanes[l] += a * a;
            } else {
              lanes[l] += a;
            }
          }
        }
        double block_sum = 0.0;
        for (float l : lanes) block_sum += static_cast<double>(l);
        acc += block_sum;
      }
      for (; i < n; ++i) acc += term(x[i], p);
      return acc;
    }
    double lanes[8];
    for (double& l : lanes) l = init();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      for (int l = 0; l < 8; ++l) lanes[l] = combine(lanes[l], term(x[i + l], p));
    }
    double acc = init();
    for (; i < n; ++i) acc = combine(acc, term(x[i], p));
    for (double l : lanes) acc = combine(acc, l);
    return acc;
  }
};

template <NormKind N, typename T>
void channel_norms_kernel(const at::Tensor& x, int64_t outer, int64_t C, int64_t inner, double p, at::Tensor& out) {
  using Op = Norm<N, T>;
  using mag_t = typename Op::mag_t;
  const mag_t pm = static_cast<mag_t>(p);
  const T* data = x.data_ptr<T>();
  std::vector<double> acc(C, Op::init());
  const int64_t grain_elems = 32768;
  if (outer == 1) {
    at::parallel_for(0, C, std::max<int64_t>(1, grain_elems / std::max<int64_t>(inner, 1)), [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) acc[c] = Op::block(data + c * inner, inner, pm);
    });
  } else {
    std::mutex merge_mutex;
    const int64_t row = C * inner;
    at::parallel_for(0, outer, std::max<int64_t>(1, grain_elems / std::max<int64_t>(row, 1)), [&](int64_t b, int64_t e) {
      std::vector<double> local(C, Op::init());
      double* lp = local.data();
      for (int64_t o = b; o < e; ++o) {
        const T* r = data + o * row;
        if (inner == 1) {
          for (int64_t c = 0; c < C; ++c) lp[c] = Op::combine(lp[c], Op::term(r[c], pm));
        } else {
          for (int64_t c = 0; c < C; ++c) lp[c] = Op::combine(lp[c], Op::block(r + c * inner, inner, pm));
        }
      }
      std::lock_guard<std::mutex> lock(merge_mutex);
      for (int64_t c = 0; c < C; ++c) acc[c] = Op::combine(acc[c], lp[c]);
    });
  }
  if (out.scalar_type() == at::kDouble) {
    double* o = out.data_ptr<double>();
    for (int64_t c = 0; c < C; ++c) o[c] = Op::finish(acc[c], p);
  } else {
    float* o = out.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) o[c] = static_cast<float>(Op::finish(acc[c], p));
  }
}

at::Tensor channel_norms_cpu(const at::Tensor& t, int64_t dim, double p) {
  dim = check_channel_norms_args(t, dim, p, CheckCpu{});
  ChannelNormsView v = channel_norms_view(t, dim);
  if (v.done) return v.out;
  const int64_t outer = v.outer, C = v.C, inner = v.inner;
  at::Tensor& out = v.out;

  const at::Tensor x = t.contiguous();
  NormKind kind;
  if (p == 0.0) {
    kind = NormKind::P0;
  } else if (p == 1.0) {
    kind = NormKind::P1;
  } else if (p == 2.0) {
    kind = NormKind::P2;
  } else if (std::isinf(p)) {
    kind = p > 0 ? NormKind::PInf : NormKind::PNegInf;
  } else {
    kind = NormKind::PGen;
  }
  dispatch_dtype(t.scalar_type(), "channel_norms", [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (kind) {
      case NormKind::P0: channel_norms_kernel<NormKind::P0, T>(x, outer, C, inner, p, out); break;
      case NormKind::P1: channel_norms_kernel<NormKind::P1, T>(x, outer, C, inner, p, out); break;
      case NormKind::P2: channel_norms_kernel<NormKind::P2, T>(x, outer, C, inner, p, out); break;
      case NormKind::PInf: channel_norms_kernel<NormKind::PInf, T>(x, outer, C, inner, p, out); break;
      case NormKind::PNegInf: channel_norms_kernel<NormKind::PNegInf, T>(x, outer, C, inner, p, out); break;
      case NormKind::PGen: channel_norms_kernel<NormKind::PGen, T>(x, outer, C, inner, p, out); break;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, CPU, m) { m.impl("channel_norms", &channel_norms_cpu); }

}  // namespace fastprune
