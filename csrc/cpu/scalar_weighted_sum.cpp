// scalar_weighted_sum on the CPU. One task per (batch, channel) plane: each output row reads every
// input at its own resolution (nearest rows/columns from precomputed tables, a 3x3/2 max-pooled row
// computed once per pooled row), so no resized copy exists. In the backward a task owns its planes
// of every input gradient, so its scatter never races, and the weight gradients are per-plane
// partial sums reduced in plane order: bitwise deterministic for any thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "common/resize.h"
#include "torch_utils.h"

namespace rtseg {
namespace {

constexpr int64_t kMaxInputs = 4;
// Planes per task so that a task covers at least this many output elements: small calls then run
// inline instead of paying for waking the thread pool.
constexpr int64_t kMinTaskElements = 1 << 17;


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

// The fused weights w_i (raw, or BiFPN's relu(v) / (sum relu(v) + eps)) in double.
std::vector<double> fused_weights(const at::Tensor& weights, bool normalize, double eps) {
  const at::Tensor v = weights.to(at::kDouble).contiguous();
  std::vector<double> w(v.const_data_ptr<double>(), v.const_data_ptr<double>() + v.numel());
  if (normalize) {
    double total = eps;
    for (double& x : w) total += (x = x > 0 ? x : 0.0);
    for (double& x : w) x /= total;
  }
  return w;
}

// How input i is read: its strides, its resize kind and the nearest tables from the output grid
// into the grid the nearest step reads (the input itself, or its pooled map).
struct Plan {
  Strided4 s;
  Resize kind;
  int64_t mid_h, mid_w;
  std::vector<int64_t> rows, cols;
  std::vector<int64_t> col_offsets;  // cols[x] * s.sw
};

// Calls f(stride) with a compile-time 1 when the stride is 1, so that unit-stride row loops
// vectorise.
template <typename F> void with_stride(int64_t stride, F&& f) {
  if (stride == 1) f(std::integral_constant<int64_t, 1>());
  else f(stride);
}

std::vector<Plan> make_plans(at::TensorList inputs) {
  const int64_t H = inputs[0].size(2), W = inputs[0].size(3);
  std::vector<Plan> plans;
  for (const auto& t : inputs) {
    Plan p{strided4(t), resize_kind(t.size(2), t.size(3), H, W), t.size(2), t.size(3), {}, {}, {}};
    if (p.kind == Resize::PoolNearest) {
      p.mid_h = pooled_size(p.s.h);
      p.mid_w = pooled_size(p.s.w);
    }
    const float sy = nearest_scale(p.mid_h, H), sx = nearest_scale(p.mid_w, W);
    for (int64_t y = 0; y < H; ++y) p.rows.push_back(nearest_source(y, sy, p.mid_h));
    for (int64_t x = 0; x < W; ++x) {
      p.cols.push_back(nearest_source(x, sx, p.mid_w));
      p.col_offsets.push_back(p.cols.back() * p.s.sw);
    }
    plans.push_back(std::move(p));
  }
  return plans;
}

// Per-task scratch for reading one input's rows at the output resolution.
template <typename T> struct RowReader {
  const Plan* plan;
  const T* plane;  // this task's (b, c) plane of the input
  std::vector<acc_t<T>> column_max, pooled;  // 3-row maximum per column, then the pooled row
  int64_t pooled_row = -1;                   // which pooled row `pooled` holds

  RowReader(const Plan& p, const T* data, int64_t b, int64_t c)
      : plan(&p), plane(data + b * p.s.sn + c * p.s.sc) {
    if (p.kind == Resize::PoolNearest) {
      column_max.resize(p.s.w);
      pooled.resize(p.mid_w);
    }
  }

  void pool_row(int64_t py) {
    if (py == pooled_row) return;
    pooled_row = py;
    const Strided4& s = plan->s;
    const Window rw = pool_window(py, s.h);
    std::fill(column_max.begin(), column_max.end(), -std::numeric_limits<acc_t<T>>::infinity());
    for (int64_t r = rw.begin; r < rw.end; ++r) {
      const T* src = plane + r * s.sh;
      with_stride(s.sw, [&](auto sw) {
        for (int64_t u = 0; u < s.w; ++u) {
          const acc_t<T> v = src[u * sw];
          column_max[u] = pool_takes(v, column_max[u]) ? v : column_max[u];
        }
      });
    }
    for (int64_t q = 0; q < plan->mid_w; ++q) {
      const Window cw = pool_window(q, s.w);
      acc_t<T> m = -std::numeric_limits<acc_t<T>>::infinity();
      for (int64_t u = cw.begin; u < cw.end; ++u)
        m = pool_takes(column_max[u], m) ? column_max[u] : m;
      pooled[q] = m;
    }
  }

  // out[x] (+)= w * resized(y, x) for every output column x.
  template <bool Accumulate> void row(int64_t y, acc_t<T> w, acc_t<T>* out) {
    const Strided4& s = plan->s;
    const int64_t W = static_cast<int64_t>(plan->cols.size());
    const int64_t* cols = plan->cols.data();
    auto put = [&](int64_t x, acc_t<T> v) {
      if (Accumulate) out[x] += w * v; else out[x] = w * v;
    };
    if (plan->kind == Resize::PoolNearest) {
      pool_row(plan->rows[y]);
      if (plan->mid_w == W) {
        for (int64_t x = 0; x < W; ++x) put(x, pooled[x]);
      } else {
        for (int64_t x = 0; x < W; ++x) put(x, pooled[cols[x]]);
      }
    } else if (plan->kind == Resize::Nearest) {
      const T* src = plane + plan->rows[y] * s.sh;
      const int64_t* offsets = plan->col_offsets.data();
      for (int64_t x = 0; x < W; ++x) put(x, static_cast<acc_t<T>>(src[offsets[x]]));
    } else {
      const T* src = plane + y * s.sh;
      with_stride(s.sw, [&](auto sw) {
        for (int64_t x = 0; x < W; ++x) put(x, static_cast<acc_t<T>>(src[x * sw]));
      });
    }
  }
};

template <typename A> A sigmoid(A v) { return A(1) / (A(1) + std::exp(-v)); }

template <typename T>
void forward(const std::vector<Plan>& plans, const std::vector<const T*>& data,
             const std::vector<acc_t<T>>& w, bool swish, T* out, Strided4 os) {
  using A = acc_t<T>;
  at::parallel_for(0, os.n * os.c, grain_for(os.h * os.w, kMinTaskElements), [&](int64_t begin, int64_t end) {
    std::vector<A> acc(os.w);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / os.c, c = plane % os.c;
      std::vector<RowReader<T>> readers;
      for (size_t i = 0; i < plans.size(); ++i) readers.emplace_back(plans[i], data[i], b, c);
      for (int64_t y = 0; y < os.h; ++y) {
        readers[0].template row<false>(y, w[0], acc.data());
        for (size_t i = 1; i < readers.size(); ++i)
          readers[i].template row<true>(y, w[i], acc.data());
        T* dst = out + b * os.sn + c * os.sc + y * os.sh;
        with_stride(os.sw, [&](auto sw) {
          if (swish) {
            for (int64_t x = 0; x < os.w; ++x) dst[x * sw] = static_cast<T>(acc[x] * sigmoid(acc[x]));
          } else {
            for (int64_t x = 0; x < os.w; ++x) dst[x * sw] = static_cast<T>(acc[x]);
          }
        });
      }
    }
  });
}

template <typename T>
void backward(const std::vector<Plan>& plans, const std::vector<const T*>& data,
              const std::vector<acc_t<T>>& w, bool swish, const T* grad_out, Strided4 gs,
              const std::vector<T*>& grads, const std::vector<Strided4>& grad_strides,
              double* weight_partials) {
  using A = acc_t<T>;
  const int64_t n = static_cast<int64_t>(plans.size());
  const int64_t H = gs.h, W = gs.w;
  at::parallel_for(0, gs.n * gs.c, grain_for(H * W, kMinTaskElements), [&](int64_t begin, int64_t end) {
    std::vector<std::vector<A>> resized(n, std::vector<A>(W));
    std::vector<std::vector<A>> pooled_grad(n);
    std::vector<A> sum(W), g_sum(W);  // the weighted sum, and the gradient before the activation
    std::vector<A> column_max;
    std::vector<int32_t> column_row;  // 32-bit like the float maxima, so the selects vectorise
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / gs.c, c = plane % gs.c;
      std::vector<RowReader<T>> readers;
      std::vector<T*> gplane(n);
      double partial[kMaxInputs] = {0, 0, 0, 0};
      for (int64_t i = 0; i < n; ++i) {
        readers.emplace_back(plans[i], data[i], b, c);
        gplane[i] = grads[i] + b * grad_strides[i].sn + c * grad_strides[i].sc;
        if (plans[i].kind == Resize::PoolNearest)
          pooled_grad[i].assign(plans[i].mid_h * plans[i].mid_w, A(0));
      }
      for (int64_t y = 0; y < H; ++y) {
        for (int64_t i = 0; i < n; ++i) readers[i].template row<false>(y, A(1), resized[i].data());
        const T* go = grad_out + b * gs.sn + c * gs.sc + y * gs.sh;
        if (swish) {
          for (int64_t x = 0; x < W; ++x) sum[x] = w[0] * resized[0][x];
          for (int64_t i = 1; i < n; ++i)
            for (int64_t x = 0; x < W; ++x) sum[x] += w[i] * resized[i][x];
          for (int64_t x = 0; x < W; ++x) {
            const A v = sum[x], sg = sigmoid(v);
            g_sum[x] = static_cast<A>(go[x * gs.sw]) * sg * (A(1) + v * (A(1) - sg));
          }
        } else {
          for (int64_t x = 0; x < W; ++x) g_sum[x] = go[x * gs.sw];
        }
        for (int64_t i = 0; i < n; ++i) {
          const Plan& p = plans[i];
          const Strided4& s = grad_strides[i];
          const A* r = resized[i].data();
          A dot = 0;  // one row in A (vectorised; fixed order per build), rows summed in double
#pragma omp simd reduction(+ : dot)
          for (int64_t x = 0; x < W; ++x) dot += g_sum[x] * r[x];
          partial[i] += dot;
          if (p.kind == Resize::Identity) {
            T* dst = gplane[i] + y * s.sh;
            with_stride(s.sw, [&](auto sw) {
              for (int64_t x = 0; x < W; ++x) dst[x * sw] = static_cast<T>(w[i] * g_sum[x]);
            });
          } else if (p.kind == Resize::Nearest) {
            T* dst = gplane[i] + p.rows[y] * s.sh;
            for (int64_t x = 0; x < W; ++x)
              dst[p.cols[x] * s.sw] += static_cast<T>(w[i] * g_sum[x]);
          } else {
            A* dst = pooled_grad[i].data() + p.rows[y] * p.mid_w;
            for (int64_t x = 0; x < W; ++x) dst[p.cols[x]] += w[i] * g_sum[x];
          }
        }
      }
      // Max-pool backward: each pooled gradient goes to its window's arg-max.
      for (int64_t i = 0; i < n; ++i) {
        const Plan& p = plans[i];
        if (p.kind != Resize::PoolNearest) continue;
        const Strided4& s = p.s;
        const Strided4& gsi = grad_strides[i];
        const T* src = readers[i].plane;
        column_max.resize(s.w);
        column_row.resize(s.w);
        for (int64_t py = 0; py < p.mid_h; ++py) {
          const Window rw = pool_window(py, s.h);
          const A* g = pooled_grad[i].data() + py * p.mid_w;
          // Separable arg-max: per column the first row holding its maximum (branch-free, so it
          // vectorises), then per window the column with the greatest value, ties going to the
          // smaller row, then the smaller column: max_pool2d's row-major first maximum.
          std::fill(column_max.begin(), column_max.end(), -std::numeric_limits<A>::infinity());
          std::fill(column_row.begin(), column_row.end(), static_cast<int32_t>(rw.begin));
          int32_t nans = 0;
          for (int64_t r = rw.begin; r < rw.end; ++r) {
            const T* row = src + r * s.sh;
            with_stride(s.sw, [&](auto sw) {
              A* cm = column_max.data();
              int32_t* cr = column_row.data();
              const int64_t width = s.w;  // a local bound: stores to cr could alias s.w
              const int32_t r32 = static_cast<int32_t>(r);
              int32_t row_nans = 0;
              for (int64_t u = 0; u < width; ++u) {
                const A v = row[u * sw];
                const bool take = __builtin_isgreater(v, cm[u]);  // quiet compare: if-converts
                row_nans += v != v;
                cm[u] = take ? v : cm[u];
                cr[u] = take ? r32 : cr[u];
              }
              nans += row_nans;
            });
          }
          for (int64_t px = 0; px < p.mid_w; ++px) {
            const Window cw = pool_window(px, s.w);
            int64_t best_r = rw.begin, best_u = cw.begin;
            if (nans > 0) {  // max_pool2d takes the last NaN: the exact scan
              A m = -std::numeric_limits<A>::infinity();
              for (int64_t r = rw.begin; r < rw.end; ++r)
                for (int64_t u = cw.begin; u < cw.end; ++u) {
                  const A v = src[r * s.sh + u * s.sw];
                  if (pool_takes(v, m)) { m = v; best_r = r; best_u = u; }
                }
            } else {
              A m = -std::numeric_limits<A>::infinity();
              for (int64_t u = cw.begin; u < cw.end; ++u) {  // selects: random data mispredicts
                const bool take =
                    column_max[u] > m || (column_max[u] == m && column_row[u] < best_r);
                m = take ? column_max[u] : m;
                best_r = take ? column_row[u] : best_r;
                best_u = take ? u : best_u;
              }
            }
            gplane[i][best_r * gsi.sh + best_u * gsi.sw] += static_cast<T>(g[px]);
          }
        }
      }
      for (int64_t i = 0; i < n; ++i) weight_partials[plane * n + i] = partial[i];
    }
  });
}

at::Tensor scalar_weighted_sum_cpu(at::TensorList inputs, const at::Tensor& weights,
                                   bool normalize, double eps,
                                   std::optional<c10::string_view> activation) {
  check_args(inputs, weights, activation);
  const at::Tensor& first = inputs[0];
  auto out = at::empty(first.sizes(), first.options().memory_format(output_format(first)));
  if (out.numel() == 0) return out;
  const auto plans = make_plans(inputs);
  const auto w = fused_weights(weights, normalize, eps);
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
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor like = dense(inputs[i]);
    grads.push_back(plans[i].kind == Resize::Identity ? at::empty_like(like)
                                                      : at::zeros_like(like));
  }
  const int64_t planes = grad_output.size(0) * grad_output.size(1);
  std::vector<double> partials(planes * n, 0.0);
  const auto w = fused_weights(weights, normalize, eps);
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
    const at::Tensor v = weights.to(at::kDouble).contiguous();
    const double* raw = v.const_data_ptr<double>();
    double total = eps, dot = 0;
    for (int64_t i = 0; i < n; ++i) total += raw[i] > 0 ? raw[i] : 0.0;
    for (int64_t i = 0; i < n; ++i) dot += gw[i] * (raw[i] > 0 ? raw[i] : 0.0);
    for (int64_t i = 0; i < n; ++i)
      gw[i] = raw[i] > 0 ? gw[i] / total - dot / (total * total) : 0.0;
  }
  at::Tensor grad_weights =
      at::tensor(gw, at::TensorOptions().dtype(at::kDouble)).to(weights.scalar_type());
  return {grads, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("scalar_weighted_sum", &scalar_weighted_sum_cpu);
  m.impl("scalar_weighted_sum_backward", &scalar_weighted_sum_backward_cpu);
}

}  // namespace rtseg
