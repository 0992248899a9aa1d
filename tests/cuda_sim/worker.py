"""The simulator's worker process (started by cuda_sim.Worker with the ASan runtime preloaded).

Requests arrive on the socket named by argv[1]; each answer is (status, payload, launches since
the previous answer).
"""
import os
import sys
import traceback
from multiprocessing.connection import Connection

import torch

import cuda_sim

# The ASan runtime is loaded; the compilers this process starts must not get it.
os.environ.pop("LD_PRELOAD", None)


def outputs(result):
    return list(result) if isinstance(result, (list, tuple)) else [result]


def raw_bytes(t):
    flat = torch.empty(t.numel(), dtype=t.dtype)
    flat.copy_(t.reshape(-1))
    return flat.view(torch.uint8)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw_bytes(a), raw_bytes(b))


def run_seeds(ext, op, args, seeds):
    """The op under each seed; the first result. Without atomics the runs must agree bitwise,
    with them within a tolerance (their order follows the schedule)."""
    fn = getattr(torch.ops.rtseg_sim, op)
    first = None
    for seed in seeds:
        ext.set_seed(seed)
        atomics = ext.atomics_executed()
        result = fn(*args)
        exact = ext.atomics_executed() == atomics
        if first is None:
            first, first_seed = result, seed
            continue
        for i, (a, b) in enumerate(zip(outputs(first), outputs(result))):
            if a is None or a.numel() == 0:
                continue
            if exact and not same_bits(a, b):
                raise cuda_sim.SimulatorError(
                    f"rtseg_sim::{op}: output {i} differs between schedule seeds {first_seed} "
                    f"and {seed} although no atomics ran (a race the checker missed, or "
                    "uninitialized memory)")
            if not exact:
                tol = 1e-5 if a.dtype in (torch.float32, torch.float64) else 1e-2
                torch.testing.assert_close(a, b, atol=tol, rtol=tol, equal_nan=True, msg=lambda m: (
                    f"rtseg_sim::{op}: output {i} differs between seeds beyond rounding: {m}"))
    return first


def main():
    conn = Connection(int(sys.argv[1]))
    ext = schemas = None
    seen = {}

    def new_launches():
        counts = ext.launch_counts() if ext is not None else {}
        delta = {k: n - seen.get(k, 0) for k, n in counts.items() if n != seen.get(k, 0)}
        seen.update(counts)
        return delta

    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        try:
            kind = message[0]
            if kind == "init":
                schemas = torch.library.Library("rtseg_sim", "DEF")  # kept: it owns the schemas
                for _, schema in message[1]:
                    schemas.define(schema.split("::", 1)[1])
                ext = cuda_sim.build()
                payload = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
                                 if n.startswith("rtseg_sim::") and
                                 torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU"))
            elif kind == "call":
                _, op, args, seeds, deterministic = message
                torch.use_deterministic_algorithms(deterministic)
                payload = cuda_sim.pack(run_seeds(ext, op, cuda_sim.unpack(args), seeds))
            elif kind == "planted":
                _, which, data = message
                data = cuda_sim.unpack(data)
                ext.launch_planted(which, data)
                payload = cuda_sim.pack(data)
            else:
                payload = None
            conn.send(("ok", payload, new_launches()))
        except Exception as exc:  # reported to the test, which raises it
            text = str(exc)
            kind = "SimulatorError" if "cuda_sim:" in text or isinstance(
                exc, cuda_sim.SimulatorError) else type(exc).__name__
            if message[0] == "init":
                text += "\n" + traceback.format_exc()
            conn.send(("error", (kind, text), new_launches()))


if __name__ == "__main__":
    main()
