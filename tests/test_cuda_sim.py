"""The CUDA simulator proves itself on planted bugs (tests/cuda_sim/planted.cu), and every
__global__ kernel of csrc/cuda runs under it during the suite."""
import glob
import os
import re

import pytest
import torch

import cuda_sim

pytestmark = pytest.mark.sim


def planted(which, n=256, data=None):
    data = torch.randn(n, generator=torch.Generator().manual_seed(0)) if data is None else data
    return cuda_sim.launch_planted(which, data)


def test_correct_barrier_code_passes():
    data = torch.randn(256, generator=torch.Generator().manual_seed(0))
    out = planted("tree_sum", data=data.clone())
    torch.testing.assert_close(out[0], data.sum(), atol=1e-4, rtol=1e-5)


def test_missing_syncthreads_is_a_race():
    with pytest.raises(cuda_sim.SimulatorError,
                       match=r"shared-memory race \((read after write|write after read)\).*"
                             r"planted\.cu:1[2-4]:.*planted\.cu:1[2-4]:.*missing_sync_kernel"):
        planted("missing_sync")


def test_out_of_bounds_write_is_caught_with_its_line():
    with pytest.raises(cuda_sim.SimulatorError,
                       match=r"(?s)heap-buffer-overflow.*WRITE of size 4.*out_of_bounds_kernel.*"
                             r"planted\.cu:\d+"):
        planted("out_of_bounds", n=100)
    planted("tree_sum")  # a new worker takes over


def test_barrier_in_divergent_branch():
    with pytest.raises(cuda_sim.SimulatorError,
                       match=r"barrier divergence.*planted\.cu:\d+.*has exited.*"
                             r"divergent_barrier_kernel"):
        planted("divergent_barrier", n=32)


def test_shuffle_with_a_missing_lane():
    with pytest.raises(cuda_sim.SimulatorError,
                       match=r"warp collective at .*planted\.cu:\d+.*lane 5 .*exited.*"
                             r"missing_lane_kernel"):
        planted("missing_lane", n=32)


def test_warp_collectives():
    data = torch.randn(66, generator=torch.Generator().manual_seed(3))
    lanes = data[:32].clone()
    out = planted("warp_sum", data=data)
    torch.testing.assert_close(out[:32], lanes.sum().expand(32), atol=1e-5, rtol=1e-5)
    up = torch.cat([lanes[:1], lanes[:31]])
    torch.testing.assert_close(out[32:64], lanes[0] + up)
    ballot = sum(1 << i for i in range(16) if lanes[i] > 0)
    assert out[64].item() == ballot
    assert out[65].item() == 3  # any(lane == 7) + 2 * all(lane < 32)


def test_uninitialized_shared_read():
    with pytest.raises(cuda_sim.SimulatorError,
                       match=r"read of uninitialized shared memory.*uninitialized_kernel"):
        planted("uninitialized", n=64)


def test_dynamic_shared_memory_is_sized_by_the_launch():
    data = torch.arange(100, dtype=torch.float32)
    torch.testing.assert_close(planted("reverse", data=data.clone()), data.flip(0))
    with pytest.raises(cuda_sim.SimulatorError, match=r"out-of-bounds extern __shared__ access "
                                                      r"\(4 bytes at offset 396, the launch "
                                                      r"gave 396 bytes\)"):
        planted("reverse_short_shared", data=data.clone())


@pytest.mark.parametrize("which", ["too_many_threads", "grid_y_too_large",
                                   "shared_without_opt_in"])
def test_bad_launch_configuration_is_a_launch_error(which):
    with pytest.raises(RuntimeError, match="invalid configuration argument"):
        planted(which)


def test_shared_memory_opt_in():
    data = torch.arange(64, dtype=torch.float32)
    torch.testing.assert_close(planted("shared_with_opt_in", data=data.clone()), data.flip(0))
    with pytest.raises(RuntimeError, match="invalid argument"):
        planted("shared_over_limit")


def test_every_glue_registers_for_the_simulator():
    """Each op a csrc/cuda glue file implements is simulated (it registers through
    RTSEG_CUDA_IMPL, not TORCH_LIBRARY_IMPL(rtseg, CUDA, ...))."""
    glued = set()
    for path in glob.glob(os.path.join(cuda_sim.ROOT, "csrc", "cuda", "*_glue.cpp")):
        with open(path) as f:
            glued.update(re.findall(r'm\.impl\("(\w+)"', f.read()))
    assert glued and glued <= set(cuda_sim.simulated_ops())


def test_routing_restores_the_cpu_kernels():
    op = torch.ops.rtseg.pyramid_pool
    x = torch.randn(1, 2, 5, 6)
    before = dict(cuda_sim.WORKER.launches)
    with cuda_sim.routed():
        inside = op(x, [1, 2], False, False)
    assert cuda_sim.WORKER.launches != before, "the routed call did not reach the simulator"
    during = dict(cuda_sim.WORKER.launches)
    outside = op(x, [1, 2], False, False)
    assert cuda_sim.WORKER.launches == during, "the CPU kernel was not restored"
    torch.testing.assert_close(inside, outside)


def test_every_kernel_is_launched(request):
    """Runs last (conftest orders it): each __global__ kernel of csrc/cuda/<op>.cu ran under the
    simulator while tests/test_<op>.py's sim cases ran in this session."""
    ran = {item.path.stem[len("test_"):] for item in request.session.items
           if item.get_closest_marker("sim") and hasattr(item, "callspec") and
           "device" in item.callspec.params}
    expected = {k for k in cuda_sim.declared_kernels()
                if k.split(":")[0].rsplit("/", 1)[-1][:-len(".cu")] in ran}
    if not expected:
        pytest.skip("no op test module's sim cases are part of this session")
    missing = sorted(k for k in expected if not cuda_sim.WORKER.launches.get(k))
    assert not missing, f"never launched under the simulator: {missing}"
