// Emulated run of csrc/cuda/spatial_aware_pool.cu (see __init__.py): forward and backward of
// every dtype, both layouts and both count_include_pad modes against a direct computation of
// avg_pool2d and of its adjoint. Prints one line per failing case and exits non-zero on any.
#include "emulated.cpp"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using namespace rtseg;

template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::Float32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::Float64; };
template <> struct DTypeOf<__half> { static constexpr DType value = DType::Float16; };
template <> struct DTypeOf<__nv_bfloat16> { static constexpr DType value = DType::BFloat16; };

template <typename T> double to_double(T v) { return double(float(v)); }
double to_double(double v) { return v; }
template <typename T> T from_double(double v) { return T(float(v)); }
template <> double from_double<double>(double v) { return v; }

Strided4 dense(int64_t n, int64_t c, int64_t h, int64_t w, bool channels_last) {
  return channels_last ? Strided4{n, c, h, w, h * w * c, 1, w * c, c}
                       : Strided4{n, c, h, w, c * h * w, h * w, w, 1};
}

template <typename T>
bool check(int64_t B, int64_t C, int64_t H, int64_t W, int levels, bool include_pad,
           bool channels_last, double tol) {
  std::mt19937 gen(unsigned(H * 131 + W * 7 + levels));
  std::normal_distribution<double> normal;
  const Strided4 xs = dense(B, C, H, W, channels_last);
  std::vector<T> x(B * C * H * W);
  std::vector<double> xd(x.size());  // NCHW copy of the stored values
  const auto at = [&](const Strided4& s, int64_t b, int64_t c, int64_t y, int64_t k) {
    return b * s.sn + c * s.sc + y * s.sh + k * s.sw;
  };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t k = 0; k < W; ++k) {
          const T v = from_double<T>(normal(gen));
          x[at(xs, b, c, y, k)] = v;
          xd[((b * C + c) * H + y) * W + k] = to_double(v);
        }
  SapOutputs outs{};
  SapGrads grads{};
  std::vector<std::vector<T>> out(levels), grad(levels);
  for (int j = 0; j < levels; ++j) {
    const int64_t s = int64_t(2) << j;
    outs.shape[j] = grads.shape[j] =
        dense(B, C, sap_out_size(H, s), sap_out_size(W, s), channels_last);
    out[j].resize(B * C * outs.shape[j].h * outs.shape[j].w);
    grad[j].resize(out[j].size());
    for (auto& g : grad[j]) g = from_double<T>(normal(gen));
    outs.data[j] = out[j].data();
    grads.data[j] = grad[j].data();
  }
  std::vector<acc_t<T>> workspace(4 * sap_workspace_cells(B * C, H, W, levels) + 1);
  std::vector<T> grad_x(x.size());
  if (launch_spatial_aware_pool_forward(x.data(), xs, outs, levels, include_pad,
                                        workspace.data(), DTypeOf<T>::value, nullptr) ||
      launch_spatial_aware_pool_backward(grads, grad_x.data(), xs, levels, include_pad,
                                         workspace.data(), DTypeOf<T>::value, nullptr)) {
    std::printf("launch failed\n");
    return false;
  }
  double fwd_err = 0, bwd_err = 0;
  std::vector<double> expected_grad(x.size(), 0.0);
  for (int j = 0; j < levels; ++j) {
    const int64_t s = int64_t(2) << j;
    const Strided4& o = outs.shape[j];
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t oy = 0; oy < o.h; ++oy)
          for (int64_t ox = 0; ox < o.w; ++ox) {
            const double count = double(sap_window_count(oy, s, H, include_pad) *
                                        sap_window_count(ox, s, W, include_pad));
            const double g = to_double(grad[j][at(o, b, c, oy, ox)]) / count;
            double sum = 0;
            for (int64_t y = std::max<int64_t>(oy * s - s, 0); y <= oy * s + s && y < H; ++y)
              for (int64_t k = std::max<int64_t>(ox * s - s, 0); k <= ox * s + s && k < W; ++k) {
                sum += xd[((b * C + c) * H + y) * W + k];
                expected_grad[at(xs, b, c, y, k)] += g;
              }
            fwd_err = std::max(fwd_err, std::fabs(to_double(out[j][at(o, b, c, oy, ox)]) -
                                                  sum / count));
          }
  }
  for (size_t i = 0; i < x.size(); ++i)
    bwd_err = std::max(bwd_err, std::fabs(to_double(grad_x[i]) - expected_grad[i]));
  const bool ok = fwd_err <= tol && bwd_err <= tol;
  if (!ok)
    std::printf("FAIL %zu-byte B%ld C%ld %ldx%ld levels %d include_pad %d channels_last %d: "
                "forward error %.3g, backward error %.3g\n", sizeof(T), long(B), long(C),
                long(H), long(W), levels, int(include_pad), int(channels_last), fwd_err,
                bwd_err);
  return ok;
}

int main() {
  int failures = 0, cases = 0;
  // Several tiles (64 per side for float cells, 32 for double), sizes that are not multiples
  // of any stride, maps smaller than the largest window, thin maps.
  const int64_t shapes[][2] = {{64, 64}, {13, 21}, {1, 1}, {3, 5}, {2, 67}, {130, 200}, {65, 129}};
  for (const auto& hw : shapes)
    for (int levels : {1, 2, 3, 6})
      for (bool include_pad : {true, false})
        for (bool channels_last : {false, true}) {
          failures += !check<float>(2, 3, hw[0], hw[1], levels, include_pad, channels_last, 1e-5);
          failures += !check<double>(1, 2, hw[0], hw[1], levels, include_pad, channels_last,
                                     1e-12);
          cases += 2;
        }
  failures += !check<__half>(1, 2, 100, 150, 5, true, false, 1e-2);
  failures += !check<__nv_bfloat16>(1, 2, 70, 90, 5, false, true, 5e-2);
  cases += 2;
  std::printf("%d of %d cases failed\n", failures, cases);
  return failures != 0;
}
