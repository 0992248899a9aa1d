// scalar_weighted_sum on the CPU. One task per (batch, channel) plane: each output row reads every
// input at its own resolution (nearest rows/columns from precomputed tables, a 3x3/2 max-pooled row
// computed once per pooled row), so no resized copy exists.
// Backward: nearest indices are monotone, so the output rows reading one source row are a
// contiguous range. A source row's gradient is summed in a row buffer while its output rows go
// by (in the reference's scatter order, so float32 rounds alike) and written once when the range
// ends: no zero-filling and no read-modify-write of the gradient tensors. Pooled rows scatter
// into their arg-maxima in the task's own plane, so nothing races; the weight gradients are
// per-plane partial sums reduced in plane order: bitwise deterministic for any thread count.
// The op's autograd kernel (all backends) is at the end of this file.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "common/resize.h"
#include "cpu/output_arena.h"
#include "cpu/simd_dispatch.h"
#include "torch_utils.h"

namespace rtseg {
namespace {

constexpr int64_t kMaxInputs = 4;
// Planes per task so that a task reads and writes at least this many elements (plane_elements):
// small calls then run inline instead of paying for waking the thread pool.
constexpr int64_t kMinTaskElements = 1 << 15;

void check_args(at::TensorList inputs, const at::Tensor& weights,
                const std::optional<c10::string_view>& activation) {
  TORCH_CHECK(!inputs.empty() && static_cast<int64_t>(inputs.size()) <= kMaxInputs,
              "inputs: expected 1 to ", kMaxInputs, " tensors, got ", inputs.size());
  const at::Tensor& first = inputs[0];
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string name = "inputs[" + std::to_string(i) + "]";
    check_dim(inputs[i], 4, name.c_str());
    check_same(inputs[i], first, name.c_str(), "inputs[0]");
    TORCH_CHECK(inputs[i].size(0) == first.size(0) && inputs[i].size(1) == first.size(1), name,
                ": expected batch and channels (", first.size(0), ", ", first.size(1),
                ") (those of inputs[0]), got shape ", inputs[i].sizes());
    TORCH_CHECK(inputs[i].size(2) > 0 && inputs[i].size(3) > 0, name,
                ": expected a non-empty spatial size, got shape ", inputs[i].sizes());
  }
  check_same(weights, first, "weights", "inputs[0]");
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == static_cast<int64_t>(inputs.size()),
              "weights: expected shape [", inputs.size(), "] (one scalar per input), got ",
              weights.sizes());
  TORCH_CHECK(!activation.has_value() || *activation == "swish",
              "activation: expected None or \"swish\", got \"",
              activation.has_value() ? std::string(*activation) : std::string(), "\"");
}

// The raw scalars in double, read in place (no tensor ops: they cost microseconds on tiny calls).
std::vector<double> raw_weights(const at::Tensor& weights) {
  std::vector<double> v(weights.size(0));
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "scalar_weighted_sum_weights", [&] {
    const scalar_t* p = weights.const_data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(p[i * weights.stride(0)]);
  });
  return v;
}

// The fused weights w_i: raw, or BiFPN's relu(v) / (sum relu(v) + eps).
std::vector<double> fused_weights(const std::vector<double>& raw, bool normalize, double eps) {
  std::vector<double> w(raw);
  if (normalize) {
    double total = eps;
    for (double& x : w) total += (x = x > 0 ? x : 0.0);
    for (double& x : w) x /= total;
  }
  return w;
}

// How the output's columns read a row of the grid the nearest step reads (the input itself or its
// pooled map): the same column, column x / 2 (exact 2x upsampling), or a table.
enum class Cols { Same, Double, Table };

// How input i is read: its strides, its resize kind, the nearest tables from the output grid into
// the (mid_h, mid_w) grid the nearest step reads, and the rows' inverse: the output rows reading
// mid row r are [row_start[r], row_start[r + 1]).
struct Plan {
  Strided4 s;
  Resize kind;
  int64_t mid_h, mid_w;
  Cols cols_kind;
  std::vector<int64_t> rows, cols, row_start;
};

// Calls f(stride) with a compile-time 1 when the stride is 1, so that unit-stride row loops
// vectorise.
template <typename F> void with_stride(int64_t stride, F&& f) {
  if (stride == 1) f(std::integral_constant<int64_t, 1>());
  else f(stride);
}

// start[r] = the first index whose source is >= r, for r in [0, n]; `source` is non-decreasing.
std::vector<int64_t> inverse_ranges(const std::vector<int64_t>& source, int64_t n) {
  std::vector<int64_t> start(n + 1);
  int64_t i = 0;
  const int64_t m = static_cast<int64_t>(source.size());
  for (int64_t r = 0; r <= n; ++r) {
    while (i < m && source[i] < r) ++i;
    start[r] = i;
  }
  return start;
}

std::vector<Plan> make_plans(at::TensorList inputs) {
  const int64_t H = inputs[0].size(2), W = inputs[0].size(3);
  std::vector<Plan> plans;
  for (const auto& t : inputs) {
    Plan p{strided4(t), resize_kind(t.size(2), t.size(3), H, W), t.size(2), t.size(3), Cols::Table,
           {}, {}, {}};
    if (p.kind == Resize::PoolNearest) {
      p.mid_h = pooled_size(p.s.h);
      p.mid_w = pooled_size(p.s.w);
    }
    const float sy = nearest_scale(p.mid_h, H), sx = nearest_scale(p.mid_w, W);
    for (int64_t y = 0; y < H; ++y) p.rows.push_back(nearest_source(y, sy, p.mid_h));
    for (int64_t x = 0; x < W; ++x) p.cols.push_back(nearest_source(x, sx, p.mid_w));
    // nearest_source is exact for a ratio of 1 or 1/2
    p.cols_kind = p.mid_w == W ? Cols::Same : W == 2 * p.mid_w ? Cols::Double : Cols::Table;
    p.row_start = inverse_ranges(p.rows, p.mid_h);
    plans.push_back(std::move(p));
  }
  return plans;
}

// acc[x] (+)= w * src[cols(x) * stride] for every output column x.
template <bool Accumulate, typename S, typename A>
void add_row(A* acc, const S* src, int64_t stride, const Plan& p, A w) {
  auto put = [&](A& a, A v) {
    if (Accumulate) a += w * v; else a = w * v;
  };
  const int64_t W = static_cast<int64_t>(p.cols.size());
  if (p.cols_kind == Cols::Table) {
    const int64_t* cols = p.cols.data();
    for (int64_t x = 0; x < W; ++x) put(acc[x], static_cast<A>(src[cols[x] * stride]));
    return;
  }
  with_stride(stride, [&](auto sw) {
    if (p.cols_kind == Cols::Same) {
      for (int64_t x = 0; x < W; ++x) put(acc[x], static_cast<A>(src[x * sw]));
    } else {
      for (int64_t k = 0; k < p.mid_w; ++k) {
        const A v = static_cast<A>(src[k * sw]);
        put(acc[2 * k], v);
        put(acc[2 * k + 1], v);
      }
    }
  });
}

// dot[k] += g[x] * src[k * stride] for the output columns x reading column k: one output row's
// share of dL/dw, kept per column (Cols::Table: in dot[0]) so that no row pays a horizontal sum.
template <typename S, typename A>
void add_products(const A* g, const S* src, int64_t stride, const Plan& p, A* dot) {
  const int64_t W = static_cast<int64_t>(p.cols.size());
  if (p.cols_kind == Cols::Table) {
    const int64_t* cols = p.cols.data();
    A sum = 0;
    for (int64_t x = 0; x < W; ++x) sum += g[x] * static_cast<A>(src[cols[x] * stride]);
    dot[0] += sum;
    return;
  }
  with_stride(stride, [&](auto sw) {
    if (p.cols_kind == Cols::Same) {
      for (int64_t x = 0; x < W; ++x) dot[x] += g[x] * static_cast<A>(src[x * sw]);
    } else {
      for (int64_t k = 0; k < p.mid_w; ++k)
        dot[k] += (g[2 * k] + g[2 * k + 1]) * static_cast<A>(src[k * sw]);
    }
  });
}

// mid[cols(x)] += w * g[x] over one output row, in x order (mid starts from 0 when `first`).
template <typename A> void add_columns(const A* g, A w, const Plan& p, bool first, A* mid) {
  if (p.cols_kind == Cols::Same) {
    if (first) for (int64_t k = 0; k < p.mid_w; ++k) mid[k] = w * g[k];
    else for (int64_t k = 0; k < p.mid_w; ++k) mid[k] += w * g[k];
  } else if (p.cols_kind == Cols::Double) {
    if (first) for (int64_t k = 0; k < p.mid_w; ++k) mid[k] = w * g[2 * k] + w * g[2 * k + 1];
    else for (int64_t k = 0; k < p.mid_w; ++k) mid[k] = mid[k] + w * g[2 * k] + w * g[2 * k + 1];
  } else {
    if (first) std::fill(mid, mid + p.mid_w, A(0));
    const int64_t* cols = p.cols.data();
    for (size_t x = 0; x < p.cols.size(); ++x) mid[cols[x]] += w * g[x];
  }
}

// e[x] = exp(-v[x]). float: Cody-Waite range reduction and a degree-7 polynomial (Cephes' expf
// coefficients, within 2 ulp of exp), written so that GCC vectorises it, where std::exp is a
// scalar libm call that dominated the whole op. The argument is clamped first, in its own loop
// (in one loop GCC threads the clamped constants into branches and then cannot vectorise):
// exp(-v) stays finite and normal, so sigmoid(v) is exact to float rounding except below
// v = -88, where it is ~1e-38 instead of smaller.
void neg_exp_row(const float* v, float* e, int64_t n) {
  for (int64_t x = 0; x < n; ++x) {
    const float t = -v[x];
    e[x] = t > 88.f ? 88.f : t < -87.f ? -87.f : t;
  }
  for (int64_t x = 0; x < n; ++x) {
    const float t = e[x];
    constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
    const float k = (t * 1.44269504088896341f + kRound) - kRound;
    const float r = (t - k * 0.693359375f) - k * -2.12194440e-4f;  // t - k ln2 in two steps
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    e[x] = p * scale;
  }
}
void neg_exp_row(const double* v, double* e, int64_t n) {
  for (int64_t x = 0; x < n; ++x) e[x] = std::exp(-v[x]);
}

// Per-task scratch for one input.
template <typename A> struct InputScratch {
  std::vector<A> column_max;        // a pooled row's 3-row column maxima, padded with -inf
  std::vector<int32_t> column_row;  // and the row holding each (32-bit so the selects vectorise)
  std::vector<A> pooled;            // the pooled row `pooled_row`
  std::vector<int32_t> arg_row, arg_col;  // each pooled window's arg-max (32-bit: vectorises)
  std::vector<A> mid_grad;          // backward: the gradient of the current mid row
  std::vector<A> dot;               // backward: this plane's dL/dw_i per mid column
  int64_t pooled_row = -1;

  InputScratch(const Plan& p, int64_t W, bool backward) {
    if (p.kind == Resize::PoolNearest) {
      column_max.assign(p.s.w + 2, -std::numeric_limits<A>::infinity());
      column_row.assign(p.s.w + 2, std::numeric_limits<int32_t>::max());
      pooled.resize(p.mid_w);
      if (backward) {
        arg_row.resize(p.mid_w);
        arg_col.resize(p.mid_w);
      }
    }
    if (backward) {
      mid_grad.resize(p.mid_w);
      dot.resize(p.mid_w);
    }
  }
};

// Pooled row py of `plane` (3x3/2 max pool) into scratch.pooled; with Args also the row and
// column of the element max_pool2d takes: the first maximum in row-major order, or the last NaN.
template <bool Args, typename T, typename A>
void pool_row(const T* plane, const Plan& p, int64_t py, InputScratch<A>& sc) {
  if (py == sc.pooled_row) return;
  sc.pooled_row = py;
  const Strided4& s = p.s;
  const Window rw = pool_window(py, s.h);
  // Column pass (vectorised): per column the maximum of the window's rows and the first row
  // holding it. A NaN anywhere sends the row to the exact scan below.
  A* cm = sc.column_max.data() + 1;
  int32_t* cr = sc.column_row.data() + 1;
  const int64_t width = s.w;
  int32_t nans = 0;
  for (int64_t r = rw.begin; r < rw.end; ++r) {
    const T* row = plane + r * s.sh;
    const int32_t r32 = static_cast<int32_t>(r);
    with_stride(s.sw, [&](auto sw) {
      int32_t row_nans = 0;
      if (r == rw.begin) {
        for (int64_t u = 0; u < width; ++u) {
          const A v = static_cast<A>(row[u * sw]);
          row_nans += v != v;
          cm[u] = v;
          cr[u] = r32;
        }
      } else {
        for (int64_t u = 0; u < width; ++u) {
          const A v = static_cast<A>(row[u * sw]);
          const bool take = __builtin_isgreater(v, cm[u]);  // quiet compare: if-converts
          row_nans += v != v;
          cm[u] = take ? v : cm[u];
          cr[u] = take ? r32 : cr[u];
        }
      }
      nans += row_nans;
    });
  }
  A* pooled = sc.pooled.data();
  int32_t* arg_row = sc.arg_row.data();
  int32_t* arg_col = sc.arg_col.data();
  if (nans > 0) {  // max_pool2d's scan: take a greater value or a NaN
    for (int64_t q = 0; q < p.mid_w; ++q) {
      const Window cw = pool_window(q, s.w);
      A m = -std::numeric_limits<A>::infinity();
      int64_t best_r = rw.begin, best_u = cw.begin;
      for (int64_t r = rw.begin; r < rw.end; ++r)
        for (int64_t u = cw.begin; u < cw.end; ++u) {
          const A v = static_cast<A>(plane[r * s.sh + u * s.sw]);
          if (pool_takes(v, m)) { m = v; best_r = r; best_u = u; }
        }
      pooled[q] = m;
      if (Args) {
        arg_row[q] = static_cast<int32_t>(best_r);
        arg_col[q] = static_cast<int32_t>(best_u);
      }
    }
    return;
  }
  // Window q covers columns 2q-1 .. 2q+1, padded at -1 and w with -inf in row INT32_MAX: the
  // greatest column maximum wins, ties go to the smaller row, then the smaller column (so a
  // window of -inf takes its first real column's first row, as max_pool2d does).
  for (int64_t q = 0; q < p.mid_w; ++q) {
    const int64_t u0 = 2 * q - 1;
    A m = cm[u0];
    if (Args) {
      int32_t best_r = cr[u0], best_u = static_cast<int32_t>(u0);
      for (int64_t j = 1; j < 3; ++j) {
        const A c = cm[u0 + j];
        const int32_t r = cr[u0 + j];
        const bool take = __builtin_isgreater(c, m) | ((c == m) & (r < best_r));
        m = take ? c : m;
        best_r = take ? r : best_r;
        best_u = take ? static_cast<int32_t>(u0 + j) : best_u;
      }
      arg_row[q] = best_r;
      arg_col[q] = best_u;
    } else {
      m = __builtin_isgreater(cm[u0 + 1], m) ? cm[u0 + 1] : m;
      m = __builtin_isgreater(cm[u0 + 2], m) ? cm[u0 + 2] : m;
    }
    pooled[q] = m;
  }
}

// acc (+)= w * input i resized, for output row y.
template <bool Accumulate, bool Args, typename T, typename A>
void add_input_row(const T* plane, const Plan& p, int64_t y, A w, InputScratch<A>& sc, A* acc) {
  const int64_t r = p.rows[y];
  if (p.kind == Resize::PoolNearest) {
    pool_row<Args>(plane, p, r, sc);
    add_row<Accumulate>(acc, sc.pooled.data(), 1, p, w);
  } else {
    add_row<Accumulate>(acc, plane + r * p.s.sh, p.s.sw, p, w);
  }
}

// The per-plane loops are also compiled for AVX-512 and AVX2 (simd_dispatch.h), so that the row
// loops and the exp use the wider vectors.

// Planes [begin, end) of the output.
template <typename T>
RTSEG_SIMD_CLONES void forward_planes(const std::vector<Plan>& plans,
                                      const std::vector<const T*>& data,
                                      const std::vector<acc_t<T>>& w, bool swish, T* out,
                                      Strided4 os, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const size_t n = plans.size();
  std::vector<A> acc(os.w), e(os.w);
  std::vector<InputScratch<A>> scratch;
  for (size_t i = 0; i < n; ++i) scratch.emplace_back(plans[i], os.w, false);
  for (int64_t plane = begin; plane < end; ++plane) {
    const int64_t b = plane / os.c, c = plane % os.c;
    const T* planes[kMaxInputs];
    for (size_t i = 0; i < n; ++i) {
      planes[i] = data[i] + b * plans[i].s.sn + c * plans[i].s.sc;
      scratch[i].pooled_row = -1;
    }
    for (int64_t y = 0; y < os.h; ++y) {
      add_input_row<false, false>(planes[0], plans[0], y, w[0], scratch[0], acc.data());
      for (size_t i = 1; i < n; ++i)
        add_input_row<true, false>(planes[i], plans[i], y, w[i], scratch[i], acc.data());
      T* dst = out + b * os.sn + c * os.sc + y * os.sh;
      if (swish) neg_exp_row(acc.data(), e.data(), os.w);
      with_stride(os.sw, [&](auto sw) {
        if (swish) {
          for (int64_t x = 0; x < os.w; ++x)
            dst[x * sw] = static_cast<T>(acc[x] / (A(1) + e[x]));  // v * sigmoid(v)
        } else {
          for (int64_t x = 0; x < os.w; ++x) dst[x * sw] = static_cast<T>(acc[x]);
        }
      });
    }
  }
}

// Gradients of the planes [begin, end) and their partial weight gradients.
template <typename T>
RTSEG_SIMD_CLONES void backward_planes(const std::vector<Plan>& plans,
                                       const std::vector<const T*>& data,
                                       const std::vector<acc_t<T>>& w, bool swish,
                                       const T* grad_out, Strided4 gs,
                                       const std::vector<T*>& grads,
                                       const std::vector<Strided4>& grad_strides,
                                       double* weight_partials, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const int64_t n = static_cast<int64_t>(plans.size());
  const int64_t H = gs.h, W = gs.w;
  std::vector<A> sum(W), e(W), g_sum(W);  // the weighted sum, exp(-sum), its gradient
  std::vector<InputScratch<A>> scratch;
  for (int64_t i = 0; i < n; ++i) scratch.emplace_back(plans[i], W, true);
  for (int64_t plane = begin; plane < end; ++plane) {
    const int64_t b = plane / gs.c, c = plane % gs.c;
    const T* planes[kMaxInputs];
    T* gplanes[kMaxInputs];
    int64_t next_row[kMaxInputs];  // the first mid row whose gradient is not written yet
    for (int64_t i = 0; i < n; ++i) {
      const Strided4& g = grad_strides[i];
      planes[i] = data[i] + b * plans[i].s.sn + c * plans[i].s.sc;
      gplanes[i] = grads[i] + b * g.sn + c * g.sc;
      next_row[i] = 0;
      scratch[i].pooled_row = -1;
      std::fill(scratch[i].dot.begin(), scratch[i].dot.end(), A(0));
      if (plans[i].kind == Resize::PoolNearest) {  // arg-maxima scatter into it: zero it
        for (int64_t r = 0; r < g.h; ++r) {
          T* row = gplanes[i] + r * g.sh;
          with_stride(g.sw, [&](auto sw) {
            for (int64_t u = 0; u < g.w; ++u) row[u * sw] = T(0);
          });
        }
      }
    }
    // Writes zeros to the gradient rows [next_row, end) of a non-pooled input that no output
    // row reads.
    auto zero_rows = [&](int64_t i, int64_t end_row) {
      const Strided4& g = grad_strides[i];
      for (; next_row[i] < end_row; ++next_row[i]) {
        T* row = gplanes[i] + next_row[i] * g.sh;
        with_stride(g.sw, [&](auto sw) {
          for (int64_t u = 0; u < g.w; ++u) row[u * sw] = T(0);
        });
      }
    };
    const T* go_plane = grad_out + b * gs.sn + c * gs.sc;
    for (int64_t y = 0; y < H; ++y) {
      const T* go = go_plane + y * gs.sh;
      const A* g_row = g_sum.data();
      if (swish) {
        add_input_row<false, true>(planes[0], plans[0], y, w[0], scratch[0], sum.data());
        for (int64_t i = 1; i < n; ++i)
          add_input_row<true, true>(planes[i], plans[i], y, w[i], scratch[i], sum.data());
        neg_exp_row(sum.data(), e.data(), W);
        with_stride(gs.sw, [&](auto sw) {
          for (int64_t x = 0; x < W; ++x) {
            const A v = sum[x], sg = A(1) / (A(1) + e[x]);
            g_sum[x] = static_cast<A>(go[x * sw]) * sg * (A(1) + v * (A(1) - sg));
          }
        });
      } else {
        for (int64_t i = 0; i < n; ++i)  // only the pooled rows and their arg-maxima
          if (plans[i].kind == Resize::PoolNearest)
            pool_row<true>(planes[i], plans[i], plans[i].rows[y], scratch[i]);
        if (std::is_same<T, A>::value && gs.sw == 1) {
          g_row = reinterpret_cast<const A*>(go);
        } else {
          with_stride(gs.sw, [&](auto sw) {
            for (int64_t x = 0; x < W; ++x) g_sum[x] = static_cast<A>(go[x * sw]);
          });
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        const Plan& p = plans[i];
        InputScratch<A>& sc = scratch[i];
        const bool pooled = p.kind == Resize::PoolNearest;
        const int64_t r = p.rows[y], first = p.row_start[r], last = p.row_start[r + 1] - 1;
        const T* src = planes[i] + r * p.s.sh;
        if (pooled) add_products(g_row, sc.pooled.data(), 1, p, sc.dot.data());
        else add_products(g_row, src, p.s.sw, p, sc.dot.data());
        // The gradient of mid row r is vals * scale: w_i * g_row itself when that is the only
        // output row reading it, column for column, else the sum over its rows and columns.
        const A* vals = g_row;
        A scale = w[i];
        if (first != last || p.cols_kind != Cols::Same) {
          add_columns(g_row, w[i], p, y == first, sc.mid_grad.data());
          if (y != last) continue;
          vals = sc.mid_grad.data();
          scale = A(1);
        }
        const Strided4& g = grad_strides[i];
        if (pooled) {
          T* gplane = gplanes[i];
          const int32_t* arg_row = sc.arg_row.data();
          const int32_t* arg_col = sc.arg_col.data();
          for (int64_t q = 0; q < p.mid_w; ++q)
            gplane[arg_row[q] * g.sh + arg_col[q] * g.sw] += static_cast<T>(scale * vals[q]);
        } else {
          zero_rows(i, r);
          next_row[i] = r + 1;
          T* dst = gplanes[i] + r * g.sh;
          with_stride(g.sw, [&](auto sw) {
            for (int64_t k = 0; k < p.mid_w; ++k) dst[k * sw] = static_cast<T>(scale * vals[k]);
          });
        }
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      if (plans[i].kind != Resize::PoolNearest) zero_rows(i, plans[i].mid_h);
      double partial = 0;  // in column order: fixed for any thread count
      for (A d : scratch[i].dot) partial += d;
      weight_partials[plane * n + i] = partial;
    }
  }
}

// Elements one plane task reads and writes: the output plane and every input plane (a pooled input
// costs four times its output).
int64_t plane_elements(const std::vector<Plan>& plans, const Strided4& out) {
  int64_t n = out.h * out.w;
  for (const Plan& p : plans) n += p.s.h * p.s.w;
  return n;
}

template <typename T>
void forward(const std::vector<Plan>& plans, const std::vector<const T*>& data,
             const std::vector<acc_t<T>>& w, bool swish, T* out, Strided4 os) {
  at::parallel_for(0, os.n * os.c, grain_for(plane_elements(plans, os), kMinTaskElements),
                   [&](int64_t begin, int64_t end) {
                     forward_planes(plans, data, w, swish, out, os, begin, end);
                   });
}

template <typename T>
void backward(const std::vector<Plan>& plans, const std::vector<const T*>& data,
              const std::vector<acc_t<T>>& w, bool swish, const T* grad_out, Strided4 gs,
              const std::vector<T*>& grads, const std::vector<Strided4>& grad_strides,
              double* weight_partials) {
  at::parallel_for(0, gs.n * gs.c, grain_for(plane_elements(plans, gs), kMinTaskElements),
                   [&](int64_t begin, int64_t end) {
                     backward_planes(plans, data, w, swish, grad_out, gs, grads, grad_strides,
                                     weight_partials, begin, end);
                   });
}

// Gradient buffers in output_format (as the fake kernel allocates them), without copying inputs.
at::Tensor empty_in_output_format(const at::Tensor& t) {
  return empty_output_like(t);
}

at::Tensor scalar_weighted_sum_cpu(at::TensorList inputs, const at::Tensor& weights,
                                   bool normalize, double eps,
                                   std::optional<c10::string_view> activation) {
  check_args(inputs, weights, activation);
  const at::Tensor& first = inputs[0];
  auto out = empty_in_output_format(first);
  if (out.numel() == 0) return out;
  const auto plans = make_plans(inputs);
  const auto w = fused_weights(raw_weights(weights), normalize, eps);
  AT_DISPATCH_FLOATING_TYPES(first.scalar_type(), "scalar_weighted_sum_cpu", [&] {
    std::vector<const scalar_t*> data;
    for (const auto& t : inputs) data.push_back(t.const_data_ptr<scalar_t>());
    forward<scalar_t>(plans, data, std::vector<acc_t<scalar_t>>(w.begin(), w.end()),
                      activation.has_value(), out.mutable_data_ptr<scalar_t>(), strided4(out));
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> scalar_weighted_sum_backward_cpu(
    const at::Tensor& grad_output, at::TensorList inputs, const at::Tensor& weights,
    bool normalize, double eps, std::optional<c10::string_view> activation) {
  check_args(inputs, weights, activation);
  check_dim(grad_output, 4, "grad_output");
  check_same(grad_output, inputs[0], "grad_output", "inputs[0]");
  TORCH_CHECK(grad_output.sizes() == inputs[0].sizes(), "grad_output: expected shape ",
              inputs[0].sizes(), " (that of inputs[0]), got ", grad_output.sizes());
  const auto plans = make_plans(inputs);
  const int64_t n = static_cast<int64_t>(inputs.size());
  std::vector<at::Tensor> grads;
  for (int64_t i = 0; i < n; ++i) grads.push_back(empty_in_output_format(inputs[i]));
  const int64_t planes = grad_output.size(0) * grad_output.size(1);
  std::vector<double> partials(planes * n, 0.0);
  const auto raw = raw_weights(weights);
  const auto w = fused_weights(raw, normalize, eps);
  if (planes > 0) {
    AT_DISPATCH_FLOATING_TYPES(inputs[0].scalar_type(), "scalar_weighted_sum_backward_cpu", [&] {
      std::vector<const scalar_t*> data;
      std::vector<scalar_t*> grad_data;
      std::vector<Strided4> grad_strides;
      for (int64_t i = 0; i < n; ++i) {
        data.push_back(inputs[i].const_data_ptr<scalar_t>());
        grad_data.push_back(grads[i].mutable_data_ptr<scalar_t>());
        grad_strides.push_back(strided4(grads[i]));
      }
      backward<scalar_t>(plans, data, std::vector<acc_t<scalar_t>>(w.begin(), w.end()),
                         activation.has_value(), grad_output.const_data_ptr<scalar_t>(),
                         strided4(grad_output), grad_data, grad_strides, partials.data());
    });
  }
  // dL/dw_i, summed over planes in order, then through the normalisation when it is on.
  std::vector<double> gw(n, 0.0);
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t i = 0; i < n; ++i) gw[i] += partials[p * n + i];
  if (normalize) {
    double total = eps, dot = 0;
    for (int64_t i = 0; i < n; ++i) total += raw[i] > 0 ? raw[i] : 0.0;
    for (int64_t i = 0; i < n; ++i) dot += gw[i] * (raw[i] > 0 ? raw[i] : 0.0);
    for (int64_t i = 0; i < n; ++i)
      gw[i] = raw[i] > 0 ? gw[i] / total - dot / (total * total) : 0.0;
  }
  at::Tensor grad_weights = at::empty({n}, weights.options());
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "scalar_weighted_sum_grad_weights", [&] {
    scalar_t* g = grad_weights.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) g[i] = static_cast<scalar_t>(gw[i]);
  });
  return {grads, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("scalar_weighted_sum", &scalar_weighted_sum_cpu);
  m.impl("scalar_weighted_sum_backward", &scalar_weighted_sum_backward_cpu);
}

}  // namespace rtseg
