// Checks of csrc/common math that the CUDA kernels rely on, against independent computations.
// Built and run by tests/test_shared_math.py; prints one line per failure and exits non-zero.
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>

#include "common/gated_flow_fusion.h"
#include "common/pyramid_pool.h"

using namespace rtseg;

static int failures = 0;
#define EXPECT(cond, ...)                    \
  do {                                       \
    if (!(cond)) {                           \
      ++failures;                            \
      if (failures <= 20) {                  \
        std::printf(__VA_ARGS__);            \
        std::printf("\n");                   \
      }                                      \
    }                                        \
  } while (0)

// is_bin_boundary against the set of every bin's start and end.
static void check_bin_boundaries() {
  for (int64_t n = 1; n <= 70; ++n) {
    for (int64_t bins = 1; bins <= 90; ++bins) {
      std::set<int64_t> cuts;
      for (int64_t i = 0; i < bins; ++i) {
        cuts.insert(adaptive_start(i, n, bins));
        cuts.insert(adaptive_end(i, n, bins));
      }
      for (int64_t q = 0; q <= n; ++q)
        EXPECT(is_bin_boundary(q, n, bins) == (cuts.count(q) > 0),
               "is_bin_boundary(%lld, %lld, %lld)", (long long)q, (long long)n, (long long)bins);
    }
  }
}

struct Coeffs {
  double weight = 0, dx = 0, dy = 0;
};

// The low warp's coefficients per low pixel from the separable form (low_axis per axis) and from
// the 16 merged taps (upsampled_warp_taps), which must agree pixel by pixel.
static void check_low_axis(int64_t H, int64_t W, int64_t h, int64_t w, double dx, double dy,
                           int64_t x, int64_t y) {
  const auto pos = flow_warp_position<double>(x, y, dx, dy, H, W, H, W, true);
  const auto ax = low_axis(pos.ix, W, w), ay = low_axis(pos.iy, H, h);
  std::map<int64_t, Coeffs> sep, taps16;
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < 4; ++c) {
      EXPECT(ax.index[c] >= 0 && ax.index[c] < w && ay.index[r] >= 0 && ay.index[r] < h,
             "low_axis index outside the plane");
      Coeffs& e = sep[ay.index[r] * w + ax.index[c]];
      e.weight += ay.weight[r] * ax.weight[c];
      e.dx += ay.weight[r] * ax.dweight[c];
      e.dy += ay.dweight[r] * ax.weight[c];
    }
  }
  const auto corners = fusion_warp_corners(x, y, dx, dy, H, W, W, int64_t(1));
  const auto t = upsampled_warp_taps(corners, H, W, h, w, w, int64_t(1));
  for (int k = 0; k < 16; ++k) {
    Coeffs& e = taps16[t.offset[k]];
    e.weight += t.weight[k];
    e.dx += t.dweight_dx[k];
    e.dy += t.dweight_dy[k];
  }
  for (auto* m : {&sep, &taps16}) {
    for (const auto& kv : *m) {
      const Coeffs a = sep[kv.first], b = taps16[kv.first];
      EXPECT(std::fabs(a.weight - b.weight) < 1e-12 && std::fabs(a.dx - b.dx) < 1e-12 &&
                 std::fabs(a.dy - b.dy) < 1e-12,
             "low_axis H%lld W%lld h%lld w%lld x%lld y%lld flow (%g, %g) pixel %lld: "
             "(%g %g %g) vs (%g %g %g)",
             (long long)H, (long long)W, (long long)h, (long long)w, (long long)x, (long long)y,
             dx, dy, (long long)kv.first, a.weight, a.dx, a.dy, b.weight, b.dx, b.dy);
    }
  }
  // Merged entries leave at most one live entry per index.
  for (const auto* axis : {&ax, &ay}) {
    for (int e = 0; e < 4; ++e)
      for (int f = 0; f < e; ++f)
        EXPECT(axis->unused(e) || axis->unused(f) || axis->index[e] != axis->index[f],
               "low_axis left two live entries with index %d", axis->index[e]);
  }
}

int main() {
  check_bin_boundaries();
  std::mt19937 rng(7);
  const int64_t sizes[][4] = {{8, 8, 4, 4},   {9, 13, 5, 7},  {16, 32, 4, 8}, {5, 5, 5, 5},
                              {1, 7, 1, 3},   {7, 1, 2, 1},   {6, 10, 9, 12}, {12, 3, 1, 1},
                              {33, 17, 9, 5}, {2, 2, 2, 2}};
  for (const auto& s : sizes) {
    const int64_t H = s[0], W = s[1], h = s[2], w = s[3];
    std::uniform_real_distribution<double> flow(-0.6 * W, 0.6 * W);
    std::uniform_int_distribution<int> step(-2 * static_cast<int>(W), 2 * static_cast<int>(W));
    for (int64_t y = 0; y < H; ++y) {
      for (int64_t x = 0; x < W; ++x) {
        check_low_axis(H, W, h, w, flow(rng), flow(rng), x, y);
        // Whole-pixel flows put corners exactly on the grid (zero weights with derivatives).
        check_low_axis(H, W, h, w, step(rng), step(rng), x, y);
        check_low_axis(H, W, h, w, 0.0, 0.0, x, y);
      }
    }
    check_low_axis(H, W, h, w, NAN, 1.0, 0, 0);
    check_low_axis(H, W, h, w, INFINITY, -INFINITY, 0, 0);
    check_low_axis(H, W, h, w, 1e30, 0.5, 0, 0);
  }
  if (failures) std::printf("%d failures\n", failures);
  else std::printf("ok\n");
  return failures ? 1 : 0;
}
