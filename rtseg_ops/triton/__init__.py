"""Triton kernels. Each module holds one op's kernels and registers them as the CUDA
implementation of the op's ``torch.ops.rtseg`` schema (an opaque custom op, not a triton_op, so
torch.compile works on machines without a GPU). Importing this package needs triton."""
