import os
import sys

import torch

# Baselines and input builders come from the tests, so benchmarks time exactly what is tested.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    """Mark the `make gpu-check` subset "gpu_check": CUDA items at each module's GPU_CHECK
    parameters (default: its first case), in every dtype, layout and pass, against the eager
    reference; the compiled reference in float16 NCHW only, as every compile takes seconds.
    bench_models.py is left to the per-model table."""
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is None or spec.params.get("device") != "cuda":
            continue
        wanted = getattr(item.module, "GPU_CHECK", None)
        cases = getattr(item.module, "CASES", None)
        if wanted is None and cases:
            wanted = {"case": next(iter(cases))}
        if not wanted or any(spec.params.get(k) != v for k, v in wanted.items()):
            continue
        if spec.params.get("impl") == "compiled" and (
                spec.params.get("dtype") != torch.float16 or spec.params.get("layout") != "NCHW"):
            continue
        item.add_marker("gpu_check")
