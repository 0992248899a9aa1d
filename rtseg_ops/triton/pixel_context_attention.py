"""Triton kernels of pixel_context_attention, registered as its CUDA implementation.

The context is walked in tiles of at most BLOCK_M vectors, so any M fits on chip.
Forward: one program per tile of pixels of one batch item. With M in one tile, the logits come
from one pass of ``tl.dot``, the row softmax is exact in float32 and the probabilities are
multiplied into V chunk by chunk; with several tiles, a first pass finds each row's max and sum
online and a second recomputes the probabilities per tile. The (pixels x M) probabilities never
reach global memory; the per-pixel log-sum-exp is saved.
Backward, three deterministic steps (no atomics):
1. per pixel tile: P (from the log-sum-exp) and dP = dO V^T, written to float32 (float64)
   scratch, and the row term D = rowsum(P * dP) (with the whole row on chip this is
   flash-attention's <dO, O>, so the output is never read back);
2. dV = dO^T P and dK = Q^T dS, dS = P (dP - D) scale, as split-K products over ranges of pixel
   tiles: each program accumulates one (channel chunk x M tile) block in registers and writes it
   once; the splits are summed in a fixed order;
3. per pixel tile: dQ = dS K.
Queries, outputs and their gradients are read and written in place through their (channel,
pixel) strides, so NCHW (pixel stride 1) and channels_last need no transposes.

Precision: float64 runs IEEE float64 products. float32 uses tensor cores: 3xTF32 (three TF32
products that recover float32's accuracy to a few units in the last place) by default, and plain
TF32 when ``torch.get_float32_matmul_precision()`` is "high" or "medium", as torch's own float32
matmuls do. float16 and bfloat16 multiply in their dtype. All accumulate in float32 (float64).
"""
import torch
import triton
import triton.language as tl

from ._launch import Launch, run


@triton.jit
def _logits(q_base, sq_c, sq_n, k_base, sk_c, sk_m, offs_n, mask_n, offs_m, mask_m, CK,
            ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_CK: tl.constexpr, PREC: tl.constexpr):
    """(BLOCK_N, BLOCK_M) tile of query . key, accumulated over Ck in chunks."""
    s = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC)
    for c0 in range(0, CK, BLOCK_CK):
        offs_c = (c0 + tl.arange(0, BLOCK_CK)).to(tl.int64)  # c * N may pass 2**31
        mask_c = offs_c < CK
        q = tl.load(q_base + offs_c[None, :] * sq_c + offs_n[:, None] * sq_n,
                    mask=mask_n[:, None] & mask_c[None, :], other=0.0)
        k = tl.load(k_base + offs_c[:, None] * sk_c + offs_m[None, :] * sk_m,
                    mask=mask_c[:, None] & mask_m[None, :], other=0.0)
        s += tl.dot(q, k, input_precision=PREC).to(ACC)
    return s


@triton.jit
def _forward_kernel(q_ptr, sq_b, sq_c, sq_n, k_ptr, sk_b, sk_c, sk_m, v_ptr, sv_b, sv_c, sv_m,
                    o_ptr, so_b, so_c, so_n, lse_ptr, N, M, CK, CV, scale,
                    ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_CK: tl.constexpr, BLOCK_CV: tl.constexpr, ONE_TILE: tl.constexpr,
                    PREC: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs_n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask_n = offs_n < N
    q_base, k_base, v_base = q_ptr + b * sq_b, k_ptr + b * sk_b, v_ptr + b * sv_b
    o_base = o_ptr + b * so_b
    if ONE_TILE:
        offs_m = tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        s = _logits(q_base, sq_c, sq_n, k_base, sk_c, sk_m, offs_n, mask_n, offs_m, mask_m, CK,
                    ACC, BLOCK_N, BLOCK_M, BLOCK_CK, PREC)
        s = tl.where(mask_m[None, :], s * scale, float("-inf"))
        row_max = tl.max(s, axis=1)
        p = tl.exp(s - row_max[:, None])
        row_sum = tl.sum(p, axis=1)
        p = p / row_sum[:, None]
        tl.store(lse_ptr + b * N + offs_n, row_max + tl.log(row_sum), mask=mask_n)
        for c0 in range(0, CV, BLOCK_CV):
            offs_c = (c0 + tl.arange(0, BLOCK_CV)).to(tl.int64)
            mask_c = offs_c < CV
            v = tl.load(v_base + offs_c[None, :] * sv_c + offs_m[:, None] * sv_m,
                        mask=mask_m[:, None] & mask_c[None, :], other=0.0)
            o = tl.dot(p.to(v.dtype), v, input_precision=PREC)
            tl.store(o_base + offs_c[None, :] * so_c + offs_n[:, None] * so_n,
                     o.to(o_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_c[None, :])
    else:
        # pass 1: each row's max and sum of exponentials, online over the context tiles
        row_max = tl.full((BLOCK_N,), float("-inf"), ACC)
        row_sum = tl.zeros((BLOCK_N,), ACC)
        for m0 in range(0, M, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            mask_m = offs_m < M
            s = _logits(q_base, sq_c, sq_n, k_base, sk_c, sk_m, offs_n, mask_n, offs_m, mask_m,
                        CK, ACC, BLOCK_N, BLOCK_M, BLOCK_CK, PREC)
            s = tl.where(mask_m[None, :], s * scale, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(s, axis=1))
            row_sum = row_sum * tl.exp(row_max - new_max) + \
                tl.sum(tl.exp(s - new_max[:, None]), axis=1)
            row_max = new_max
        lse = row_max + tl.log(row_sum)
        tl.store(lse_ptr + b * N + offs_n, lse, mask=mask_n)
        # pass 2: per chunk of Cv, the probabilities of each tile times its values
        for c0 in range(0, CV, BLOCK_CV):
            offs_c = (c0 + tl.arange(0, BLOCK_CV)).to(tl.int64)
            mask_c = offs_c < CV
            o = tl.zeros((BLOCK_N, BLOCK_CV), ACC)
            for m0 in range(0, M, BLOCK_M):
                offs_m = m0 + tl.arange(0, BLOCK_M)
                mask_m = offs_m < M
                s = _logits(q_base, sq_c, sq_n, k_base, sk_c, sk_m, offs_n, mask_n, offs_m,
                            mask_m, CK, ACC, BLOCK_N, BLOCK_M, BLOCK_CK, PREC)
                p = tl.where(mask_m[None, :], tl.exp(s * scale - lse[:, None]), 0.0)
                v = tl.load(v_base + offs_c[None, :] * sv_c + offs_m[:, None] * sv_m,
                            mask=mask_m[:, None] & mask_c[None, :], other=0.0)
                o += tl.dot(p.to(v.dtype), v, input_precision=PREC).to(ACC)
            tl.store(o_base + offs_c[None, :] * so_c + offs_n[:, None] * so_n,
                     o.to(o_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_c[None, :])


@triton.jit
def _backward_rows_kernel(go_ptr, sg_b, sg_c, sg_n, q_ptr, sq_b, sq_c, sq_n, k_ptr, sk_b, sk_c,
                          sk_m, v_ptr, sv_b, sv_c, sv_m, lse_ptr, p_ptr, dp_ptr, d_ptr,
                          N, M, CK, CV, scale,
                          ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_CK: tl.constexpr, BLOCK_CV: tl.constexpr, PREC: tl.constexpr):
    """Step 1: P and dP of a pixel tile into the (B, N, M) scratch, D into (B, N)."""
    b = tl.program_id(1).to(tl.int64)
    offs_n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask_n = offs_n < N
    lse = tl.load(lse_ptr + b * N + offs_n, mask=mask_n, other=0.0)
    row = b * N * M + offs_n[:, None] * M
    d = tl.zeros((BLOCK_N,), ACC)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        mask_nm = mask_n[:, None] & mask_m[None, :]
        s = _logits(q_ptr + b * sq_b, sq_c, sq_n, k_ptr + b * sk_b, sk_c, sk_m, offs_n, mask_n,
                    offs_m, mask_m, CK, ACC, BLOCK_N, BLOCK_M, BLOCK_CK, PREC)
        p = tl.where(mask_nm, tl.exp(s * scale - lse[:, None]), 0.0)
        dp = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC)
        for c0 in range(0, CV, BLOCK_CV):
            offs_c = (c0 + tl.arange(0, BLOCK_CV)).to(tl.int64)
            mask_c = offs_c < CV
            go = tl.load(go_ptr + b * sg_b + offs_c[None, :] * sg_c + offs_n[:, None] * sg_n,
                         mask=mask_n[:, None] & mask_c[None, :], other=0.0)
            v_t = tl.load(v_ptr + b * sv_b + offs_c[:, None] * sv_c + offs_m[None, :] * sv_m,
                          mask=mask_c[:, None] & mask_m[None, :], other=0.0)
            dp += tl.dot(go, v_t, input_precision=PREC).to(ACC)
        tl.store(p_ptr + row + offs_m[None, :], p, mask=mask_nm)
        tl.store(dp_ptr + row + offs_m[None, :], dp, mask=mask_nm)
        d += tl.sum(p * dp, axis=1)
    tl.store(d_ptr + b * N + offs_n, d, mask=mask_n)


@triton.jit
def _grad_scores(p_ptr, dp_ptr, d, row, offs_m, mask_nm, scale, GRAD_K: tl.constexpr):
    """P (for dV) or dS = P (dP - D) scale (for dK and dQ) of one tile, from the scratch."""
    p = tl.load(p_ptr + row + offs_m[None, :], mask=mask_nm, other=0.0)
    if GRAD_K:
        dp = tl.load(dp_ptr + row + offs_m[None, :], mask=mask_nm, other=0.0)
        p = p * (dp - d[:, None]) * scale
    return p


@triton.jit
def _backward_columns_kernel(x_ptr, sx_b, sx_c, sx_n, p_ptr, dp_ptr, d_ptr, part_ptr,
                             N, M, C, scale, TILES, TILES_PER_SPLIT, M_TILES,
                             GRAD_K: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, PREC: tl.constexpr):
    """Step 2: this split's (BLOCK_C x BLOCK_M) block of dV = dO^T P (x = dO) or of
    dK = Q^T dS (x = Q, GRAD_K), summed over its pixel tiles, into part[b, split]. The blocks of
    one split are neighbours in the grid, so the scratch tiles they share are read from L2."""
    split = tl.program_id(1)
    c_tile = tl.program_id(0) // M_TILES
    b = tl.program_id(2).to(tl.int64)
    offs_c = (c_tile * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask_c = offs_c < C
    offs_m = (tl.program_id(0) % M_TILES) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    acc = tl.zeros((BLOCK_C, BLOCK_M), ACC)
    first = split * TILES_PER_SPLIT
    for tile in range(first, tl.minimum(first + TILES_PER_SPLIT, TILES)):
        offs_n = (tile * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask_n = offs_n < N
        x_t = tl.load(x_ptr + b * sx_b + offs_c[:, None] * sx_c + offs_n[None, :] * sx_n,
                      mask=mask_c[:, None] & mask_n[None, :], other=0.0)
        d = tl.load(d_ptr + b * N + offs_n, mask=mask_n, other=0.0) if GRAD_K else 0.0
        w = _grad_scores(p_ptr, dp_ptr, d, b * N * M + offs_n[:, None] * M, offs_m,
                         mask_n[:, None] & mask_m[None, :], scale, GRAD_K)
        acc += tl.dot(x_t, w.to(x_t.dtype), input_precision=PREC).to(ACC)
    part = part_ptr + (b * tl.num_programs(1) + split) * C * M
    tl.store(part + offs_c[:, None] * M + offs_m[None, :], acc,
             mask=mask_c[:, None] & mask_m[None, :])


@triton.jit
def _backward_dq_kernel(p_ptr, dp_ptr, d_ptr, k_ptr, sk_b, sk_c, sk_m, dq_ptr, sdq_b, sdq_c,
                        sdq_n, N, M, CK, scale, ACC: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_CK: tl.constexpr, PREC: tl.constexpr):
    """Step 3: dQ = dS K for a pixel tile and a chunk of Ck."""
    b = tl.program_id(2).to(tl.int64)
    offs_n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask_n = offs_n < N
    offs_c = (tl.program_id(1) * BLOCK_CK + tl.arange(0, BLOCK_CK)).to(tl.int64)
    mask_c = offs_c < CK
    d = tl.load(d_ptr + b * N + offs_n, mask=mask_n, other=0.0)
    row = b * N * M + offs_n[:, None] * M
    acc = tl.zeros((BLOCK_N, BLOCK_CK), ACC)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        ds = _grad_scores(p_ptr, dp_ptr, d, row, offs_m, mask_n[:, None] & mask_m[None, :],
                          scale, True)
        k_t = tl.load(k_ptr + b * sk_b + offs_c[None, :] * sk_c + offs_m[:, None] * sk_m,
                      mask=mask_m[:, None] & mask_c[None, :], other=0.0)
        acc += tl.dot(ds.to(k_t.dtype), k_t, input_precision=PREC).to(ACC)
    tl.store(dq_ptr + b * sdq_b + offs_c[None, :] * sdq_c + offs_n[:, None] * sdq_n,
             acc.to(dq_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_c[None, :])


def _pow2(n, lo, hi):
    return max(lo, min(hi, triton.next_power_of_2(n)))


def _precision(dtype):
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "tf32x3"
    return "tf32"  # float32 at "high"/"medium"; ignored for float16 and bfloat16


def _blocks(dtype, CK, CV, M):
    """Tiles and warps per kernel (found with tools/triton_compile_check.py: no spills, shared
    memory within an sm_90 block's). The context is cut into tiles of at most 128 vectors
    (64 in float64) in the forward and in step 2, 32 in steps 1 and 3, whose live (pixels x M)
    tiles otherwise spilled; the scratch they share is (B, N, M), so each step tiles it its own
    way."""
    wide = dtype == torch.float64
    block_c = 32 if wide else 64
    block_m = _pow2(M, 16, 64 if wide else 128)
    forward = dict(BLOCK_N=32 if wide or block_m > 64 else 64, BLOCK_M=block_m,
                   BLOCK_CK=_pow2(CK, 16, block_c), BLOCK_CV=_pow2(CV, 16, block_c))
    forward["num_warps"] = 8 if forward["BLOCK_N"] * block_m >= 2048 else 4
    row_m = _pow2(M, 16, 32)
    # 3xTF32 splits both dot operands in registers: float32 pipelines fewer loads ahead
    rows = dict(BLOCK_N=32 if wide else 64, BLOCK_M=row_m, BLOCK_CK=_pow2(CK, 16, 32),
                BLOCK_CV=_pow2(CV, 16, 32), num_warps=8)
    columns = dict(BLOCK_N=16 if wide else 32, BLOCK_M=block_m,
                   num_warps=8 if block_m >= 64 else 4,
                   num_stages=2)
    if dtype == torch.float32:  # spill-free with Triton 3.6 and 3.9
        forward.update(BLOCK_CK=32, BLOCK_CV=64, num_stages=1)
        rows["num_stages"] = columns["num_stages"] = 1
    dq = dict(BLOCK_N=32 if wide else 64, BLOCK_M=row_m, BLOCK_CK=_pow2(CK, 16, 32),
              num_warps=4)
    return dict(forward=forward, rows=rows, columns=columns, dq=dq,
                BLOCK_CK=_pow2(CK, 16, block_c), BLOCK_CV=_pow2(CV, 16, block_c))


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _pixels(t):
    """(B, C, H, W) -> (B, C, N); a view for NCHW and channels_last (one pixel stride)."""
    return t.flatten(2)


def _lse_dtype(query):
    return torch.float64 if query.dtype == torch.float64 else torch.float32


def _launch(kernel, grid, args, config, **constexprs):
    """A Launch with a _blocks() entry's tiles, warps and stages."""
    config = dict(config)
    options = {k: config.pop(k) for k in ("num_warps", "num_stages") if k in config}
    return Launch(kernel, grid, args, dict(config, **constexprs), **options)


def _layout(query):
    return torch.channels_last if (not query.is_contiguous() and query.is_contiguous(
        memory_format=torch.channels_last)) else torch.contiguous_format


def _check(query, key, value, scale):
    # imported here: that module imports this one
    from ..pixel_context_attention import _check_args
    _check_args(query, key, value, scale)


def forward_launches(query, key, value, scale):
    """The forward's launches and its (allocated) outputs: output (B, Cv, H, W) in query's
    layout, lse (B, N)."""
    _check(query, key, value, scale)
    B, CK, H, W = query.shape
    N, M, CV = H * W, key.shape[2], value.shape[1]
    out = torch.empty((B, CV, H, W), dtype=query.dtype, device=query.device,
                      memory_format=_layout(query))
    lse = torch.empty((B, N), dtype=_lse_dtype(query), device=query.device)
    if out.numel() == 0:
        return [], out, lse
    q, o = _pixels(query), _pixels(out)
    blk = _blocks(query.dtype, CK, CV, M)["forward"]
    return [_launch(_forward_kernel, (triton.cdiv(N, blk["BLOCK_N"]), B),
                    (q, *q.stride(), key, *key.stride(), value, *value.stride(), o, *o.stride(),
                     lse, N, M, CK, CV, float(scale)), blk, ACC=_acc(query.dtype),
                    ONE_TILE=M <= blk["BLOCK_M"], PREC=_precision(query.dtype))], out, lse


def forward(query, key, value, scale):
    """Launch the forward; returns (output (B, Cv, H, W) in query's layout, lse (B, N))."""
    launches, out, lse = forward_launches(query, key, value, scale)
    run(launches, query.device)
    return out, lse


def _splits(device, tiles, programs_per_split):
    """Pixel-tile ranges of step 2: enough programs to fill the GPU (four per SM), each range at
    least four tiles long so that the partials stay small next to the inputs."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the interpreter; meta tensors (the sm_90 compile check)
        target = 8
    splits = max(1, min(triton.cdiv(tiles, 4), triton.cdiv(target, programs_per_split)))
    per_split = triton.cdiv(tiles, splits)
    return triton.cdiv(tiles, per_split), per_split


def _check_backward(grad_output, query, key, value, lse, scale):
    _check(query, key, value, scale)
    B, _, H, W = query.shape
    expected = (B, value.shape[1], H, W)
    if not isinstance(grad_output, torch.Tensor) or tuple(grad_output.shape) != expected:
        raise ValueError(f"grad_output: expected shape {expected}, got "
                         f"{tuple(getattr(grad_output, 'shape', ()))}")
    if not isinstance(lse, torch.Tensor) or tuple(lse.shape) != (B, H * W):
        raise ValueError(f"lse: expected shape {(B, H * W)}, got "
                         f"{tuple(getattr(lse, 'shape', ()))}")
    for t, name, dtype in ((grad_output, "grad_output", query.dtype),
                           (lse, "lse", _lse_dtype(query))):
        if t.device != query.device:
            raise ValueError(f"{name}: expected device {query.device} (that of query), got "
                             f"{t.device}")
        if t.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")


def backward_launches(grad_output, query, key, value, lse, scale, splits=None):
    """The backward's launches and (grad_query, dK partials (B, S, Ck, M), dV partials
    (B, S, Cv, M)), the partials to be summed over S. `splits` forces the number of pixel-tile
    ranges of step 2 (tests)."""
    _check_backward(grad_output, query, key, value, lse, scale)
    B, CK, H, W = query.shape
    N, M, CV = H * W, key.shape[2], value.shape[1]
    dev = query.device
    grad_query = torch.empty(query.shape, dtype=query.dtype, device=dev,
                             memory_format=_layout(query))
    if B == 0 or N == 0:
        return [], grad_query.zero_(), torch.zeros_like(key)[:, None], \
            torch.zeros_like(value)[:, None]
    blk = _blocks(query.dtype, CK, CV, M)
    rows, columns, dq_blk = (blk[k] for k in ("rows", "columns", "dq"))
    acc, prec = _acc(query.dtype), _precision(query.dtype)
    col_tiles = triton.cdiv(N, columns["BLOCK_N"])
    m_tiles = triton.cdiv(M, columns["BLOCK_M"])
    ck_tiles, cv_tiles = triton.cdiv(CK, blk["BLOCK_CK"]), triton.cdiv(CV, blk["BLOCK_CV"])
    if splits is None:
        splits, per_split = _splits(dev, col_tiles, B * m_tiles * (ck_tiles + cv_tiles))
    else:
        per_split = triton.cdiv(col_tiles, splits)
        splits = triton.cdiv(col_tiles, per_split)
    part_dtype = _lse_dtype(query)
    p = torch.empty((B, N, M), dtype=part_dtype, device=dev)
    dp = torch.empty_like(p)
    d = torch.empty((B, N), dtype=part_dtype, device=dev)
    dk_part = torch.empty((B, splits, CK, M), dtype=part_dtype, device=dev)
    dv_part = torch.empty((B, splits, CV, M), dtype=part_dtype, device=dev)
    # Expanded (zero-stride) gradients are valid strides for the kernels.
    go, q, dq = (_pixels(t) for t in (grad_output, query, grad_query))
    lse = lse.contiguous()
    common = dict(ACC=acc, PREC=prec)
    launches = [
        _launch(_backward_rows_kernel, (triton.cdiv(N, rows["BLOCK_N"]), B),
                (go, *go.stride(), q, *q.stride(), key, *key.stride(), value, *value.stride(),
                 lse, p, dp, d, N, M, CK, CV, float(scale)), rows, **common),
        _launch(_backward_columns_kernel, (cv_tiles * m_tiles, splits, B),
                (go, *go.stride(), p, dp, d, dv_part, N, M, CV, float(scale), col_tiles,
                 per_split, m_tiles), columns, GRAD_K=False, BLOCK_C=blk["BLOCK_CV"], **common),
        _launch(_backward_columns_kernel, (ck_tiles * m_tiles, splits, B),
                (q, *q.stride(), p, dp, d, dk_part, N, M, CK, float(scale), col_tiles,
                 per_split, m_tiles), columns, GRAD_K=True, BLOCK_C=blk["BLOCK_CK"], **common),
        _launch(_backward_dq_kernel,
                (triton.cdiv(N, dq_blk["BLOCK_N"]), triton.cdiv(CK, dq_blk["BLOCK_CK"]), B),
                (p, dp, d, key, *key.stride(), dq, *dq.stride(), N, M, CK, float(scale)),
                dq_blk, **common),
    ]
    return launches, grad_query, dk_part, dv_part


def backward(grad_output, query, key, value, lse, scale, splits=None):
    """Launch the backward; returns (grad_query, grad_key, grad_value)."""
    launches, grad_query, dk_part, dv_part = backward_launches(
        grad_output, query, key, value, lse, scale, splits)
    run(launches, query.device)
    return grad_query, dk_part.sum(1).to(key.dtype), dv_part.sum(1).to(value.dtype)
