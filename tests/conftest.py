import os

import torch

# Without a GPU, Triton kernels run under the interpreter; it must be set before triton is
# imported (rtseg_ops imports its Triton modules at import time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
