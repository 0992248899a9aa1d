"""`import rtseg_ops` with triton missing or broken, or numpy missing (each simulated in a fresh
interpreter): the import succeeds, the CPU kernels still run, and the Triton ops report their
missing CUDA kernel and why, in backend_table() and in the warning of the public function."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRITON_OPS = ("pixel_context_attention", "scalar_weighted_sum")

PROBE = """
import json, sys, warnings
{block}
import torch
import rtseg_ops
from rtseg_ops import _backend
x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
w = torch.tensor([0.5, 2.0], dtype=torch.float64)
y = x[:, :, ::2, ::2].contiguous()
out = rtseg_ops.scalar_weighted_sum([x, y], w)
cpu_ok = torch.allclose(out, rtseg_ops.reference.scalar_weighted_sum([x, y], w))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    used = {{op: _backend.use_kernel(op, "cuda") for op in {ops!r}}}
print(json.dumps(dict(table=rtseg_ops.backend_table(), cpu_ok=cpu_ok, used=used,
                      warnings=[str(w.message) for w in caught])))
"""


def _probe(tmp_path, block, extra_path=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, ROOT, env.get("PYTHONPATH"))
                                        if p)
    proc = subprocess.run([sys.executable, "-c", PROBE.format(block=block, ops=TRITON_OPS)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _broken_triton(tmp_path):
    pkg = tmp_path / "fake" / "triton"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('simulated broken triton install')\n")
    return str(tmp_path / "fake")


CASES = {
    "triton broken": (lambda tmp: ("", _broken_triton(tmp)), "simulated broken triton install"),
    "triton missing": (lambda tmp: ("sys.modules['triton'] = None", None), "triton"),
    "numpy missing": (lambda tmp: ("sys.modules['numpy'] = None", None), "numpy"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_import_without_working_triton_or_numpy(tmp_path, case):
    setup, reason = CASES[case]
    block, path = setup(tmp_path)
    result = _probe(tmp_path, block, path)
    if not result["table"][0].get("cpu") == "C++":
        pytest.skip("the extension is not built (RTSEG_NO_EXT)")
    assert result["cpu_ok"], "the CPU kernel gave a wrong result"
    rows = {r["op"]: r for r in result["table"]}
    no_kernel = "none (CPU-only torch)" if torch.version.cuda is None else "reference"
    for op in TRITON_OPS:
        if case == "numpy missing" and op == "pixel_context_attention":
            continue  # its Triton module does not need numpy
        assert rows[op]["cuda"] == no_kernel, rows[op]
        assert reason in rows[op]["missing"]["cuda"], rows[op]
        assert not result["used"][op]
        assert any(op in w and reason in w for w in result["warnings"]), result["warnings"]
    for op, row in rows.items():
        assert row["cpu"] == "C++", row
