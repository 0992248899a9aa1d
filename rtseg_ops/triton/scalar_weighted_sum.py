"""Triton kernels of scalar_weighted_sum, registered as the CUDA implementation of
``rtseg::scalar_weighted_sum`` and ``rtseg::scalar_weighted_sum_backward``.

Forward: one program per block of output elements reads every input at its own resolution (the
nearest source element, or the 3x3/2 max window of the pooled element the nearest step picks),
applies the fused (optionally normalised) weights and swish, and stores once.

Backward, deterministic (no atomics):
1. at the output resolution, recompute the sum, form the gradient before the activation
   (``grad_sum``, float32 buffer) and each program's partial sums of ``grad_sum * resized_i``;
2. one program reduces the partials in a fixed order into the weight gradients (through the
   normalisation when it is on);
3. per input, every input element gathers ``grad_sum`` from the output elements that read it:
   a nearest range, or, for pooled inputs, the ranges of the (at most 2x2) windows whose arg-max,
   recomputed with F.max_pool2d's rule (first maximum in row-major order, NaN wins), it is.

Normalisation, swish and the memory layout are run-time flags (uniform branches) and so are the
upsampling fan-ins (run-time loops): one compilation per dtype and resize kinds serves them all.
Nearest indices use F.interpolate's float32 rule, ``min(floor(dst * float32(in / out)), in - 1)``.
"""
import numpy as np
import torch
import triton
import triton.language as tl

from .._checks import output_memory_format
from ._launch import Launch, run

IDENTITY, NEAREST, POOL_NEAREST = 0, 1, 2  # csrc/common/resize.h: Resize
BLOCK = 1024
# 4 elements per thread: with 4 warps (8 per thread) the pooled gathers took 206 to 255
# registers for sm_90 and spilled in float16/bfloat16
NUM_WARPS = 8
PARTIAL_BLOCK = 1024


@triton.jit
def _nearest(dst, scale, n_in):
    src = tl.floor(dst.to(tl.float32) * scale).to(tl.int32)
    return tl.minimum(src, n_in - 1)


@triton.jit
def _first_output(s, scale, n_mid, n_out):
    """Smallest output index whose nearest source is >= s: the exact-rational estimate,
    corrected by one step for float32 rounding."""
    est = (s * n_out + n_mid - 1) // n_mid
    est = tl.where((est > 0) & (_nearest(est - 1, scale, n_mid) >= s), est - 1, est)
    est = tl.where((est < n_out) & (_nearest(est, scale, n_mid) < s), est + 1, est)
    return est


@triton.jit
def _block_index(BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    """This program's element positions; int32 unless some offset may reach 2**31 (64-bit
    division in _split is several times slower)."""
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _split(idx, C, H, W, channels_last):
    """(b, c, y, x) of the element at memory position idx of a dense (B, C, H, W) tensor."""
    if channels_last != 0:
        c = idx % C
        x = (idx // C) % W
        y = (idx // (C * W)) % H
        b = idx // (C * W * H)
    else:
        x = idx % W
        y = (idx // W) % H
        c = (idx // (W * H)) % C
        b = idx // (W * H * C)
    return b, c, y.to(tl.int32), x.to(tl.int32)


@triton.jit
def _read(ptr, b, c, y, x, mask, h, w, sn, sc, sh, sw, mid_h, mid_w, fy, fx,
          KIND: tl.constexpr, ACC: tl.constexpr):
    """Input value at output element (b, c, y, x) after reference.resize_to."""
    base = ptr + b * sn + c * sc
    if KIND == 0:
        v = tl.load(base + y.to(tl.int64) * sh + x.to(tl.int64) * sw, mask=mask, other=0)
        v = v.to(ACC)
    elif KIND == 1:
        sy = _nearest(y, fy, mid_h).to(tl.int64)
        sx = _nearest(x, fx, mid_w).to(tl.int64)
        v = tl.load(base + sy * sh + sx * sw, mask=mask, other=0).to(ACC)
    else:
        py = _nearest(y, fy, mid_h)
        px = _nearest(x, fx, mid_w)
        v = tl.full(y.shape, float("-inf"), ACC)
        for dy in tl.static_range(3):
            r = 2 * py - 1 + dy
            for dx in tl.static_range(3):
                u = 2 * px - 1 + dx
                ok = mask & (r >= 0) & (r < h) & (u >= 0) & (u < w)
                t = tl.load(base + r.to(tl.int64) * sh + u.to(tl.int64) * sw, mask=ok,
                            other=float("-inf")).to(ACC)
                v = tl.where((t > v) | (t != t), t, v)
        v = tl.where(mask, v, 0)  # keeps -inf out of masked lanes' arithmetic
    return v


@triton.jit
def _weights(w_ptr, eps, normalize, N: tl.constexpr, ACC: tl.constexpr):
    """The four fused weights (zero beyond N)."""
    v0 = tl.load(w_ptr).to(ACC)
    v1 = tl.load(w_ptr + 1).to(ACC) if N > 1 else v0 * 0
    v2 = tl.load(w_ptr + 2).to(ACC) if N > 2 else v0 * 0
    v3 = tl.load(w_ptr + 3).to(ACC) if N > 3 else v0 * 0
    if normalize != 0:
        v0 = tl.maximum(v0, 0)
        v1 = tl.maximum(v1, 0)
        v2 = tl.maximum(v2, 0)
        v3 = tl.maximum(v3, 0)
        total = v0 + v1 + v2 + v3 + eps
        v0, v1, v2, v3 = v0 / total, v1 / total, v2 / total, v3 / total
    return v0, v1, v2, v3


# the flags are 0/1 integers, not specialised: one compilation serves both values
@triton.jit(do_not_specialize=["normalize", "swish", "channels_last"])
def _forward_kernel(out_ptr, w_ptr, total, C, H, W, eps,
                    x0, h0, w0, sn0, sc0, sh0, sw0, mh0, mw0, fy0, fx0,
                    x1, h1, w1, sn1, sc1, sh1, sw1, mh1, mw1, fy1, fx1,
                    x2, h2, w2, sn2, sc2, sh2, sw2, mh2, mw2, fy2, fx2,
                    x3, h3, w3, sn3, sc3, sh3, sw3, mh3, mw3, fy3, fx3,
                    normalize, swish, channels_last,
                    N: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
                    K3: tl.constexpr, ACC: tl.constexpr, INDEX_64: tl.constexpr,
                    BLOCK: tl.constexpr):
    idx = _block_index(BLOCK, INDEX_64)
    mask = idx < total
    b, c, y, x = _split(idx, C, H, W, channels_last)
    a0, a1, a2, a3 = _weights(w_ptr, eps, normalize, N, ACC)
    s = a0 * _read(x0, b, c, y, x, mask, h0, w0, sn0, sc0, sh0, sw0, mh0, mw0, fy0, fx0, K0, ACC)
    if N > 1:
        s += a1 * _read(x1, b, c, y, x, mask, h1, w1, sn1, sc1, sh1, sw1, mh1, mw1, fy1, fx1, K1,
                        ACC)
    if N > 2:
        s += a2 * _read(x2, b, c, y, x, mask, h2, w2, sn2, sc2, sh2, sw2, mh2, mw2, fy2, fx2, K2,
                        ACC)
    if N > 3:
        s += a3 * _read(x3, b, c, y, x, mask, h3, w3, sn3, sc3, sh3, sw3, mh3, mw3, fy3, fx3, K3,
                        ACC)
    if swish != 0:
        s = s / (1 + tl.exp(-s))
    tl.store(out_ptr + idx, s.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _partial_dot(g, r, mask):
    return tl.sum(tl.where(mask, g * r, 0), axis=0)


@triton.jit(do_not_specialize=["normalize", "swish", "channels_last"])
def _backward_sum_kernel(grad_ptr, gsn, gsc, gsh, gsw, gsum_ptr, partial_ptr, w_ptr, total,
                         C, H, W, eps,
                         x0, h0, w0, sn0, sc0, sh0, sw0, mh0, mw0, fy0, fx0,
                         x1, h1, w1, sn1, sc1, sh1, sw1, mh1, mw1, fy1, fx1,
                         x2, h2, w2, sn2, sc2, sh2, sw2, mh2, mw2, fy2, fx2,
                         x3, h3, w3, sn3, sc3, sh3, sw3, mh3, mw3, fy3, fx3,
                         normalize, swish, channels_last,
                         N: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr,
                         K2: tl.constexpr, K3: tl.constexpr, ACC: tl.constexpr,
                         INDEX_64: tl.constexpr, BLOCK: tl.constexpr):
    """grad_sum (the gradient before the activation, in the output's memory order) and this
    program's partial sums of grad_sum * resized_i, at partial_ptr[program, i]."""
    pid = tl.program_id(0)
    idx = _block_index(BLOCK, INDEX_64)
    mask = idx < total
    b, c, y, x = _split(idx, C, H, W, channels_last)
    g = tl.load(grad_ptr + b * gsn + c * gsc + y.to(tl.int64) * gsh + x.to(tl.int64) * gsw,
                mask=mask, other=0).to(ACC)
    a0, a1, a2, a3 = _weights(w_ptr, eps, normalize, N, ACC)
    r0 = _read(x0, b, c, y, x, mask, h0, w0, sn0, sc0, sh0, sw0, mh0, mw0, fy0, fx0, K0, ACC)
    r1 = _read(x1, b, c, y, x, mask, h1, w1, sn1, sc1, sh1, sw1, mh1, mw1, fy1, fx1, K1, ACC) \
        if N > 1 else r0
    r2 = _read(x2, b, c, y, x, mask, h2, w2, sn2, sc2, sh2, sw2, mh2, mw2, fy2, fx2, K2, ACC) \
        if N > 2 else r0
    r3 = _read(x3, b, c, y, x, mask, h3, w3, sn3, sc3, sh3, sw3, mh3, mw3, fy3, fx3, K3, ACC) \
        if N > 3 else r0
    if swish != 0:
        s = a0 * r0
        if N > 1:
            s += a1 * r1
        if N > 2:
            s += a2 * r2
        if N > 3:
            s += a3 * r3
        sg = 1 / (1 + tl.exp(-s))
        g = g * sg * (1 + s * (1 - sg))
    g = tl.where(mask, g, 0)
    tl.store(gsum_ptr + idx, g, mask=mask)
    row = partial_ptr + pid.to(tl.int64) * 4
    tl.store(row, _partial_dot(g, r0, mask))
    if N > 1:
        tl.store(row + 1, _partial_dot(g, r1, mask))
    if N > 2:
        tl.store(row + 2, _partial_dot(g, r2, mask))
    if N > 3:
        tl.store(row + 3, _partial_dot(g, r3, mask))


@triton.jit(do_not_specialize=["normalize"])
def _weights_grad_kernel(partial_ptr, programs, w_ptr, out_ptr, eps, normalize,
                         N: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """One program: dL/dw_i summed over the partials in a fixed order, then through
    w = relu(v) / (sum relu(v) + eps) when normalizing."""
    lane = tl.arange(0, 4)
    acc = tl.zeros((BLOCK, 4), ACC)
    for start in range(0, programs, BLOCK):
        p = start + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + p[:, None].to(tl.int64) * 4 + lane[None, :],
                       mask=(p[:, None] < programs) & (lane[None, :] < N), other=0)
    gw = tl.sum(acc, axis=0)
    if normalize != 0:
        v = tl.load(w_ptr + lane, mask=lane < N, other=0).to(ACC)
        r = tl.maximum(v, 0)
        total = tl.sum(r, axis=0) + eps
        dot = tl.sum(gw * r, axis=0)
        gw = tl.where(v > 0, gw / total - dot / (total * total), 0)
    tl.store(out_ptr + lane, gw.to(out_ptr.dtype.element_ty), mask=lane < N)


@triton.jit
def _gather_range(gsum_ptr, b, c, y_lo, y_hi, x_lo, x_hi, mask, gn, gc, gh, gw, fan_y, fan_x,
                  ACC: tl.constexpr):
    """Sum of grad_sum over output rows [y_lo, y_hi) x columns [x_lo, x_hi) (at most
    fan_y x fan_x). Run-time loops: unrolling over the fan-in made large upsampling ratios
    compile for minutes and spill, and each new ratio compile again."""
    base = gsum_ptr + b * gn + c * gc
    total = tl.zeros(y_lo.shape, ACC)
    for ky in range(fan_y):
        oy = y_lo + ky
        row = base + oy.to(tl.int64) * gh
        ok_y = mask & (oy < y_hi)
        for kx in range(fan_x):
            ox = x_lo + kx
            total += tl.load(row + ox.to(tl.int64) * gw, mask=ok_y & (ox < x_hi), other=0)
    return total


@triton.jit
def _pooled_grad(gsum_ptr, x_base, b, c, u, v, py, px, ok, h, w, sh, sw, mid_h, mid_w, fy, fx,
                 H, W, gn, gc, gh, gw, fan_y, fan_x, ACC: tl.constexpr):
    """Gradient reaching input element (u, v) through pooled element (py, px): its output
    range's grad_sum when (u, v) is the window's arg-max, else 0."""
    ok = ok & (py < mid_h) & (px < mid_w)
    best = tl.full(u.shape, float("-inf"), ACC)
    best_r = tl.maximum(2 * py - 1, 0)
    best_u = tl.maximum(2 * px - 1, 0)
    for dy in tl.static_range(3):
        r = 2 * py - 1 + dy
        for dx in tl.static_range(3):
            q = 2 * px - 1 + dx
            inside = ok & (r >= 0) & (r < h) & (q >= 0) & (q < w)
            t = tl.load(x_base + r.to(tl.int64) * sh + q.to(tl.int64) * sw, mask=inside,
                        other=float("-inf")).to(ACC)
            take = inside & ((t > best) | (t != t))
            best = tl.where(take, t, best)
            best_r = tl.where(take, r, best_r)
            best_u = tl.where(take, q, best_u)
    ok = ok & (best_r == u) & (best_u == v)
    y_lo = _first_output(py, fy, mid_h, H)
    y_hi = _first_output(py + 1, fy, mid_h, H)
    x_lo = _first_output(px, fx, mid_w, W)
    x_hi = _first_output(px + 1, fx, mid_w, W)
    return _gather_range(gsum_ptr, b, c, y_lo, y_hi, x_lo, x_hi, ok, gn, gc, gh, gw, fan_y, fan_x,
                         ACC)


# fan-ins and flags not specialised: one compilation for every size ratio and option
@triton.jit(do_not_specialize=["fan_y", "fan_x", "normalize", "channels_last"])
def _input_grad_kernel(gsum_ptr, gn, gc, gh, gw, H, W, w_ptr, eps, grad_ptr, total, C,
                       x_ptr, h, w, sn, sc, sh, sw, mid_h, mid_w, fy, fx, fan_y, fan_x,
                       normalize, channels_last, INPUT: tl.constexpr, N: tl.constexpr,
                       KIND: tl.constexpr, ACC: tl.constexpr, INDEX_64: tl.constexpr,
                       BLOCK: tl.constexpr):
    """Gradient of input INPUT, gathered per input element, stored in its buffer's memory
    order."""
    idx = _block_index(BLOCK, INDEX_64)
    mask = idx < total
    b, c, u, v = _split(idx, C, h, w, channels_last)
    a0, a1, a2, a3 = _weights(w_ptr, eps, normalize, N, ACC)
    a = a0 if INPUT == 0 else (a1 if INPUT == 1 else (a2 if INPUT == 2 else a3))
    if KIND == 0:
        g = tl.load(gsum_ptr + b * gn + c * gc + u.to(tl.int64) * gh + v.to(tl.int64) * gw,
                    mask=mask, other=0)
    elif KIND == 1:
        y_lo = _first_output(u, fy, mid_h, H)
        y_hi = _first_output(u + 1, fy, mid_h, H)
        x_lo = _first_output(v, fx, mid_w, W)
        x_hi = _first_output(v + 1, fx, mid_w, W)
        g = _gather_range(gsum_ptr, b, c, y_lo, y_hi, x_lo, x_hi, mask, gn, gc, gh, gw, fan_y,
                          fan_x, ACC)
    else:
        # (u, v) lies in the windows of pooled rows u // 2 and (u + 1) // 2 (one when u is even)
        x_base = x_ptr + b * sn + c * sc
        py0, px0 = u // 2, v // 2
        py1, px1 = (u + 1) // 2, (v + 1) // 2
        two_y, two_x = (u % 2) == 1, (v % 2) == 1
        g = _pooled_grad(gsum_ptr, x_base, b, c, u, v, py0, px0, mask, h, w, sh, sw, mid_h,
                         mid_w, fy, fx, H, W, gn, gc, gh, gw, fan_y, fan_x, ACC)
        g += _pooled_grad(gsum_ptr, x_base, b, c, u, v, py0, px1, mask & two_x, h, w, sh, sw,
                          mid_h, mid_w, fy, fx, H, W, gn, gc, gh, gw, fan_y, fan_x, ACC)
        g += _pooled_grad(gsum_ptr, x_base, b, c, u, v, py1, px0, mask & two_y, h, w, sh, sw,
                          mid_h, mid_w, fy, fx, H, W, gn, gc, gh, gw, fan_y, fan_x, ACC)
        g += _pooled_grad(gsum_ptr, x_base, b, c, u, v, py1, px1, mask & two_y & two_x, h, w,
                          sh, sw, mid_h, mid_w, fy, fx, H, W, gn, gc, gh, gw, fan_y, fan_x, ACC)
    tl.store(grad_ptr + idx, (a * g).to(grad_ptr.dtype.element_ty), mask=mask)


def _nearest_scale(n_in, n_out):
    return float(np.float32(n_in) / np.float32(n_out))


def _max_fan_in(n_mid, n_out):
    """Most output indices that share one nearest source index (mid -> out)."""
    src = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) *
                              np.float32(_nearest_scale(n_mid, n_out))).astype(np.int64),
                     n_mid - 1)
    return int(np.bincount(src, minlength=n_mid).max())


class _Plan:
    """How one input is read: its resize kind and the grid the nearest step reads from."""

    def __init__(self, x, H, W):
        h, w = x.shape[-2:]
        if (h, w) == (H, W):
            self.kind = IDENTITY
        elif h <= H and w <= W:
            self.kind = NEAREST
        else:
            self.kind = POOL_NEAREST
        self.mid = ((h - 1) // 2 + 1, (w - 1) // 2 + 1) if self.kind == POOL_NEAREST else (h, w)
        self.scales = (_nearest_scale(self.mid[0], H), _nearest_scale(self.mid[1], W))
        self.fan_in = (_max_fan_in(self.mid[0], H), _max_fan_in(self.mid[1], W))
        self.args = [x, h, w, *x.stride(), *self.mid, *self.scales]


def _index_64(tensors):
    """Whether int32 positions may wrap: a program's positions run up to BLOCK - 1 past a
    tensor's last element, and element offsets must fit too."""
    limit = 2**31 - BLOCK
    return any(t.numel() > limit or
               sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride())) > limit
               for t in tensors if t.numel())


def _acc_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _plans(inputs):
    H, W = inputs[0].shape[-2:]
    plans = [_Plan(x, H, W) for x in inputs]
    # unused slots repeat input 0; their constexpr N keeps the kernels from reading them
    padded = plans + [plans[0]] * (4 - len(plans))
    args = [a for p in padded for a in p.args]
    kinds = {f"K{i}": p.kind for i, p in enumerate(padded)}
    return plans, args, kinds


def _checked(inputs, weights, normalize, eps, activation):
    from ..scalar_weighted_sum import _check_args  # imported here: that module imports this one
    _check_args(inputs, weights, normalize, eps, activation)
    return list(inputs), weights.contiguous()


def forward_launches(inputs, weights, normalize, eps, activation):
    """The launches of the forward and its output (allocated, not yet computed)."""
    inputs, weights = _checked(inputs, weights, normalize, eps, activation)
    first = inputs[0]
    out = torch.empty_like(first, memory_format=output_memory_format(first))
    if out.numel() == 0:
        return [], out
    _, C, H, W = first.shape
    _, args, kinds = _plans(inputs)
    return [Launch(_forward_kernel, (triton.cdiv(out.numel(), BLOCK),),
                   (out, weights, out.numel(), C, H, W, eps, *args, int(normalize),
                    int(activation == "swish"),
                    int(output_memory_format(first) == torch.channels_last)),
                   dict(N=len(inputs), **kinds, ACC=_acc_dtype(first.dtype),
                        INDEX_64=_index_64(inputs + [out]), BLOCK=BLOCK),
                   num_warps=NUM_WARPS)], out


def backward_launches(grad_output, inputs, weights, normalize, eps, activation):
    """The launches of the backward and its outputs (input gradients, weight gradient)."""
    inputs, weights = _checked(inputs, weights, normalize, eps, activation)
    first = inputs[0]
    if grad_output.shape != first.shape:
        raise ValueError(f"grad_output: expected shape {tuple(first.shape)} (that of inputs[0]), "
                         f"got {tuple(grad_output.shape)}")
    acc = _acc_dtype(first.dtype)
    acc_torch = torch.float64 if first.dtype == torch.float64 else torch.float32
    grads = [torch.empty_like(x, memory_format=output_memory_format(x)) for x in inputs]
    grad_weights = torch.empty_like(weights)
    _, C, H, W = first.shape
    total = first.numel()
    if total == 0:
        return [], [g.zero_() for g in grads], grad_weights.zero_()
    plans, args, kinds = _plans(inputs)
    out_format = output_memory_format(first)
    grad_sum = torch.empty(first.shape, dtype=acc_torch, device=first.device,
                           memory_format=out_format)
    programs = triton.cdiv(total, BLOCK)
    partials = torch.empty((programs, 4), dtype=acc_torch, device=first.device)
    common = dict(N=len(inputs), ACC=acc)
    index_64 = _index_64(inputs + grads + [grad_output, grad_sum])
    launches = [
        Launch(_backward_sum_kernel, (programs,),
               (grad_output, *grad_output.stride(), grad_sum, partials, weights, total, C, H, W,
                eps, *args, int(normalize), int(activation == "swish"),
                int(out_format == torch.channels_last)),
               dict(**kinds, INDEX_64=index_64, BLOCK=BLOCK, **common), num_warps=NUM_WARPS),
        Launch(_weights_grad_kernel, (1,),
               (partials, programs, weights, grad_weights, eps, int(normalize)),
               dict(BLOCK=PARTIAL_BLOCK, **common))]
    for i, (plan, x, grad) in enumerate(zip(plans, inputs, grads)):
        launches.append(Launch(
            _input_grad_kernel, (triton.cdiv(grad.numel(), BLOCK),),
            (grad_sum, *grad_sum.stride(), H, W, weights, eps, grad, grad.numel(), C,
             *plan.args, *plan.fan_in, int(normalize),
             int(output_memory_format(x) == torch.channels_last)),
            dict(INPUT=i, KIND=plan.kind, INDEX_64=index_64, BLOCK=BLOCK, **common),
            num_warps=NUM_WARPS))
    return launches, grads, grad_weights


def scalar_weighted_sum_forward(inputs, weights, normalize, eps, activation):
    launches, out = forward_launches(inputs, weights, normalize, eps, activation)
    run(launches, out.device)
    return out


def scalar_weighted_sum_backward(grad_output, inputs, weights, normalize, eps, activation):
    launches, grads, grad_weights = backward_launches(grad_output, inputs, weights, normalize,
                                                      eps, activation)
    run(launches, grad_weights.device)
    return grads, grad_weights


torch.library.register_kernel("rtseg::scalar_weighted_sum", "cuda", scalar_weighted_sum_forward)
torch.library.register_kernel("rtseg::scalar_weighted_sum_backward", "cuda",
                              scalar_weighted_sum_backward)
