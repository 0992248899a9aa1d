"""The cache behind large CPU outputs (rtseg_ops.memory): reuse, no aliasing of live outputs,
ordinary tensor behaviour, the size limit and the switch."""
import io
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

import rtseg_ops

pytestmark = pytest.mark.skipif(not rtseg_ops.extension_loaded(), reason="needs the extension")

MIB = 1 << 20
# A scalar_weighted_sum output of exactly 32 MiB, the smallest size the cache serves.
SHAPE = (1, 2, 2048, 2048)


def large_output(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    out = rtseg_ops.scalar_weighted_sum([x, y], torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(out, 2 * x - y)
    return out


def test_freed_output_is_reused_and_overwritten():
    rtseg_ops.empty_cpu_cache()
    first = large_output(seed=0)
    address = first.data_ptr()
    del first
    second = large_output(seed=1)  # checks its values: the old contents were overwritten
    assert second.data_ptr() == address
    del second
    assert rtseg_ops.empty_cpu_cache() == 32 * MIB
    assert rtseg_ops.empty_cpu_cache() == 0


def test_live_outputs_do_not_alias():
    a, b = large_output(seed=0), large_output(seed=1)
    assert a.data_ptr() != b.data_ptr()
    assert not torch.equal(a, b)


def test_small_outputs_bypass_the_cache():
    rtseg_ops.empty_cpu_cache()
    x = torch.randn(1, 2, 64, 64)
    rtseg_ops.scalar_weighted_sum([x, x], torch.tensor([2.0, -1.0]))
    assert rtseg_ops.empty_cpu_cache() == 0


def test_cached_tensor_behaves_like_any_tensor():
    out = large_output()
    expected = out.clone()
    shared = out.clone().share_memory_()
    torch.testing.assert_close(shared, expected, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(out, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer), expected, rtol=0, atol=0)
    out.resize_(2 * out.numel())  # grows through the cache's allocator, keeping the prefix
    torch.testing.assert_close(out[:expected.numel()], expected.flatten(), rtol=0, atol=0)
    out.share_memory_()
    torch.testing.assert_close(out[:expected.numel()], expected.flatten(), rtol=0, atol=0)


def _allocate_in_child(address_queue):
    torch.set_num_threads(1)  # as DataLoader workers do: OpenMP's pool does not survive fork
    out = large_output(seed=2)
    address_queue.put(out.data_ptr())


def test_forked_child_allocates_and_frees():
    """A forked child (a DataLoader worker) allocates and frees through the cache it inherited,
    which holds a block of the parent's. (Whether the lock survives a fork during another
    thread's allocation is not raced here.)"""
    rtseg_ops.empty_cpu_cache()
    large_output()  # freed at once: leaves a cached block
    context = multiprocessing.get_context("fork")
    addresses = context.Queue()
    child = context.Process(target=_allocate_in_child, args=(addresses,))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    assert addresses.get(timeout=5) != 0
    assert rtseg_ops.empty_cpu_cache() == 32 * MIB  # the parent's block is untouched


def run_with_cache_mib(value, code):
    env = dict(os.environ, RTSEG_CPU_CACHE_MIB=value)
    prelude = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n" \
              "from test_cpu_cache import large_output\nimport rtseg_ops\n"
    return subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True,
                          text=True, timeout=300)


def test_limit_keeps_what_fits():
    # 40 MiB holds one of the two 32 MiB blocks freed below.
    done = run_with_cache_mib("40", "a, b = large_output(0), large_output(1)\ndel a, b\n"
                                    "print(rtseg_ops.empty_cpu_cache())")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 32 * MIB


def test_zero_turns_the_cache_off():
    done = run_with_cache_mib("0", "large_output()\nprint(rtseg_ops.empty_cpu_cache())")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 0


def test_bad_limit_is_named():
    done = run_with_cache_mib("lots", "large_output()")
    assert done.returncode != 0
    assert "RTSEG_CPU_CACHE_MIB" in done.stderr and "lots" in done.stderr
