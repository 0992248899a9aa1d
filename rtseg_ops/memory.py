"""The CPU memory rtseg keeps for reuse.

CPU outputs of 32 MiB or more are served from a cache of blocks that stay mapped after their
tensors are freed: glibc would unmap them, and every call would fault its output in afresh, which
costs more than many of the kernels. The cache holds at most ``RTSEG_CPU_CACHE_MIB`` MiB of freed
blocks (read once, at the first large output; default 512, 0 turns the cache off).
"""
from . import _backend


def empty_cpu_cache():
    """Hand every cached, unused block back to the system (the CPU counterpart of
    ``torch.cuda.empty_cache``); returns the number of bytes freed. Tensors still alive keep their
    memory."""
    if not _backend.extension_loaded():
        return 0
    from . import _C
    return _C.empty_cpu_cache()
