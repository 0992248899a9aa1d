"""Triton kernels of pixel_context_attention, registered as its CUDA implementation.

Forward: one program per tile of pixels of one batch item; all M keys and values stay on chip,
the logits come from ``tl.dot``, the row softmax is exact in float32 and the (pixels x M)
probabilities never reach global memory. The per-pixel log-sum-exp is saved.
Backward: each program walks a fixed set of pixel tiles, recomputes the probabilities from the
log-sum-exp, writes dQ per pixel and accumulates its own dK/dV partial sums, which a second step
adds up in a fixed order (deterministic, no atomics). With all M columns of a row on chip, the
softmax backward's row term rowsum(P * dP) equals flash-attention's <dO, O>, so the output is
never read back.
Queries, outputs and their gradients are read and written in place through their (channel,
pixel) strides, so NCHW (pixel stride 1) and channels_last need no transposes.
"""
import torch
import triton
import triton.language as tl

from ._launch import Launch, run


@triton.jit
def _logits(q_base, sq_c, sq_n, k_base, sk_c, sk_m, offs_n, mask_n, offs_m, mask_m, CK,
            ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_CK: tl.constexpr, IEEE: tl.constexpr):
    """(BLOCK_N, BLOCK_M) tile of query . key, accumulated over Ck in chunks."""
    s = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC)
    for c0 in range(0, CK, BLOCK_CK):
        offs_c = (c0 + tl.arange(0, BLOCK_CK)).to(tl.int64)  # c * N may pass 2**31
        mask_c = offs_c < CK
        q = tl.load(q_base + offs_c[None, :] * sq_c + offs_n[:, None] * sq_n,
                    mask=mask_n[:, None] & mask_c[None, :], other=0.0)
        k = tl.load(k_base + offs_c[:, None] * sk_c + offs_m[None, :] * sk_m,
                    mask=mask_c[:, None] & mask_m[None, :], other=0.0)
        if IEEE:
            s += tl.dot(q, k, input_precision="ieee").to(ACC)
        else:
            s += tl.dot(q, k).to(ACC)
    return s


@triton.jit
def _forward_kernel(q_ptr, sq_b, sq_c, sq_n, k_ptr, sk_b, sk_c, sk_m, v_ptr, sv_b, sv_c, sv_m,
                    o_ptr, so_b, so_c, so_n, lse_ptr, N, M, CK, CV, scale,
                    ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_CK: tl.constexpr, BLOCK_CV: tl.constexpr, IEEE: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs_n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_m = offs_m < M
    s = _logits(q_ptr + b * sq_b, sq_c, sq_n, k_ptr + b * sk_b, sk_c, sk_m, offs_n, mask_n,
                offs_m, mask_m, CK, ACC, BLOCK_N, BLOCK_M, BLOCK_CK, IEEE)
    s = tl.where(mask_m[None, :], s * scale, float("-inf"))
    row_max = tl.max(s, axis=1)
    p = tl.exp(s - row_max[:, None])
    row_sum = tl.sum(p, axis=1)
    p = p / row_sum[:, None]
    tl.store(lse_ptr + b * N + offs_n, row_max + tl.log(row_sum), mask=mask_n)
    for c0 in range(0, CV, BLOCK_CV):
        offs_c = (c0 + tl.arange(0, BLOCK_CV)).to(tl.int64)
        mask_c = offs_c < CV
        v = tl.load(v_ptr + b * sv_b + offs_c[None, :] * sv_c + offs_m[:, None] * sv_m,
                    mask=mask_m[:, None] & mask_c[None, :], other=0.0)
        if IEEE:
            o = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            o = tl.dot(p.to(v.dtype), v)
        tl.store(o_ptr + b * so_b + offs_c[None, :] * so_c + offs_n[:, None] * so_n,
                 o.to(o_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_c[None, :])


@triton.jit
def _backward_kernel(go_ptr, sg_b, sg_c, sg_n, q_ptr, sq_b, sq_c, sq_n, k_ptr, sk_b, sk_c, sk_m,
                     v_ptr, sv_b, sv_c, sv_m, lse_ptr,
                     dq_ptr, sdq_b, sdq_c, sdq_n, dk_part_ptr, dv_part_ptr,
                     N, M, CK, CV, scale, TILES, SPLIT,
                     ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_CK: tl.constexpr, BLOCK_CV: tl.constexpr, IEEE: tl.constexpr):
    split = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    # This program's partial sums: dK (CK, M) and dV (CV, M), float32 (float64 for float64).
    part = b * SPLIT + split
    dk_base = dk_part_ptr + part * CK * M
    dv_base = dv_part_ptr + part * CV * M
    for tile in range(split, TILES, SPLIT):
        offs_n = (tile * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask_n = offs_n < N
        mask_nm = mask_n[:, None] & mask_m[None, :]
        s = _logits(q_ptr + b * sq_b, sq_c, sq_n, k_ptr + b * sk_b, sk_c, sk_m, offs_n, mask_n,
                    offs_m, mask_m, CK, ACC, BLOCK_N, BLOCK_M, BLOCK_CK, IEEE)
        lse = tl.load(lse_ptr + b * N + offs_n, mask=mask_n, other=0.0)
        p = tl.where(mask_nm, tl.exp(s * scale - lse[:, None]), 0.0)
        dp = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC)
        for c0 in range(0, CV, BLOCK_CV):
            offs_c = (c0 + tl.arange(0, BLOCK_CV)).to(tl.int64)
            mask_c = offs_c < CV
            mask_nc = mask_n[:, None] & mask_c[None, :]
            go = tl.load(go_ptr + b * sg_b + offs_c[None, :] * sg_c + offs_n[:, None] * sg_n,
                         mask=mask_nc, other=0.0)
            v_t = tl.load(v_ptr + b * sv_b + offs_c[:, None] * sv_c + offs_m[None, :] * sv_m,
                          mask=mask_c[:, None] & mask_m[None, :], other=0.0)
            dv_ptrs = dv_base + offs_c[:, None] * M + offs_m[None, :]
            mask_cm = mask_c[:, None] & mask_m[None, :]
            if IEEE:
                dp += tl.dot(go, v_t, input_precision="ieee").to(ACC)
                dv = tl.dot(tl.trans(go), p.to(go.dtype), input_precision="ieee")
            else:
                dp += tl.dot(go, v_t).to(ACC)
                dv = tl.dot(tl.trans(go), p.to(go.dtype))
            tl.store(dv_ptrs, tl.load(dv_ptrs, mask=mask_cm, other=0.0) + dv.to(ACC),
                     mask=mask_cm)
        ds = p * (dp - tl.sum(p * dp, axis=1)[:, None]) * scale
        for c0 in range(0, CK, BLOCK_CK):
            offs_c = (c0 + tl.arange(0, BLOCK_CK)).to(tl.int64)
            mask_c = offs_c < CK
            mask_nc = mask_n[:, None] & mask_c[None, :]
            k_t = tl.load(k_ptr + b * sk_b + offs_c[None, :] * sk_c + offs_m[:, None] * sk_m,
                          mask=mask_m[:, None] & mask_c[None, :], other=0.0)
            q = tl.load(q_ptr + b * sq_b + offs_c[None, :] * sq_c + offs_n[:, None] * sq_n,
                        mask=mask_nc, other=0.0)
            dk_ptrs = dk_base + offs_c[:, None] * M + offs_m[None, :]
            mask_cm = mask_c[:, None] & mask_m[None, :]
            if IEEE:
                dq = tl.dot(ds.to(k_t.dtype), k_t, input_precision="ieee")
                dk = tl.dot(tl.trans(q), ds.to(q.dtype), input_precision="ieee")
            else:
                dq = tl.dot(ds.to(k_t.dtype), k_t)
                dk = tl.dot(tl.trans(q), ds.to(q.dtype))
            tl.store(dq_ptr + b * sdq_b + offs_c[None, :] * sdq_c + offs_n[:, None] * sdq_n,
                     dq.to(dq_ptr.dtype.element_ty), mask=mask_nc)
            tl.store(dk_ptrs, tl.load(dk_ptrs, mask=mask_cm, other=0.0) + dk.to(ACC),
                     mask=mask_cm)


def _pow2(n, lo, hi):
    return max(lo, min(hi, triton.next_power_of_2(n)))


def _config(query, key, value):
    M = key.shape[2]
    block_m = _pow2(M, 16, 1 << 30)
    acc = tl.float64 if query.dtype == torch.float64 else tl.float32
    return dict(ACC=acc, BLOCK_M=block_m, BLOCK_CK=_pow2(query.shape[1], 16, 64),
                BLOCK_CV=_pow2(value.shape[1], 16, 64),
                IEEE=query.dtype in (torch.float32, torch.float64))


def _pixels(t):
    """(B, C, H, W) -> (B, C, N); a view for NCHW and channels_last (one pixel stride)."""
    return t.flatten(2)


def _lse_dtype(query):
    return torch.float64 if query.dtype == torch.float64 else torch.float32


def forward_launches(query, key, value, scale):
    """The forward's launches and its (allocated) outputs: output (B, Cv, H, W) in query's
    layout, lse (B, N)."""
    B, CK, H, W = query.shape
    N, M, CV = H * W, key.shape[2], value.shape[1]
    layout = torch.channels_last if (not query.is_contiguous() and query.is_contiguous(
        memory_format=torch.channels_last)) else torch.contiguous_format
    out = torch.empty((B, CV, H, W), dtype=query.dtype, device=query.device,
                      memory_format=layout)
    lse = torch.empty((B, N), dtype=_lse_dtype(query), device=query.device)
    if out.numel() == 0:
        return [], out, lse
    q, o = _pixels(query), _pixels(out)
    cfg = _config(query, key, value)
    block_n = 64 if cfg["BLOCK_M"] <= 128 else 32
    return [Launch(_forward_kernel, (triton.cdiv(N, block_n), B),
                   (q, *q.stride(), key, *key.stride(), value, *value.stride(), o, *o.stride(),
                    lse, N, M, CK, CV, float(scale)), dict(BLOCK_N=block_n, **cfg))], out, lse


def forward(query, key, value, scale):
    """Launch the forward; returns (output (B, Cv, H, W) in query's layout, lse (B, N))."""
    launches, out, lse = forward_launches(query, key, value, scale)
    run(launches, query.device)
    return out, lse


def _programs_per_item(query, tiles):
    """Backward programs per batch item: enough to fill the GPU, each with its own partials."""
    if query.device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(query.device).multi_processor_count
    else:  # the interpreter: a few, so that programs walk several tiles
        target = 2
    return max(1, min(tiles, triton.cdiv(target, max(1, query.shape[0]))))


def backward_launches(grad_output, query, key, value, lse, scale, programs_per_item=None):
    """The backward's launches and (grad_query, dK partials, dV partials)."""
    B, CK, H, W = query.shape
    N, M, CV = H * W, key.shape[2], value.shape[1]
    layout = torch.channels_last if (not query.is_contiguous() and query.is_contiguous(
        memory_format=torch.channels_last)) else torch.contiguous_format
    grad_query = torch.empty(query.shape, dtype=query.dtype, device=query.device,
                             memory_format=layout)
    if B == 0 or N == 0:
        return [], grad_query.zero_(), torch.zeros_like(key)[:, None], \
            torch.zeros_like(value)[:, None]
    cfg = _config(query, key, value)
    block_n = 64 if cfg["BLOCK_M"] <= 64 else 32
    tiles = triton.cdiv(N, block_n)
    split = programs_per_item or _programs_per_item(query, tiles)
    part_dtype = _lse_dtype(query)
    dk_part = torch.zeros((B, split, CK, M), dtype=part_dtype, device=query.device)
    dv_part = torch.zeros((B, split, CV, M), dtype=part_dtype, device=query.device)
    # Expanded (zero-stride) gradients are valid strides for the kernel; non-flattenable ones copy.
    go, q, dq = (_pixels(t) for t in (grad_output, query, grad_query))
    lse = lse.contiguous()
    return [Launch(_backward_kernel, (split, B),
                   (go, *go.stride(), q, *q.stride(), key, *key.stride(), value, *value.stride(),
                    lse, dq, *dq.stride(), dk_part, dv_part, N, M, CK, CV, float(scale), tiles,
                    split), dict(BLOCK_N=block_n, **cfg))], grad_query, dk_part, dv_part


def backward(grad_output, query, key, value, lse, scale, programs_per_item=None):
    """Launch the backward; returns (grad_query, grad_key, grad_value)."""
    launches, grad_query, dk_part, dv_part = backward_launches(
        grad_output, query, key, value, lse, scale, programs_per_item)
    run(launches, query.device)
    return grad_query, dk_part.sum(1).to(key.dtype), dv_part.sum(1).to(value.dtype)
