// The schemas of every rtseg op, in one place. Kernels register against them per device in
// csrc/cpu/<op>.cpp (CPU) and csrc/cuda/<op>_glue.cpp (CUDA); Triton kernels register from Python.
#include <Python.h>
#include <torch/library.h>

#include "cpu/output_arena.h"
#include "cpu/simd_dispatch.h"

extern "C" {
static PyObject* empty_cpu_cache(PyObject*, PyObject*) {
  return PyLong_FromLongLong(rtseg::empty_cpu_cache());
}

static PyObject* cpu_simd_level(PyObject*, PyObject*) {
  return PyUnicode_FromString(rtseg::cpu_simd_level_name());
}

// Importing rtseg_ops._C runs the static registrations below; the module itself only holds
// empty_cpu_cache and cpu_simd_level.
PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"empty_cpu_cache", empty_cpu_cache, METH_NOARGS,
       "Frees the cached blocks of large CPU outputs; returns the bytes freed."},
      {"cpu_simd_level", cpu_simd_level, METH_NOARGS,
       "The instruction set the CPU kernels' dispatched loops run with on this CPU."},
      {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(rtseg, m) {
  m.def("grouped_flow_warp(Tensor input, Tensor flow, int groups, str padding_mode, "
        "bool align_corners) -> Tensor");
  m.def("grouped_flow_warp_backward(Tensor grad_output, Tensor input, Tensor flow, int groups, "
        "str padding_mode, bool align_corners) -> (Tensor, Tensor)");
  m.def("pyramid_pool(Tensor x, int[] grids, bool keep_aspect_ratio, bool cascade) -> Tensor");
  m.def("pyramid_pool_backward(Tensor grad_output, Tensor x, int[] grids, "
        "bool keep_aspect_ratio, bool cascade) -> Tensor");
  // Returns (output, lse): the per-pixel log-sum-exp of the logits, kept for the backward.
  m.def("pixel_context_attention(Tensor query, Tensor key, Tensor value, float scale) "
        "-> (Tensor, Tensor)");
  m.def("pixel_context_attention_backward(Tensor grad_output, Tensor query, Tensor key, "
        "Tensor value, Tensor lse, float scale) -> (Tensor, Tensor, Tensor)");
  m.def("gated_flow_fusion(Tensor high, Tensor low, Tensor flow_high, Tensor flow_low, "
        "Tensor gate_high, Tensor gate_low, int groups) -> Tensor");
  m.def("gated_flow_fusion_backward(Tensor grad_output, Tensor high, Tensor low, "
        "Tensor flow_high, Tensor flow_low, Tensor gate_high, Tensor gate_low, int groups) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("scalar_weighted_sum(Tensor[] inputs, Tensor weights, bool normalize, float eps, "
        "str? activation) -> Tensor");
  m.def("scalar_weighted_sum_backward(Tensor grad_output, Tensor[] inputs, Tensor weights, "
        "bool normalize, float eps, str? activation) -> (Tensor[], Tensor)");
  m.def("factorized_dw_conv(Tensor x, Tensor weight_v, Tensor weight_h, int dilation, "
        "Tensor? scale_v, Tensor? shift_v, Tensor? prelu_v, Tensor? scale_h, Tensor? shift_h, "
        "Tensor? prelu_h, str order) -> Tensor");
  m.def("factorized_dw_conv_backward(Tensor grad_output, Tensor x, Tensor weight_v, "
        "Tensor weight_h, int dilation, Tensor? scale_v, Tensor? shift_v, Tensor? prelu_v, "
        "Tensor? scale_h, Tensor? shift_h, Tensor? prelu_h, str order) -> (Tensor, Tensor, "
        "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("spatial_aware_pool(Tensor x, int levels, bool count_include_pad) -> Tensor[]");
  m.def("spatial_aware_pool_backward(Tensor[] grad_outputs, Tensor x, int levels, "
        "bool count_include_pad) -> Tensor");
}
