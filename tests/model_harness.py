"""Generic checks every rtseg_models network's tests reuse; a model's test module supplies the
model name, constructor options, sizes and its loss, not new machinery."""
import copy

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

import rtseg_models


@torch.no_grad()
def randomize_(model, seed=0):
    """Non-trivial BatchNorm statistics and affines, and small random values in every all-zero
    parameter (e.g. CSFCN's zero-initialised offset conv), so that eval outputs exercise every
    path of the network rather than its identity-at-init shortcuts."""
    gen = torch.Generator().manual_seed(seed)

    def rand(t, low, high):
        return torch.rand(t.shape, generator=gen, dtype=t.dtype) * (high - low) + low

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(rand(m.running_mean, -0.1, 0.1))
            m.running_var.copy_(rand(m.running_var, 0.75, 1.25))
            m.weight.copy_(rand(m.weight, 0.75, 1.25))
            m.bias.copy_(rand(m.bias, -0.1, 0.1))
    for p in model.parameters():
        if not p.any():
            p.copy_(rand(p, -0.05, 0.05))
    return model


def make_model(name, ops="fused", seed=0, **options):
    torch.manual_seed(seed)
    return randomize_(rtseg_models.create_model(name, ops=ops, **options), seed)


def twin(model, name, ops, **options):
    """The same network and weights with another `ops` setting."""
    other = rtseg_models.create_model(name, ops=ops, **options)
    other.load_state_dict(model.state_dict())
    return other.train(model.training)


def image(size, batch=1, seed=0, channels_last=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 3) + tuple(size), generator=gen)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def assert_logits(out, batch, num_classes, size):
    assert out.shape == (batch, num_classes) + tuple(size), f"logits shape {tuple(out.shape)}"
    assert torch.isfinite(out).all(), "non-finite logits"


def assert_close(actual, expected, rtol, what):
    """Max error within `rtol` of the expected values' scale (logits of random networks have
    arbitrary magnitudes)."""
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rtol * scale + 1e-6, f"{what}: max error {err:.3g} > {rtol} x scale {scale:.3g}"


def check_fused_matches_reference(name, size, rtol=1e-4, batch=2, **options):
    """ops="fused" and ops="reference" with the same weights: equal eval logits, and equal
    training losses and parameter gradients under `loss_fn` = sum of the logits' squares."""
    fused = make_model(name, "fused", **options).eval()
    reference = twin(fused, name, "reference", **options)
    x = image(size, batch)
    with torch.no_grad():
        assert_close(fused(x), reference(x), rtol, "eval logits")
    fused.train()
    reference.train()
    grads = []
    for model in (fused, reference):
        model.zero_grad()
        outputs = model(x)
        outputs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
        sum(o.square().mean() for o in outputs).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys(), "different parameters received gradients"
    for n in grads[0]:
        assert_close(grads[0][n], grads[1][n], 10 * rtol, f"gradient of {n}")


def check_forward_backward(model, size, num_classes, batch=2):
    """Training forward and backward: finite logits at the input size, and a finite gradient
    for every parameter."""
    model.train()
    x = image(size, batch).requires_grad_()
    outputs = model(x)
    outputs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
    assert_logits(outputs[0], batch, num_classes, size)
    sum(o.float().square().mean() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def check_eval_size(model, size, num_classes):
    model.eval()
    with torch.no_grad():
        assert_logits(model(image(size)), 1, num_classes, size)


def check_fuse_for_inference(model, size, rtol=1e-4):
    """fuse_for_inference() returns the model, leaves no BatchNorm2d and keeps eval logits."""
    model.eval()
    x = image(size)
    with torch.no_grad():
        expected = model(x)
        folded = copy.deepcopy(model)
        assert folded.fuse_for_inference() is folded
        left = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
        assert not left, f"BatchNorm2d left after folding: {left}"
        assert_close(folded(x), expected, rtol, "logits after fuse_for_inference")


def check_channels_last(model, size, rtol=1e-4):
    model.eval()
    x = image(size)
    with torch.no_grad():
        expected = model(x)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        assert_close(cl(x.contiguous(memory_format=torch.channels_last)), expected, rtol,
                     "channels_last logits")


def check_compile(model, size, rtol=1e-4, backend="aot_eager"):
    """torch.compile(fullgraph=True) of the eval model traces without graph breaks (the custom
    ops through their fake kernels) and gives the eager logits. The default backend stops
    before Inductor's code generation, which takes minutes for a whole network on a shared
    CPU; the benchmarks run the Inductor path."""
    model.eval()
    x = image(size)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True, backend=backend)
        assert_close(compiled(x), expected, rtol, "compiled logits")


def check_training_step(model, loss_fn, size, num_classes, steps=3, lr=1e-3, batch=2):
    """A few Adam steps on one fixed tiny batch lower `loss_fn(model(x), labels)`."""
    torch.manual_seed(0)
    x = image(size, batch)
    labels = torch.randint(0, num_classes, (batch,) + tuple(size))
    labels[:, :2] = 255  # some ignored pixels
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps + 1):
        loss = loss_fn(model(x), labels)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(map(torch.isfinite, map(torch.tensor, losses))), losses
    assert losses[-1] < losses[0], f"loss did not decrease: {losses}"


def conv_macs_by_hooks(model, size):
    """MACs of every Conv2d and Linear of one eval forward (shapes only, under FakeTensorMode),
    from forward hooks: an independent count to compare `rtseg_models.profile` with."""
    model = copy.deepcopy(model).eval()
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total[0] += output.numel() * module.in_channels // module.groups * k
        else:
            total[0] += output.numel() * module.in_features

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        model(torch.zeros((1, 3) + tuple(size)))
    return total[0]


def check_cuda_low_precision(name, size, dtype, channels_last=False, rtol=5e-2, **options):
    """The fused model on CUDA in `dtype` (BN folded, optionally channels_last) gives the
    float32 CPU reference model's eval logits within `rtol` of their scale."""
    model = make_model(name, "fused", **options).eval()
    reference = twin(model, name, "reference", **options).eval()
    x = image(size)
    with torch.no_grad():
        expected = reference(x)
        cuda = model.fuse_for_inference().to("cuda", dtype)
        xc = x.to("cuda", dtype)
        if channels_last:
            cuda = cuda.to(memory_format=torch.channels_last)
            xc = xc.contiguous(memory_format=torch.channels_last)
        out = cuda(xc)
    assert out.dtype == dtype
    assert_close(out.float().cpu(), expected, rtol, f"CUDA {dtype} logits")
