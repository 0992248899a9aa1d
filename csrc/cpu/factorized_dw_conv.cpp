// factorized_dw_conv on the CPU. Kernels are written for order="vh" (vertical conv, then
// horizontal); order="hv" runs them on H/W-transposed views. Every loop nest runs inside
// simd_dispatch (full-width vectors where the CPU has AVX-512); the intermediate and the
// gradient rows live in buffers padded with d zeros each side, so the horizontal taps need no
// bounds checks and every inner loop is one straight vector loop.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/output_arena.h"
#include "cpu/simd_dispatch.h"
#include "factorized_dw_conv.h"

namespace rtseg {
namespace {

// On the CPU the kernels run in float32 and float64 only, which are their own accumulation types.
template <typename T>
DWStage<T> load_stage(const DWStagePtrs& p, int64_t c) {
  static_assert(std::is_same<T, acc_t<T>>::value, "CPU kernels compute in the storage type");
  return DWStage<T>::template load<T>(p, c, [](T v) { return v; });
}

// Row y of a plane as a unit-stride array: the row itself, a copy in `buf` for other strides, or
// `zeros` outside the image.
template <typename T>
RTSEG_SIMD_BODY inline const T* plane_row(const T* plane, const Strided4& s, int64_t y, T* buf,
                                          const T* zeros) {
  if (y < 0 || y >= s.h) return zeros;
  const T* src = plane + y * s.sh;
  if (s.sw == 1) return src;
  for (int64_t i = 0; i < s.w; ++i) buf[i] = src[i * s.sw];
  return buf;
}

// Where a computed row goes: straight into the output when unit-stride, else into `buf` and then
// scattered by store_row.
template <typename T>
T* row_target(T* plane, const Strided4& s, int64_t y, T* buf) {
  return s.sw == 1 ? plane + y * s.sh : buf;
}

template <typename T>
RTSEG_SIMD_BODY inline void store_row(const T* row, T* plane, const Strided4& s, int64_t y,
                                      const T* buf) {
  if (row != buf) return;
  T* dst = plane + y * s.sh;
  for (int64_t i = 0; i < s.w; ++i) dst[i * s.sw] = row[i];
}

// A row of n values between d zeros on each side; data() points at the first value.
template <typename T>
struct PaddedRow {
  std::vector<T> storage;
  int64_t pad;
  PaddedRow(int64_t n, int64_t d) : storage(n + 2 * d, T(0)), pad(d) {}
  T* data() { return storage.data() + pad; }
};

// PReLU, max(z, 0) + slope * min(z, 0), with slope 1 standing in for no activation. Written as
// selects against zero: GCC turns `z > 0 ? z : slope * z` into a branch per element (the
// conditional multiply may trap under -ftrapping-math) unless AVX-512 masking is available.
template <typename T>
RTSEG_SIMD_BODY inline T act(T z, T slope) {
  return (z < T(0) ? T(0) : z) + slope * (z < T(0) ? z : T(0));
}

// d act / dz: at z == 0 both branches count, as autograd differentiates the clamp pair.
template <typename T>
RTSEG_SIMD_BODY inline T act_grad(T z, T slope, bool prelu) {
  return prelu ? T(z >= T(0) ? 1 : 0) + (z <= T(0) ? slope : T(0)) : T(1);
}

template <typename T>
void forward(const T* x, Strided4 xs, T* out, Strided4 os, int64_t d, DWStagePtrs first_p,
             DWStagePtrs second_p) {
  const int64_t H = xs.h, W = xs.w;
  at::parallel_for(0, xs.n * xs.c, grain_for(H * W), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(5 * W, T(0));
    T *zeros = buf.data(), *above = zeros + W, *center = above + W, *below = center + W,
      *obuf = below + W;
    PaddedRow<T> tpad(W, d);
    T* t = tpad.data();
    simd_dispatch([&]() RTSEG_SIMD_BODY {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / xs.c, c = task % xs.c;
        const auto first = load_stage<T>(first_p, c);
        const auto second = load_stage<T>(second_p, c);
        const T* plane = x + b * xs.sn + c * xs.sc;
        T* out_plane = out + b * os.sn + c * os.sc;
        for (int64_t y = 0; y < H; ++y) {
          const T* a = plane_row(plane, xs, y - d, above, zeros);
          const T* m = plane_row(plane, xs, y, center, zeros);
          const T* z = plane_row(plane, xs, y + d, below, zeros);
          for (int64_t i = 0; i < W; ++i)
            t[i] = act(first.affine(first.conv(a[i], m[i], z[i])), first.slope);
          T* o = row_target(out_plane, os, y, obuf);
          for (int64_t i = 0; i < W; ++i)
            o[i] = act(second.affine(second.conv(t[i - d], t[i], t[i + d])), second.slope);
          store_row(o, out_plane, os, y, obuf);
        }
      }
    });
  });
}

// Channel-contiguous views (channels_last): one task per (batch, row) over all channels, so every
// inner loop runs along C. Where pixels are adjacent (pixel stride C) the loops take chunks of
// P pixels as flat arrays of P * C values, with the per-channel parameters repeated P times, so
// that a few channels still fill whole vectors; otherwise P = 1.
template <typename T>
struct StageArrays {
  std::vector<T> w0, w1, w2, scale, shift, slope;  // P * C each

  // out = act(scale * (w0 * a + w1 * m + w2 * z) + shift) over n <= P * C flat values.
  RTSEG_SIMD_BODY void apply(const T* a, const T* m, const T* z, T* out, int64_t n) const {
    const T *p0 = w0.data(), *p1 = w1.data(), *p2 = w2.data(), *sc = scale.data(),
            *sh = shift.data(), *sl = slope.data();
#pragma omp simd
    for (int64_t k = 0; k < n; ++k)
      out[k] = act(sc[k] * (p0[k] * a[k] + p1[k] * m[k] + p2[k] * z[k]) + sh[k], sl[k]);
  }

  // apply() as the vertical conv at m, a chunk of row y of a map with H rows of stride sh: its
  // taps are the rows d above and below, or `zeros` outside the map.
  RTSEG_SIMD_BODY void apply_vertical(const T* m, int64_t y, int64_t d, int64_t H, int64_t sh,
                                      const T* zeros, T* out, int64_t n) const {
    apply(y - d >= 0 ? m - d * sh : zeros, m, y + d < H ? m + d * sh : zeros, out, n);
  }
};

template <typename T>
StageArrays<T> make_stage_arrays(const DWStagePtrs& p, int64_t C, int64_t P) {
  StageArrays<T> a;
  for (auto* v : {&a.w0, &a.w1, &a.w2, &a.scale, &a.shift, &a.slope}) v->resize(P * C);
  for (int64_t c = 0; c < C; ++c) {
    const auto s = load_stage<T>(p, c);
    for (int64_t k = c; k < P * C; k += C) {
      a.w0[k] = s.w0, a.w1[k] = s.w1, a.w2[k] = s.w2;
      a.scale[k] = s.scale, a.shift[k] = s.shift, a.slope[k] = s.prelu ? s.slope : T(1);
    }
  }
  return a;
}

// Pixels per chunk: enough for 256 values when every tensor's rows are dense (pixel stride C,
// channel stride 1), else 1.
inline int64_t chunk_pixels(int64_t C, int64_t W, std::initializer_list<Strided4> views) {
  for (const auto& s : views)
    if (s.sw != C || s.sc != 1) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(W, 256 / C));
}

template <typename T>
void forward_channels_last(const T* x, Strided4 xs, T* out, Strided4 os, int64_t d,
                           DWStagePtrs first_p, DWStagePtrs second_p) {
  const int64_t C = xs.c, H = xs.h, W = xs.w, P = chunk_pixels(C, W, {xs, os});
  const auto first = make_stage_arrays<T>(first_p, C, P);
  const auto second = make_stage_arrays<T>(second_p, C, P);
  at::parallel_for(0, xs.n * H, grain_for(W * C), [&](int64_t begin, int64_t end) {
    PaddedRow<T> tpad(W * C, d * C);
    T* t = tpad.data();
    std::vector<T> zeros(P * C, T(0)), obuf(C);
    simd_dispatch([&]() RTSEG_SIMD_BODY {
      const T *v0 = second.w0.data(), *v1 = second.w1.data(), *v2 = second.w2.data(),
              *s2 = second.scale.data(), *b2 = second.shift.data(), *a2 = second.slope.data();
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / H, y = task % H;
        const T* row = x + b * xs.sn + y * xs.sh;
        T* out_row = out + b * os.sn + y * os.sh;
        // The second stage trails the first by d pixels, so that the intermediate it reads is
        // still in L1.
        int64_t done = 0;  // output pixels written
        for (int64_t i = 0; done < W; i += P) {
          if (i < W) {
            first.apply_vertical(row + i * xs.sw, y, d, H, xs.sh, zeros.data(), t + i * C,
                                 std::min(P, W - i) * C);
          }
          const int64_t ready = i + P >= W ? W : i + P - d;  // pixels whose taps are all known
          while (done < ready) {
            const int64_t j = done, pixels = std::min(P, ready - j), n = pixels * C;
            done += pixels;
            const T* tj = t + j * C;
            T* o = os.sc == 1 ? out_row + j * os.sw : obuf.data();
#pragma omp simd
            for (int64_t k = 0; k < n; ++k)
              o[k] = act(s2[k] * (v0[k] * tj[k - d * C] + v1[k] * tj[k] + v2[k] * tj[k + d * C]) +
                             b2[k],
                         a2[k]);
            if (o == obuf.data())  // P == 1 here
              for (int64_t c = 0; c < C; ++c) out_row[j * os.sw + c * os.sc] = o[c];
          }
        }
      }
    });
  });
}

// Channel-contiguous backward: one task per (batch, row) over all channels. A row's gradient at
// the first conv's output e only needs that row; grad_x at row y needs e at rows y - d, y, y + d.
// Each thread walks its rows in order, keeping the last 2d + 1 rows of e in a ring and writing
// grad_x rows as soon as their taps are there; it recomputes the d rows of e beyond each end of
// its range (without counting their parameter gradients). The parameter-gradient sums of each
// row go to partials (B * H, kDWGrads, C), which the caller sums over rows in order.
template <typename T>
void backward_channels_last(const T* grad_out, Strided4 gs, const T* x, Strided4 xs, T* grad_x,
                            Strided4 gxs, int64_t d, DWStagePtrs first_p, DWStagePtrs second_p,
                            T* partials) {
  const int64_t C = xs.c, H = xs.h, W = xs.w, P = chunk_pixels(C, W, {xs, gs, gxs}), L = P * C;
  const int64_t R = std::min(2 * d + 1, H);  // rows of e in the ring
  const auto first = make_stage_arrays<T>(first_p, C, P);
  const auto second = make_stage_arrays<T>(second_p, C, P);
  const bool prelu1 = first_p.prelu != nullptr, prelu2 = second_p.prelu != nullptr;
  at::parallel_for(0, xs.n * H, grain_for(W * C), [&](int64_t begin, int64_t end) {
    std::vector<T> zeros(L, T(0)), gbuf(C), obuf(C), acc(kDWGrads * L), ring(R * W * C);
    PaddedRow<T> tpad(W * C, d * C), dpad(W * C, d * C);
    T *t = tpad.data(), *ds = dpad.data();
    simd_dispatch([&]() RTSEG_SIMD_BODY {
      const T *w0 = first.w0.data(), *w1 = first.w1.data(), *w2 = first.w2.data(),
              *s1 = first.scale.data(), *b1 = first.shift.data(), *a1 = first.slope.data();
      const T *v0 = second.w0.data(), *v1 = second.w1.data(), *v2 = second.w2.data(),
              *s2 = second.scale.data(), *b2 = second.shift.data(), *a2 = second.slope.data();
      // Per-chunk-position sums of a row, folded to per channel at its end.
      auto column = [&](int stage, int k) { return acc.data() + (stage * kDWGradsPerStage + k) * L; };
      T *g1w0 = column(0, kDWGradWeight), *g1w1 = g1w0 + L, *g1w2 = g1w1 + L,
        *g1s = column(0, kDWGradScale), *g1b = column(0, kDWGradShift),
        *g1a = column(0, kDWGradPrelu);
      T *g2w0 = column(1, kDWGradWeight), *g2w1 = g2w0 + L, *g2w2 = g2w1 + L,
        *g2s = column(1, kDWGradScale), *g2b = column(1, kDWGradShift),
        *g2a = column(1, kDWGradPrelu);
      auto e_row = [&](int64_t y) { return ring.data() + (y % R) * W * C; };

      // e at row y of image b into the ring, the row's parameter gradients into acc. Three
      // passes over the row, each trailing the previous one by d pixels (as far as its taps
      // reach), so that t and the gradient at the second conv's output are read back from L1;
      // the last pass recomputes the first conv's output from the x values it loads anyway.
      auto row_backward = [&](int64_t b, int64_t y) RTSEG_SIMD_BODY {
        std::fill(acc.begin(), acc.end(), T(0));
        const T* row = x + b * xs.sn + y * xs.sh;
        const T* g_row = grad_out + b * gs.sn + y * gs.sh;
        T* e = e_row(y);
        int64_t done2 = 0, done3 = 0;  // pixels through the second and third passes
        for (int64_t i = 0; done3 < W; i += P) {
          if (i < W) {
            first.apply_vertical(row + i * xs.sw, y, d, H, xs.sh, zeros.data(), t + i * C,
                                 std::min(P, W - i) * C);
          }
          const int64_t ready2 = i + P >= W ? W : i + P - d;
          while (done2 < ready2) {
            const int64_t j = done2, pixels = std::min(P, ready2 - j), n = pixels * C;
            done2 += pixels;
            const T* tj = t + j * C;
            T* dj = ds + j * C;
            const T* g = g_row + j * gs.sw;
            if (gs.sc != 1) {  // P == 1 here
              for (int64_t c = 0; c < C; ++c) gbuf[c] = g[c * gs.sc];
              g = gbuf.data();
            }
#pragma omp simd
            for (int64_t k = 0; k < n; ++k) {
              const T left = tj[k - d * C], right = tj[k + d * C];
              const T u2 = v0[k] * left + v1[k] * tj[k] + v2[k] * right;
              const T z2 = s2[k] * u2 + b2[k];
              const T dz2 = g[k] * act_grad(z2, a2[k], prelu2);
              g2s[k] += dz2 * u2;
              g2b[k] += dz2;
              g2a[k] += g[k] * std::min(z2, T(0));
              const T du2 = dz2 * s2[k];
              dj[k] = du2;
              g2w0[k] += du2 * left;
              g2w1[k] += du2 * tj[k];
              g2w2[k] += du2 * right;
            }
          }
          const int64_t ready3 = done2 >= W ? W : done2 - d;
          while (done3 < ready3) {
            const int64_t j = done3, pixels = std::min(P, ready3 - j), n = pixels * C;
            done3 += pixels;
            const T* dj = ds + j * C;
            const T* m = row + j * xs.sw;
            const T* a = y - d >= 0 ? m - d * xs.sh : zeros.data();
            const T* z = y + d < H ? m + d * xs.sh : zeros.data();
            T* ej = e + j * C;
#pragma omp simd
            for (int64_t k = 0; k < n; ++k) {
              const T dt = v2[k] * dj[k - d * C] + v1[k] * dj[k] + v0[k] * dj[k + d * C];
              const T u1 = w0[k] * a[k] + w1[k] * m[k] + w2[k] * z[k];
              const T z1 = s1[k] * u1 + b1[k];
              const T dz1 = dt * act_grad(z1, a1[k], prelu1);
              g1s[k] += dz1 * u1;
              g1b[k] += dz1;
              g1a[k] += dt * std::min(z1, T(0));
              const T ek = dz1 * s1[k];
              ej[k] = ek;
              g1w0[k] += ek * a[k];
              g1w1[k] += ek * m[k];
              g1w2[k] += ek * z[k];
            }
          }
        }
      };

      // grad_x at row y of image b: the vertical transposed conv of the ring's rows.
      auto write_grad_x = [&](int64_t b, int64_t y) RTSEG_SIMD_BODY {
        T* out_row = grad_x + b * gxs.sn + y * gxs.sh;
        const T* mid = e_row(y);
        const T* above = y - d >= 0 ? e_row(y - d) : nullptr;
        const T* below = y + d < H ? e_row(y + d) : nullptr;
        for (int64_t i = 0; i < W; i += P) {
          const int64_t n = std::min(P, W - i) * C;
          const T* m = mid + i * C;
          const T* a = above ? above + i * C : zeros.data();
          const T* z = below ? below + i * C : zeros.data();
          T* o = gxs.sc == 1 ? out_row + i * gxs.sw : obuf.data();
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) o[k] = w2[k] * a[k] + w1[k] * m[k] + w0[k] * z[k];
          if (o == obuf.data())  // P == 1 here
            for (int64_t c = 0; c < C; ++c) out_row[i * gxs.sw + c * gxs.sc] = o[c];
        }
      };

      for (int64_t task = begin; task < end;) {
        // This thread's rows [y0, y1) of image b.
        const int64_t b = task / H, y0 = task % H, y1 = std::min(H, y0 + end - task);
        task += y1 - y0;
        int64_t next = y0;  // the next grad_x row to write
        for (int64_t y = std::max<int64_t>(0, y0 - d); y < std::min(H, y1 + d); ++y) {
          row_backward(b, y);
          if (y >= y0 && y < y1) {
            T* sums = partials + (b * H + y) * kDWGrads * C;
            for (int64_t j = 0; j < kDWGrads; ++j)
              for (int64_t p = 0; p < P; ++p)
                for (int64_t c = 0; c < C; ++c) sums[j * C + c] += acc[j * L + p * C + c];
          }
          for (; next < y1 && std::min(H, next + d + 1) <= y + 1; ++next) write_grad_x(b, next);
        }
      }
    });
  });
}

// sum_i v[i], in 16 interleaved partial sums so that it vectorises (a plain float sum is a
// serial dependency chain the compiler may not reorder).
template <typename T>
RTSEG_SIMD_BODY inline T vector_sum(const T* v, int64_t n) {
  constexpr int64_t kLanes = 16;
  T lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += v[i + l];
  for (; i < n; ++i) lanes[0] += v[i];
  T total = 0;
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// Per plane: each row recomputes the intermediate, back-propagates through the second stage and
// the first stage's affine and PReLU (all row-local), keeping the gradient at the first conv's
// output in a plane buffer; the vertical transposed conv of that buffer gives grad_x. Parameter
// gradients are accumulated per column over the rows (kDWGrads rows of W, elementwise, so the row
// loops vectorise), then summed per plane into `partials` (B, C, kDWGrads) and reduced over the
// batch in a fixed order by the caller, so the result does not depend on the thread count.
template <typename T>
void backward(const T* grad_out, Strided4 gs, const T* x, Strided4 xs, T* grad_x, Strided4 gxs,
              int64_t d, DWStagePtrs first_p, DWStagePtrs second_p, T* partials) {
  const int64_t H = xs.h, W = xs.w;
  at::parallel_for(0, xs.n * xs.c, grain_for(H * W), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(6 * W, T(0)), acc(kDWGrads * W);
    T *zeros = buf.data(), *above = zeros + W, *center = above + W, *below = center + W,
      *gbuf = below + W, *u1 = gbuf + W;
    PaddedRow<T> tpad(W, d), gpad(W, d);
    T *t = tpad.data(), *gp = gpad.data();
    std::vector<T> grad_u1(H * W);  // gradient at the first conv's output
    simd_dispatch([&]() RTSEG_SIMD_BODY {
      auto column = [&](int stage, int k) {
        return acc.data() + (stage * kDWGradsPerStage + k) * W;
      };
      T *w10 = column(0, kDWGradWeight), *w11 = w10 + W, *w12 = w11 + W,
        *s1 = column(0, kDWGradScale), *b1 = column(0, kDWGradShift),
        *a1 = column(0, kDWGradPrelu);
      T *w20 = column(1, kDWGradWeight), *w21 = w20 + W, *w22 = w21 + W,
        *s2 = column(1, kDWGradScale), *b2 = column(1, kDWGradShift),
        *a2 = column(1, kDWGradPrelu);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / xs.c, c = task % xs.c;
        const auto first = load_stage<T>(first_p, c);
        const auto second = load_stage<T>(second_p, c);
        const T* plane = x + b * xs.sn + c * xs.sc;
        const T* g_plane = grad_out + b * gs.sn + c * gs.sc;
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t y = 0; y < H; ++y) {
          const T* a = plane_row(plane, xs, y - d, above, zeros);
          const T* m = plane_row(plane, xs, y, center, zeros);
          const T* z = plane_row(plane, xs, y + d, below, zeros);
          for (int64_t i = 0; i < W; ++i) {
            u1[i] = first.conv(a[i], m[i], z[i]);
            t[i] = act(first.affine(u1[i]), first.slope);
          }
          const T* g = plane_row(g_plane, gs, y, gbuf, zeros);
#pragma omp simd
          for (int64_t i = 0; i < W; ++i) {
            const T u2 = second.conv(t[i - d], t[i], t[i + d]);
            const T z2 = second.affine(u2);
            const T dz2 = g[i] * second.act_grad(z2);
            s2[i] += dz2 * u2;
            b2[i] += dz2;
            a2[i] += g[i] * second.slope_grad(z2);
            gp[i] = dz2 * second.scale;  // gradient at the second conv's output
          }
          T* e = grad_u1.data() + y * W;
#pragma omp simd
          for (int64_t i = 0; i < W; ++i) {
            w20[i] += gp[i] * t[i - d];
            w21[i] += gp[i] * t[i];
            w22[i] += gp[i] * t[i + d];
            const T dt = second.conv_transposed(gp[i - d], gp[i], gp[i + d]);
            const T z1 = first.affine(u1[i]);
            const T dz1 = dt * first.act_grad(z1);
            s1[i] += dz1 * u1[i];
            b1[i] += dz1;
            a1[i] += dt * first.slope_grad(z1);
            e[i] = dz1 * first.scale;
            w10[i] += e[i] * a[i];
            w11[i] += e[i] * m[i];
            w12[i] += e[i] * z[i];
          }
        }
        T* gx_plane = grad_x + b * gxs.sn + c * gxs.sc;
        for (int64_t y = 0; y < H; ++y) {
          const T* e = grad_u1.data();
          const T* a = y - d >= 0 ? e + (y - d) * W : zeros;
          const T* m = e + y * W;
          const T* z = y + d < H ? e + (y + d) * W : zeros;
          T* o = row_target(gx_plane, gxs, y, gbuf);
          for (int64_t i = 0; i < W; ++i) o[i] = first.conv_transposed(a[i], m[i], z[i]);
          store_row(o, gx_plane, gxs, y, gbuf);
        }
        for (int k = 0; k < kDWGrads; ++k)
          partials[task * kDWGrads + k] = vector_sum(acc.data() + k * W, W);
      }
    });
  });
}

at::Tensor factorized_dw_conv_cpu(const at::Tensor& x, const at::Tensor& weight_v,
                                  const at::Tensor& weight_h, int64_t dilation,
                                  const OptTensor& scale_v, const OptTensor& shift_v,
                                  const OptTensor& prelu_v, const OptTensor& scale_h,
                                  const OptTensor& shift_h, const OptTensor& prelu_h,
                                  c10::string_view order) {
  const bool hv = check_factorized_dw_args(x, weight_v, weight_h, dilation, scale_v, shift_v,
                                           prelu_v, scale_h, shift_h, prelu_h, order);
  auto out = empty_output_like(x);
  if (out.numel() == 0) return out;
  const DWStages stages{{weight_v, scale_v, shift_v, prelu_v},
                        {weight_h, scale_h, shift_h, prelu_h}, hv};
  auto view = [hv](const at::Tensor& t) { return factorized_dw_view(t, hv); };
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "factorized_dw_conv_cpu", [&] {
    auto kernel = x.stride(1) == 1 && x.size(1) > 1 ? forward_channels_last<scalar_t>
                                                    : forward<scalar_t>;
    kernel(x.const_data_ptr<scalar_t>(), view(x), out.mutable_data_ptr<scalar_t>(), view(out),
           dilation, stages.first(), stages.second());
  });
  return out;
}

FactorizedDWGrads factorized_dw_conv_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight_v,
    const at::Tensor& weight_h, int64_t dilation, const OptTensor& scale_v,
    const OptTensor& shift_v, const OptTensor& prelu_v, const OptTensor& scale_h,
    const OptTensor& shift_h, const OptTensor& prelu_h, c10::string_view order) {
  const bool hv = check_factorized_dw_args(x, weight_v, weight_h, dilation, scale_v, shift_v,
                                           prelu_v, scale_h, shift_h, prelu_h, order);
  check_factorized_dw_grad(grad_output, x);
  const int64_t B = x.size(0), C = x.size(1);
  auto grad_x = empty_output_like(x);
  const auto acc_type = accumulation_type(x);
  const DWStages stages{{weight_v, scale_v, shift_v, prelu_v},
                        {weight_h, scale_h, shift_h, prelu_h}, hv};
  auto view = [hv](const at::Tensor& t) { return factorized_dw_view(t, hv); };
  at::Tensor reduced;
  // Gradients of channels_last tensors come out channels_last (output_format), so the row kernel
  // writes grad_x along C.
  if (x.stride(1) == 1 && C > 1 && grad_x.stride(1) == 1) {
    const Strided4 xv = view(x);
    const int64_t tasks = xv.n * xv.h;
    auto partials = at::zeros({tasks, kDWGrads, C}, x.options().dtype(acc_type));
    reduced = at::zeros({kDWGrads, C}, partials.options());
    if (grad_x.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "factorized_dw_conv_backward_cpu", [&] {
        using A = acc_t<scalar_t>;
        A* parts = partials.mutable_data_ptr<A>();
        backward_channels_last<scalar_t>(
            grad_output.const_data_ptr<scalar_t>(), view(grad_output),
            x.const_data_ptr<scalar_t>(), xv, grad_x.mutable_data_ptr<scalar_t>(), view(grad_x),
            dilation, stages.first(), stages.second(), parts);
        // Sum over the row tasks in order (deterministic whatever the thread count).
        A* sums = reduced.mutable_data_ptr<A>();
        for (int64_t task = 0; task < tasks; ++task)
          for (int64_t i = 0; i < kDWGrads * C; ++i) sums[i] += parts[task * kDWGrads * C + i];
      });
    }
    reduced = reduced.t();
  } else {
    auto partials = at::zeros({B, C, kDWGrads}, x.options().dtype(acc_type));
    if (grad_x.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "factorized_dw_conv_backward_cpu", [&] {
        backward<scalar_t>(grad_output.const_data_ptr<scalar_t>(), view(grad_output),
                           x.const_data_ptr<scalar_t>(), view(x),
                           grad_x.mutable_data_ptr<scalar_t>(), view(grad_x), dilation,
                           stages.first(), stages.second(),
                           partials.mutable_data_ptr<acc_t<scalar_t>>());
      });
    }
    // Sum over the batch in order (deterministic whatever the thread count).
    reduced = at::zeros({C, kDWGrads}, partials.options());
    for (int64_t b = 0; b < B; ++b) reduced.add_(partials.select(0, b));
  }
  return factorized_dw_grads(grad_x, reduced, hv, weight_v, weight_h);
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("factorized_dw_conv", &factorized_dw_conv_cpu);
  m.impl("factorized_dw_conv_backward", &factorized_dw_conv_backward_cpu);
}

}  // namespace rtseg
