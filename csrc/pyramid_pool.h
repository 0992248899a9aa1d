#pragma once
// Argument checks and level geometry of pyramid_pool, shared by the CPU kernel and the CUDA glue.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/pyramid_pool.h"
#include "torch_utils.h"

namespace rtseg {

struct PyramidGeometry {
  PyramidPlan plan;
  // Atom index of every input row 0..H, then of every column 0..W, then the first row of every
  // atom row (and H), then the first column of every atom column (and W).
  std::vector<int32_t> maps;
};

inline void check_pyramid_pool_input(const at::Tensor& x) {
  check_dim(x, 4, "x");
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "x: expected a non-empty spatial size, got ",
              x.sizes());
}

// ops.md section 2: level sizes, cascade order and the atoms of the levels read from the input.
inline PyramidGeometry pyramid_geometry(int64_t H, int64_t W, at::IntArrayRef grids,
                                        bool keep_aspect_ratio, bool cascade) {
  TORCH_CHECK(!grids.empty() && grids.size() <= static_cast<size_t>(kMaxPyramidLevels),
              "grids: expected 1 to ", kMaxPyramidLevels, " grid sizes, got ", grids.size());
  for (int64_t g : grids) TORCH_CHECK(g >= 1, "grids: expected positive sizes, got ", grids);
  std::vector<int64_t> unique(grids.begin(), grids.end());
  std::sort(unique.rbegin(), unique.rend());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());

  PyramidGeometry geo;
  PyramidPlan& p = geo.plan;
  p.levels = static_cast<int>(unique.size());
  p.outputs = static_cast<int>(grids.size());
  p.in_h = H;
  p.in_w = W;
  p.total = 0;
  for (int l = 0; l < p.levels; ++l) {
    const int64_t g = unique[l];
    // Python's round() rounds half to even, as does nearbyint in the default rounding mode.
    const int64_t ow = keep_aspect_ratio
        ? std::max<int64_t>(1, static_cast<int64_t>(std::nearbyint(double(g * W) / double(H))))
        : g;
    p.oh[l] = static_cast<int>(g);
    p.ow[l] = static_cast<int>(ow);
    p.src[l] = cascade && l > 0 ? l - 1 : -1;
    p.offset[l] = p.total;
    p.total += p.oh[l] * p.ow[l];
  }
  p.out_total = 0;
  for (int k = 0; k < p.outputs; ++k) {
    p.out_level[k] = static_cast<int>(
        std::find(unique.begin(), unique.end(), grids[k]) - unique.begin());
    p.out_total += p.oh[p.out_level[k]] * p.ow[p.out_level[k]];
  }

  // Atoms: cut the input at every bin boundary of the levels pooled from it.
  std::vector<char> cut_y(H + 1, 0), cut_x(W + 1, 0);
  for (int64_t q = 0; q <= H; ++q) cut_y[q] = is_atom_cut(p, /*rows=*/true, q);
  for (int64_t q = 0; q <= W; ++q) cut_x[q] = is_atom_cut(p, /*rows=*/false, q);
  geo.maps.resize(H + W + 2);
  std::vector<int32_t> starts;
  auto number = [&starts](const std::vector<char>& cut, int32_t* map) {
    int32_t atom = -1;
    for (size_t q = 0; q < cut.size(); ++q) {
      map[q] = atom += cut[q];
      if (cut[q]) starts.push_back(static_cast<int32_t>(q));
    }
    return atom;  // the end coordinate (always a cut) maps to the atom count
  };
  p.atoms_h = number(cut_y, geo.maps.data());
  p.atoms_w = number(cut_x, geo.maps.data() + H + 1);
  geo.maps.insert(geo.maps.end(), starts.begin(), starts.end());
  return geo;
}

inline void check_pyramid_pool_grad(const at::Tensor& grad_output, const at::Tensor& x,
                                    const PyramidPlan& plan) {
  check_dim(grad_output, 3, "grad_output");
  check_same(grad_output, x, "grad_output", "x");
  TORCH_CHECK(grad_output.size(0) == x.size(0) && grad_output.size(1) == x.size(1) &&
                  grad_output.size(2) == plan.out_total,
              "grad_output: expected shape [", x.size(0), ", ", x.size(1), ", ", plan.out_total,
              "], got ", grad_output.sizes());
}

}  // namespace rtseg
