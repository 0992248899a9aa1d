import os

import pytest
import torch

# Without a GPU, Triton kernels run under the interpreter; it must be set before triton is
# imported (rtseg_ops imports its Triton modules at import time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line("markers", "sim: runs the CUDA kernels under the CUDA simulator "
                                       "(tests/cuda_sim)")


def pytest_collection_modifyitems(session, config, items):
    # The kernel-coverage check needs every other sim case to have run first.
    last = [i for i in items if i.name == "test_every_kernel_is_launched"]
    items[:] = [i for i in items if i.name != "test_every_kernel_is_launched"] + last


@pytest.fixture(autouse=True)
def _sim_device(request):
    """Op tests' `device` "sim" (op_harness.SIM: CPU tensors) run with torch.ops.rtseg routed
    to the simulated CUDA kernels."""
    callspec = getattr(request.node, "callspec", None)
    if request.node.get_closest_marker("sim") and callspec is not None and \
            "device" in callspec.params:
        import cuda_sim
        with cuda_sim.routed():
            yield
    else:
        yield


def pytest_sessionfinish(session, exitstatus):
    import sys
    if "cuda_sim" in sys.modules:
        cuda_sim = sys.modules["cuda_sim"]
        cuda_sim.WORKER.close()
        cuda_sim.write_launch_counts()
