"""scalar_weighted_sum: SGCPNet's SW-Sum node (learnable scalar fusion of resized pyramid levels).

The schema takes ``Tensor[] inputs`` rather than four optional tensors: a list carries the 1 to 4
inputs without placeholder arguments, the backward returns exactly one gradient per input
(``Tensor[]``; an output cannot be an optional tensor), and opcheck, the C++ autograd kernel and
torch.compile(fullgraph=True) all handle tensor lists (tests/test_scalar_weighted_sum.py).
"""
import torch
from torch import nn

from . import _autocast, _backend, reference
from ._checks import check_bool, check_choice, check_like, check_tensor, output_memory_format

ACTIVATIONS = (None, "swish")
MAX_INPUTS = 4
OPS = ("fused", "reference")


def _check_count(n, name):
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_INPUTS:
        raise ValueError(f"{name}: expected 1 to {MAX_INPUTS} inputs, got {n!r}")


def _check_args(inputs, weights, normalize, eps, activation):
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"inputs: expected a list or tuple of 1 to {MAX_INPUTS} tensors, got "
                        f"{type(inputs).__name__}")
    _check_count(len(inputs), "inputs")
    first = inputs[0]
    for i, x in enumerate(inputs):
        name = f"inputs[{i}]"
        check_tensor(x, name, dim=4)
        check_like(x, first, name, "inputs[0]")
        if x.shape[:2] != first.shape[:2]:
            raise ValueError(f"{name}: expected batch and channels {tuple(first.shape[:2])} "
                             f"(those of inputs[0]), got shape {tuple(x.shape)}")
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"{name}: expected a non-empty spatial size, got shape "
                             f"{tuple(x.shape)}")
    check_tensor(weights, "weights", dim=1)
    check_like(weights, first, "weights", "inputs[0]")
    if weights.shape[0] != len(inputs):
        raise ValueError(f"weights: expected {len(inputs)} scalars (one per input), got "
                         f"{weights.shape[0]}")
    check_bool(normalize, "normalize")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps: expected a non-negative number, got {eps!r}")
    check_choice(activation, "activation", ACTIVATIONS)


def scalar_weighted_sum(inputs, weights, normalize=False, eps=1e-4, activation=None):
    """Weighted sum of 1 to 4 maps brought to the size of ``inputs[0]`` (docs/ops.md section 5).

    Args:
        inputs: list of ``(B, C, Hi, Wi)`` tensors; the output has the shape of ``inputs[0]``.
            An input of the output's size is used as is; one smaller (or equal) in both dims is
            upsampled with ``F.interpolate(mode="nearest")``; any other is max-pooled
            (``F.max_pool2d(x, 3, stride=2, padding=1)``), then nearest-resized if the pooled size
            still differs. No resized copy is materialised.
        weights: ``(len(inputs),)`` scalars, same dtype and device as the inputs.
        normalize: use ``w = relu(weights) / (relu(weights).sum() + eps)`` (BiFPN fast
            normalised fusion, as in the released SGCPNet code) instead of the raw scalars.
        eps: the normalisation's epsilon.
        activation: ``None`` or ``"swish"`` (``y * sigmoid(y)``), applied to the sum.

    Returns:
        ``sum_i w_i * resized_i`` (then the activation), channels_last when ``inputs[0]`` is.
        Differentiable in every input and in ``weights``.
    """
    inputs, weights = _autocast.cast_inputs("scalar_weighted_sum", inputs, weights)
    _check_args(inputs, weights, normalize, eps, activation)
    inputs = list(inputs)
    if _backend.use_kernel("scalar_weighted_sum", inputs[0].device.type):
        return torch.ops.rtseg.scalar_weighted_sum(inputs, weights, normalize, float(eps),
                                                   activation)
    return reference.scalar_weighted_sum(inputs, weights, normalize, eps, activation)


class ScalarWeightedSum(nn.Module):
    """SGCPNet's SW-Sum node: :func:`scalar_weighted_sum` with learnable scalars (initialised
    to 1). ``forward(*inputs)`` also accepts one list or tuple of tensors.

    ``ops="fused"`` runs the rtseg op; ``ops="reference"`` runs ``rtseg_ops.reference``.
    The scalars are cast to the inputs' dtype, so fp32 parameters work with half inputs.
    """

    def __init__(self, num_inputs, normalize=False, eps=1e-4, activation=None, ops="fused"):
        super().__init__()
        _check_count(num_inputs, "num_inputs")
        check_bool(normalize, "normalize")
        check_choice(activation, "activation", ACTIVATIONS)
        check_choice(ops, "ops", OPS)
        self.normalize, self.eps, self.activation, self.ops = normalize, eps, activation, ops
        self.weights = nn.Parameter(torch.ones(num_inputs))

    def forward(self, *inputs):
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
            inputs = inputs[0]
        fn = scalar_weighted_sum if self.ops == "fused" else reference.scalar_weighted_sum
        return fn(list(inputs), self.weights.to(inputs[0].dtype), self.normalize, self.eps,
                  self.activation)

    def extra_repr(self):
        return f"num_inputs={self.weights.numel()}, normalize={self.normalize}, eps={self.eps}, " \
               f"activation={self.activation!r}, ops={self.ops!r}"


if _backend.extension_loaded():
    # registers the Triton kernels as the CUDA implementation; without a working triton, CUDA
    # tensors run the reference, with a warning saying why
    _backend.import_triton_kernels("scalar_weighted_sum")

    @torch.library.register_fake("rtseg::scalar_weighted_sum")
    def _(inputs, weights, normalize, eps, activation):
        return torch.empty_like(inputs[0], memory_format=output_memory_format(inputs[0]))

    @torch.library.register_fake("rtseg::scalar_weighted_sum_backward")
    def _(grad_output, inputs, weights, normalize, eps, activation):
        grads = [torch.empty_like(x, memory_format=output_memory_format(x)) for x in inputs]
        return grads, weights.new_empty(weights.shape)

    # The autograd kernel is C++ (csrc/autograd/scalar_weighted_sum.cpp): register_autograd's Python
    # Function cost more than the kernels at the small SGCPNet nodes.

_backend.register_op("scalar_weighted_sum", cpu="C++", cuda="Triton")
_autocast.register("scalar_weighted_sum", cuda_policy="promote")
