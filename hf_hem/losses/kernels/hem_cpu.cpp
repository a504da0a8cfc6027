// Fused CPU kernels for HEM and the multi-class margin family (MM, MM+maz, MM+thres).
//
// The logits are seen as (B, C, I): sample (b, i) has its C class scores at x[b*C*I + c*I + i]. Classification
// logits (N, C) are B = N, I = 1; segmentation logits (N, C, H, W) are B = N, I = H*W, read in place without a
// permute copy. Forward reads each sample's scores twice while they are in cache (threshold, then kept errors) and
// writes only per-sample numbers; backward reads the logits once more and writes the sparse gradient, whose values
// per sample are only three: +a for kept classes, -k*a for the target, 0 elsewhere (method page, section 1).
//
// Built by hf_hem.losses.kernels._cpu with the system C++ compiler and called through ctypes (no Python or torch
// headers are needed, so it compiles in about a second). Every exported function returns 0 on success.

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

enum Format : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

inline float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline uint32_t float_to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

inline float half_to_float(uint16_t half) {
  const uint32_t sign = uint32_t(half & 0x8000u) << 16;
  const uint32_t exponent = (half >> 10) & 0x1fu;
  const uint32_t mantissa = half & 0x3ffu;
  float magnitude;
  if (exponent == 0) {
    magnitude = float(mantissa) * 5.9604644775390625e-08f;  // subnormal: mantissa * 2^-24, exact
  } else if (exponent == 31) {
    magnitude = bits_to_float(0x7f800000u | (mantissa << 13));  // inf or NaN
  } else {
    magnitude = bits_to_float(((exponent + 112u) << 23) | (mantissa << 13));
  }
  return bits_to_float(float_to_bits(magnitude) | sign);
}

// Round to nearest even, as torch's float -> half conversion does.
inline uint16_t float_to_half(float value) {
  uint32_t bits = float_to_bits(value);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  bits &= 0x7fffffffu;
  if (bits > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
  if (bits >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to inf (65520 and above)
  if (bits < 0x38800000u) {
    // Below the smallest normal half: adding 0.5 (whose ulp is 2^-24, the half subnormal step) rounds for us.
    const float shifted = bits_to_float(bits) + 0.5f;
    return uint16_t(sign | (float_to_bits(shifted) - 0x3f000000u));
  }
  const uint32_t odd = (bits >> 13) & 1u;
  bits = bits - (112u << 23) + 0xfffu + odd;
  return uint16_t(sign | (bits >> 13));
}

inline uint16_t float_to_bfloat16(float value) {
  uint32_t bits = float_to_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40u);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

// Storage type of the logits and gradient, the type arithmetic is done in, and the conversions between them.
template <int F>
struct Traits;
// Formats stored in the type they are computed in: loads and stores are plain copies.
template <typename Type>
struct IdentityTraits {
  using Storage = Type;
  using Acc = Type;
  static Acc load(Storage v) { return v; }
  static Storage store(Acc v) { return v; }
};
template <>
struct Traits<kFloat32> : IdentityTraits<float> {};
template <>
struct Traits<kFloat64> : IdentityTraits<double> {};
template <>
struct Traits<kBFloat16> {
  using Storage = uint16_t;
  using Acc = float;
  static Acc load(Storage v) { return bits_to_float(uint32_t(v) << 16); }
  static Storage store(Acc v) { return float_to_bfloat16(v); }
};
template <>
struct Traits<kFloat16> {
  using Storage = uint16_t;
  using Acc = float;
  static Acc load(Storage v) { return half_to_float(v); }
  static Storage store(Acc v) { return float_to_half(v); }
};

template <typename Acc>
struct Problem {
  const void* logits;
  const int64_t* labels;
  int64_t num_groups;   // B
  int64_t num_classes;  // C
  int64_t inner;        // I
  const Acc* margins;   // (C,) per target class, or nullptr for the scalar margin
  Acc margin;
  int64_t ignore_index;
};

// max(0, e) that keeps NaN, like torch.clamp_min: a NaN logit then poisons its sample's loss as in the reference.
template <typename Acc>
inline Acc hinge(Acc error) {
  return error < Acc(0) ? Acc(0) : error;
}

// Samples per tile of the spatial kernels: the C x tile block of logits stays in L2 between the two passes.
#ifndef HEM_MAX_TILE
#define HEM_MAX_TILE 256
#endif
#ifndef HEM_TILE_BYTES
#define HEM_TILE_BYTES (96 * 1024)
#endif
constexpr int64_t kMaxTile = HEM_MAX_TILE;

inline int64_t tile_size(int64_t num_classes, int64_t inner, int64_t element_size) {
  int64_t tile = (HEM_TILE_BYTES) / (num_classes * element_size);
  tile = tile < 16 ? 16 : (tile > kMaxTile ? kMaxTile : tile);
  tile = (tile / 16) * 16;
  return tile > inner ? inner : tile;
}

// Splits [0, num_units) into one contiguous range per thread. With OpenMP the threads are those of the OpenMP runtime
// already loaded by torch (same soname, so the loader reuses it): no second pool competes for the cores with torch's
// spinning workers. Without OpenMP, std::thread is the fallback.
template <typename Body>
void parallel_for(int64_t num_units, int num_threads, const Body& body) {
  if (num_threads > num_units) num_threads = int(num_units);
  if (num_threads <= 1) {
    body(int64_t(0), num_units);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(num_threads)
  {
    const int64_t thread = omp_get_thread_num(), threads = omp_get_num_threads();
    body(num_units * thread / threads, num_units * (thread + 1) / threads);
  }
#else
  std::vector<std::thread> workers;
  workers.reserve(size_t(num_threads - 1));
  auto range_of = [&](int t, int64_t* begin, int64_t* end) {
    *begin = num_units * t / num_threads;
    *end = num_units * (t + 1) / num_threads;
  };
  int started = 1;
  try {
    for (int t = 1; t < num_threads; ++t) {
      int64_t begin, end;
      range_of(t, &begin, &end);
      workers.emplace_back([&body, begin, end] { body(begin, end); });
      ++started;
    }
  } catch (...) {
    // Could not start a thread: do its share here.
  }
  int64_t begin, end;
  range_of(0, &begin, &end);
  body(begin, end);
  for (int t = started; t < num_threads; ++t) {
    range_of(t, &begin, &end);
    body(begin, end);
  }
  for (auto& worker : workers) worker.join();
#endif
}

// parallel_for over a body that returns non-zero when its range holds a label outside [0, C) that is not
// ignore_index; returns 1 if any range did (the forward kernels' label check).
template <typename Body>
int parallel_for_flagged(int64_t num_units, int num_threads, const Body& body) {
  std::atomic<int> label_error{0};
  parallel_for(num_units, num_threads, [&](int64_t begin, int64_t end) {
    if (body(begin, end)) label_error.store(1);
  });
  return label_error.load();
}

constexpr int kLanes = 16;  // independent accumulators, so that the compiler can vectorise the sums

// 1 where the error is kept, else 0. Multiplying by it (rather than selecting 0) keeps a NaN error visible, exactly
// like the reference's errors * kept, and leaves the loops free of branches so that they vectorise.
template <typename Acc>
inline Acc kept_indicator(Acc error, Acc tau) {
  return ((error > Acc(0)) & (error >= tau)) ? Acc(1) : Acc(0);
}

// The kernels for logits stored in format F: one home for the format's storage and arithmetic types.
template <int F>
struct Kernels {
  using T = Traits<F>;
  using Acc = typename T::Acc;
  using Storage = typename T::Storage;

  // ------------------------------------------------------------------ rows: classes contiguous (I == 1)

  static Acc sum_errors(const Storage* x, int64_t begin, int64_t end, Acc target_logit, Acc margin) {
    Acc lanes[kLanes] = {};
    int64_t c = begin;
    for (; c + kLanes <= end; c += kLanes)
      for (int j = 0; j < kLanes; ++j) lanes[j] += hinge((T::load(x[c + j]) - target_logit) + margin);
    Acc total = 0;
    for (; c < end; ++c) total += hinge((T::load(x[c]) - target_logit) + margin);
    for (int j = 0; j < kLanes; ++j) total += lanes[j];
    return total;
  }

  static void sum_kept(const Storage* x, int64_t begin, int64_t end, Acc target_logit, Acc margin, Acc tau,
                       Acc* kept_sum, int64_t* kept_count) {
    Acc sums[kLanes] = {}, counts[kLanes] = {};  // counts below 2^24 per lane are exact in float
    int64_t c = begin;
    for (; c + kLanes <= end; c += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        const Acc e = hinge((T::load(x[c + j]) - target_logit) + margin);
        const Acc keep = kept_indicator(e, tau);
        sums[j] += e * keep;
        counts[j] += keep;
      }
    }
    Acc total = 0;
    int64_t count = 0;
    for (; c < end; ++c) {
      const Acc e = hinge((T::load(x[c]) - target_logit) + margin);
      const Acc keep = kept_indicator(e, tau);
      total += e * keep;
      count += int64_t(keep);
    }
    for (int j = 0; j < kLanes; ++j) {
      total += sums[j];
      count += int64_t(counts[j]);
    }
    *kept_sum += total;
    *kept_count += count;
  }

  static int forward_rows(const Problem<Acc>& problem, bool threshold, bool mean_above_zero, Acc* per_sample,
                          Acc* tau_out, int32_t* kept_out, int num_threads) {
    const auto* logits = static_cast<const Storage*>(problem.logits);
    const int64_t C = problem.num_classes;
    return parallel_for_flagged(problem.num_groups, num_threads, [&](int64_t begin, int64_t end) {
      int bad = 0;
      for (int64_t b = begin; b < end; ++b) {
        const int64_t label = problem.labels[b];
        const bool valid = label != problem.ignore_index;
        if (!valid || label < 0 || label >= C) {
          bad |= valid;
          per_sample[b] = 0;
          tau_out[b] = std::numeric_limits<Acc>::infinity();  // nothing is kept, so the gradient is 0
          kept_out[b] = 0;
          continue;
        }
        const auto* x = logits + b * C;
        const Acc target_logit = T::load(x[label]);
        const Acc margin = problem.margins ? problem.margins[label] : problem.margin;
        Acc tau = 0;
        if (threshold) {
          const Acc total = sum_errors(x, 0, label, target_logit, margin) +
                            sum_errors(x, label + 1, C, target_logit, margin);
          tau = total / Acc(C);  // the target's 0 counts in the mean
        }
        Acc kept_sum = 0;
        int64_t kept_count = 0;
        sum_kept(x, 0, label, target_logit, margin, tau, &kept_sum, &kept_count);
        sum_kept(x, label + 1, C, target_logit, margin, tau, &kept_sum, &kept_count);
        const Acc divisor = mean_above_zero ? Acc(kept_count > 0 ? kept_count : 1) : Acc(C);
        per_sample[b] = kept_sum / divisor;
        tau_out[b] = tau;
        kept_out[b] = int32_t(kept_count);
      }
      return bad;
    });
  }

  static void backward_rows(const Problem<Acc>& problem, const Acc* tau_in, const int32_t* kept_in, const Acc* weight,
                            void* grad_out, int num_threads) {
    const auto* logits = static_cast<const Storage*>(problem.logits);
    auto* grad = static_cast<Storage*>(grad_out);
    const int64_t C = problem.num_classes;
    parallel_for(problem.num_groups, num_threads, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        Storage* g = grad + b * C;
        const int64_t label = problem.labels[b];
        const Acc w = weight[b];
        if (label == problem.ignore_index || kept_in[b] == 0 || w == Acc(0)) {
          std::memset(static_cast<void*>(g), 0, size_t(C) * sizeof(Storage));
          continue;
        }
        const auto* x = logits + b * C;
        const Acc target_logit = T::load(x[label]);
        const Acc margin = problem.margins ? problem.margins[label] : problem.margin;
        const Acc tau = tau_in[b];
        const Storage kept_value = T::store(w);
        const Storage zero = T::store(Acc(0));
        for (int64_t c = 0; c < C; ++c) {
          const Acc e = hinge((T::load(x[c]) - target_logit) + margin);
          g[c] = ((e > Acc(0)) & (e >= tau)) ? kept_value : zero;
        }
        g[label] = T::store(-Acc(kept_in[b]) * w);
      }
    });
  }

  // ------------------------------------------------------------------ tiles: classes strided by I (I > 1)

  static int forward_tiles(const Problem<Acc>& problem, bool threshold, bool mean_above_zero, Acc* per_sample,
                           Acc* tau_out, int32_t* kept_out, int num_threads) {
    const auto* logits = static_cast<const Storage*>(problem.logits);
    const int64_t C = problem.num_classes, I = problem.inner;
    const int64_t tile = tile_size(C, I, int64_t(sizeof(Storage)));
    const int64_t tiles_per_group = (I + tile - 1) / tile;
    return parallel_for_flagged(problem.num_groups * tiles_per_group, num_threads, [&](int64_t begin, int64_t end) {
      int32_t target[kMaxTile];
      Acc target_logit[kMaxTile], margin[kMaxTile], total[kMaxTile], tau[kMaxTile], kept_sum[kMaxTile];
      Acc kept_count[kMaxTile];
      int bad = 0;
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t b = unit / tiles_per_group;
        const int64_t i0 = (unit % tiles_per_group) * tile;
        const int64_t n = (I - i0) < tile ? (I - i0) : tile;
        const Storage* group = logits + b * C * I + i0;
        const int64_t* labels = problem.labels + b * I + i0;
        for (int64_t p = 0; p < n; ++p) {
          const int64_t label = labels[p];
          const bool valid = label != problem.ignore_index;
          const bool in_range = label >= 0 && label < C;
          bad |= valid & !in_range;
          target[p] = (valid && in_range) ? int32_t(label) : -1;
          target_logit[p] = target[p] >= 0 ? T::load(group[label * I + p]) : Acc(0);
          margin[p] = target[p] >= 0 ? (problem.margins ? problem.margins[label] : problem.margin) : Acc(0);
          total[p] = 0;
          kept_sum[p] = 0;
          kept_count[p] = 0;
        }
        if (threshold) {
          for (int64_t c = 0; c < C; ++c) {
            const Storage* row = group + c * I;
            const int32_t class_index = int32_t(c);
            for (int64_t p = 0; p < n; ++p) {
              const Acc e = hinge((T::load(row[p]) - target_logit[p]) + margin[p]);
              total[p] += target[p] == class_index ? Acc(0) : e;
            }
          }
        }
        for (int64_t p = 0; p < n; ++p)
          tau[p] = target[p] < 0 ? std::numeric_limits<Acc>::infinity() : (threshold ? total[p] / Acc(C) : Acc(0));
        for (int64_t c = 0; c < C; ++c) {
          const Storage* row = group + c * I;
          const int32_t class_index = int32_t(c);
          for (int64_t p = 0; p < n; ++p) {
            const Acc e = hinge((T::load(row[p]) - target_logit[p]) + margin[p]);
            // The target's own entry is an exact 0, as in the reference; ignored samples have tau = inf.
            const Acc keep = target[p] == class_index ? Acc(0) : kept_indicator(e, tau[p]);
            const Acc contribution = (target[p] == class_index) | (target[p] < 0) ? Acc(0) : e * keep;
            kept_sum[p] += contribution;
            kept_count[p] += keep;
          }
        }
        Acc* out_loss = per_sample + b * I + i0;
        Acc* out_tau = tau_out + b * I + i0;
        int32_t* out_kept = kept_out + b * I + i0;
        for (int64_t p = 0; p < n; ++p) {
          const Acc divisor = mean_above_zero ? (kept_count[p] > Acc(0) ? kept_count[p] : Acc(1)) : Acc(C);
          out_loss[p] = kept_sum[p] / divisor;
          out_tau[p] = tau[p];
          out_kept[p] = int32_t(kept_count[p]);
        }
      }
      return bad;
    });
  }

  static void backward_tiles(const Problem<Acc>& problem, const Acc* tau_in, const int32_t* kept_in,
                             const Acc* weight, void* grad_out, int num_threads) {
    const auto* logits = static_cast<const Storage*>(problem.logits);
    auto* grad = static_cast<Storage*>(grad_out);
    const int64_t C = problem.num_classes, I = problem.inner;
    const int64_t tile = tile_size(C, I, int64_t(sizeof(Storage)));
    const int64_t tiles_per_group = (I + tile - 1) / tile;
    parallel_for(problem.num_groups * tiles_per_group, num_threads, [&](int64_t begin, int64_t end) {
      int32_t target[kMaxTile];
      Acc target_logit[kMaxTile], margin[kMaxTile], tau[kMaxTile];
      Storage kept_value[kMaxTile], target_value[kMaxTile];
      const Storage zero = T::store(Acc(0));
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t b = unit / tiles_per_group;
        const int64_t i0 = (unit % tiles_per_group) * tile;
        const int64_t n = (I - i0) < tile ? (I - i0) : tile;
        const Storage* group = logits + b * C * I + i0;
        Storage* group_grad = grad + b * C * I + i0;
        const int64_t offset = b * I + i0;
        for (int64_t p = 0; p < n; ++p) {
          const int64_t label = problem.labels[offset + p];
          const bool active = label != problem.ignore_index && kept_in[offset + p] > 0 && weight[offset + p] != Acc(0);
          target[p] = active ? int32_t(label) : -1;
          target_logit[p] = active ? T::load(group[label * I + p]) : Acc(0);
          margin[p] = active ? (problem.margins ? problem.margins[label] : problem.margin) : Acc(0);
          tau[p] = active ? tau_in[offset + p] : std::numeric_limits<Acc>::infinity();
          kept_value[p] = active ? T::store(weight[offset + p]) : zero;
          target_value[p] = active ? T::store(-Acc(kept_in[offset + p]) * weight[offset + p]) : zero;
        }
        for (int64_t c = 0; c < C; ++c) {
          const Storage* row = group + c * I;
          Storage* out = group_grad + c * I;
          const int32_t class_index = int32_t(c);
          for (int64_t p = 0; p < n; ++p) {
            const Acc e = hinge((T::load(row[p]) - target_logit[p]) + margin[p]);
            const Storage value = ((e > Acc(0)) & (e >= tau[p])) ? kept_value[p] : zero;
            out[p] = target[p] == class_index ? target_value[p] : value;
          }
        }
      }
    });
  }

  static int forward(const void* logits, const int64_t* labels, int64_t B, int64_t C, int64_t I, const void* margins,
                     double margin, int64_t ignore_index, int threshold, int mean_above_zero, void* per_sample,
                     void* tau, int32_t* kept, int num_threads) {
    const Problem<Acc> problem{logits, labels, B, C, I, static_cast<const Acc*>(margins), Acc(margin), ignore_index};
    auto* loss = static_cast<Acc*>(per_sample);
    auto* thresholds = static_cast<Acc*>(tau);
    if (I == 1) {
      return forward_rows(problem, threshold != 0, mean_above_zero != 0, loss, thresholds, kept, num_threads);
    }
    return forward_tiles(problem, threshold != 0, mean_above_zero != 0, loss, thresholds, kept, num_threads);
  }

  static void backward(const void* logits, const int64_t* labels, int64_t B, int64_t C, int64_t I,
                       const void* margins, double margin, int64_t ignore_index, const void* tau, const int32_t* kept,
                       const void* weight, void* grad, int num_threads) {
    const Problem<Acc> problem{logits, labels, B, C, I, static_cast<const Acc*>(margins), Acc(margin), ignore_index};
    const auto* thresholds = static_cast<const Acc*>(tau);
    const auto* weights = static_cast<const Acc*>(weight);
    if (I == 1) {
      backward_rows(problem, thresholds, kept, weights, grad, num_threads);
    } else {
      backward_tiles(problem, thresholds, kept, weights, grad, num_threads);
    }
  }
};

// Calls body(Kernels<F>()) for the logits' format F and returns its result: one home for the format switch of the
// exported functions. Returns 2 for an unknown format or when a C++ exception escapes (none may cross the C boundary).
template <typename Body>
int with_format(int format, const Body& body) {
  try {
    switch (format) {
      case kFloat32:
        return body(Kernels<kFloat32>());
      case kFloat64:
        return body(Kernels<kFloat64>());
      case kBFloat16:
        return body(Kernels<kBFloat16>());
      case kFloat16:
        return body(Kernels<kFloat16>());
      default:
        return 2;
    }
  } catch (...) {
    return 2;
  }
}

}  // namespace

extern "C" {

// Per-sample loss, threshold tau (inf for ignored samples) and kept count. Returns 1 if a label that is not
// ignore_index lies outside [0, C) (its sample is treated as ignored), 2 on an unknown format or internal error.
int hem_forward(int format, const void* logits, const int64_t* labels, int64_t B, int64_t C, int64_t I,
                const void* margins, double margin, int64_t ignore_index, int threshold, int mean_above_zero,
                void* per_sample, void* tau, int32_t* kept, int num_threads) {
  return with_format(format, [&](auto kernels) {
    return kernels.forward(logits, labels, B, C, I, margins, margin, ignore_index, threshold, mean_above_zero,
                           per_sample, tau, kept, num_threads);
  });
}

// Gradient of sum_b weight_b-scaled losses: +weight_b on kept classes, -kept_b * weight_b on the target, 0 elsewhere.
int hem_backward(int format, const void* logits, const int64_t* labels, int64_t B, int64_t C, int64_t I,
                 const void* margins, double margin, int64_t ignore_index, const void* tau, const int32_t* kept,
                 const void* weight, void* grad, int num_threads) {
  return with_format(format, [&](auto kernels) {
    kernels.backward(logits, labels, B, C, I, margins, margin, ignore_index, tau, kept, weight, grad, num_threads);
    return 0;
  });
}

}  // extern "C"
