"""The SeLoRA linear layer and the exact, in-step Fisher information of its expansion test.

``h = x W0ᵀ + b0 + s · (x Aᵀ) Bᵀ`` with the frozen base ``nn.Linear`` (W0 [out, in], b0), trainable
A [r, in] (Kaiming-uniform) and B [out, r] (zeros), and one fixed scale ``s`` (growing the rank must
not rescale the ranks already learnt, unlike LoRA's alpha/r). Storage follows peft (A [r, in],
B [out, r]); the paper writes the transposes.

**The test, from the training step's own backward.** On a test step the layer routes its LoRA
branch through :class:`_FisherTap`, an identity in the forward whose backward receives
``g = ∂L/∂h`` and the saved input ``x`` and ``v = s·x Aᵀ``. From these, per sample i (tokens /
pixels t summed before squaring, as Eq. 3 wants a sample's whole gradient)::

    ∂L/∂B_i     = Σ_t g_it ⊗ v_it                   [out, r]
    ∂L/∂A_i     = s · Σ_t (g_it B) ⊗ x_it           [r, in]
    ∂L/∂B_new,i = s · Σ_t g_it · (x_it · k)         [out]    the candidate column of B'
    ∂L/∂k       = 0                                 (k's output is multiplied by the zero column)

Because the candidate column of B' is zero, the expanded module computes the same function, so the
gradients of the old entries are unchanged and ``FI_exp = FI_orig + FI_new``: the FI-Ratio is
``FI_exp / FI_orig = 1 + FI_new / FI_orig ≥ 1`` (Eq. 5 of the paper prints the inverse, which could
never reach λ > 1; Section 3.2's text and the authors' code use exp / orig). No second forward or
backward, no loop over samples: three batched matmuls per layer, about the cost of the LoRA
branch's own weight gradient, only on test steps.

Units: for a loss that is a mean over the batch (the diffusion MSE), the gradient the tap sees is
``c_i = ∂L_i/∂w / N`` per sample, so ``per_sample`` reports Eq. 3 exactly as ``N · Σ_i c_i²``;
``batch`` reports the squared mini-batch gradient ``(Σ_i c_i)²``. Any constant factor on the loss
(the mean's 1/N, fp16's GradScaler loss scale S) multiplies both scores alike (by S²), so the ratio
— the only thing the expansion rule uses — is invariant to it.

**Gradient checkpointing.** Nothing is recorded in the forward: the tap saves its tensors with
``save_for_backward`` and records in its backward, which autograd runs exactly once per real call.
Non-reentrant checkpointing re-runs the forward to rebuild the saved tensors but never runs that
re-run's backward; reentrant checkpointing runs the first forward without a graph (no tap node) and
the backward of the re-run once. A layer called several times in one forward (weight sharing) gets
its per-sample gradients summed over the calls before squaring, which is exact too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FISHER_MODES = ("per_sample", "batch")


def kaiming_rows(n_rows: int, fan_in: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """``n_rows`` rows of A drawn as nn.Linear / peft draw lora_A (Kaiming uniform, a = √5):
    U(-1/√fan_in, 1/√fan_in). Drawn on the CPU from the adapter's generator, so the draws do not
    depend on the device."""
    bound = 1.0 / math.sqrt(fan_in)
    draw_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    u = torch.rand(n_rows, fan_in, generator=generator, dtype=draw_dtype)
    return ((u * 2 - 1) * bound).to(dtype)


class FisherProbe:
    """Accumulates one layer's per-sample (or batch) gradients during one test step's backward."""

    def __init__(self, mode: str, scale: float) -> None:
        self.mode = mode
        self.scale = scale
        self.calls = 0
        self.n_samples = 0
        self.d_a: torch.Tensor | None = None  # per_sample [N, r, in] | batch [r, in]
        self.d_b: torch.Tensor | None = None  # per_sample [N, out, r] | batch [out, r]
        self.d_new: torch.Tensor | None = None  # per_sample [N, out] | batch [out]

    @torch.no_grad()
    def add(self, g: torch.Tensor, x: torch.Tensor, v: torch.Tensor, b: torch.Tensor,
            k: torch.Tensor) -> None:
        """g [N, ..., out] = ∂L/∂h, x [N, ..., in], v [N, ..., r] = s·x Aᵀ, b [out, r], k [in]."""
        dt = torch.promote_types(g.dtype, torch.float32)  # fp16/bf16 statistics in fp32; fp64 stays
        n = g.shape[0]
        g = g.reshape(n, -1, g.shape[-1]).to(dt)  # [N, T, out]
        x = x.reshape(n, -1, x.shape[-1]).to(dt)  # [N, T, in]
        v = v.reshape(n, -1, v.shape[-1]).to(dt)  # [N, T, r]
        b, k = b.to(dt), k.to(dt)
        s = self.scale
        xk = x @ k  # [N, T]
        gb = g @ b  # [N, T, r]
        if self.mode == "per_sample":
            gt = g.transpose(1, 2)  # [N, out, T]
            d_b = torch.bmm(gt, v)  # [N, out, r]
            d_a = torch.bmm(gb.transpose(1, 2), x).mul_(s)  # [N, r, in]
            d_new = torch.bmm(gt, xk.unsqueeze(-1)).squeeze(-1).mul_(s)  # [N, out]
        else:
            g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])  # [NT, out], [NT, in]
            d_b = g2.T @ v.reshape(-1, v.shape[-1])  # [out, r]
            d_a = (gb.reshape(-1, gb.shape[-1]).T @ x2).mul_(s)  # [r, in]
            d_new = (g2.T @ xk.reshape(-1)).mul_(s)  # [out]
        if self.d_a is None:
            self.d_a, self.d_b, self.d_new, self.n_samples = d_a, d_b, d_new, n
        else:  # the layer ran more than once in this forward: sum gradients before squaring
            if self.mode == "per_sample" and n != self.n_samples:
                raise RuntimeError(
                    f"SeLoRA per-sample Fisher: one layer saw batches of {self.n_samples} and {n} samples "
                    "in one step; call before_forward/after_optimizer_step once per forward/backward"
                )
            self.d_a += d_a
            self.d_b += d_b
            self.d_new += d_new
        self.calls += 1

    def scores(self) -> torch.Tensor | None:
        """tensor([FI_orig, FI_new]) (Eq. 3-4 summed over A and B; FI_new: the candidate column of B'),
        or None when the layer got no gradient this step."""
        if self.d_a is None:
            return None
        orig = self.d_a.square().sum() + self.d_b.square().sum()
        new = self.d_new.square().sum()
        out = torch.stack([orig, new]).to(torch.float64)
        return out * self.n_samples if self.mode == "per_sample" else out


class _FisherTap(torch.autograd.Function):
    """Identity on the LoRA branch output; its backward hands ∂L/∂h to the layer's probe."""

    @staticmethod
    def forward(ctx, y, x, v, b, k, probe):  # y [..., out]; x, v, b, k detached
        ctx.save_for_backward(x, v, b, k)
        ctx.probe = probe
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):  # g [..., out] = ∂L/∂h
        x, v, b, k = ctx.saved_tensors
        ctx.probe.add(g, x, v, b, k)
        return g, None, None, None, None, None


class SeLoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus the growable SeLoRA branch ``s · x Aᵀ Bᵀ``."""

    def __init__(self, base_layer: nn.Linear, a_init: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.scale = float(scale)
        w = base_layer.weight
        dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32
        self.lora_A = nn.Parameter(a_init.to(w.device, dtype))  # [r, in]
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, a_init.shape[0], device=w.device,
                                               dtype=dtype))  # [out, r]
        self.candidate: torch.Tensor | None = None  # k [in] while armed for a test step
        self.probe: FisherProbe | None = None

    # the base layer's attributes, for code that reads e.g. `attn.to_q.weight.dtype`
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    def arm(self, candidate: torch.Tensor, probe: FisherProbe) -> None:
        self.candidate = candidate.to(self.lora_A.device, self.lora_A.dtype)
        self.probe = probe

    def disarm(self) -> None:
        self.candidate, self.probe = None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)  # [..., out]
        a, b = self.lora_A, self.lora_B
        xa = x if x.dtype == a.dtype else x.to(a.dtype)
        v = F.linear(xa, a)  # [..., r]
        if self.scale != 1.0:
            v = v * self.scale
        y = F.linear(v, b)  # [..., out]
        if self.probe is not None and torch.is_grad_enabled():
            y = _FisherTap.apply(y, xa.detach(), v.detach(), b.detach(), self.candidate, self.probe)
        return h + y.to(h.dtype)

    @torch.no_grad()
    def grown(self, k: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
        """New (A', B') = ([A; k], [B, 0]): the tested k appended to A, a zero column to B."""
        a, b = self.lora_A, self.lora_B
        a2 = torch.cat([a.detach(), k.to(a.device, a.dtype).reshape(1, -1)], dim=0)  # [r+1, in]
        b2 = torch.cat([b.detach(), b.new_zeros(b.shape[0], 1)], dim=1)  # [out, r+1]
        return nn.Parameter(a2), nn.Parameter(b2)

    def set_factors(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Replace A and B (e.g. when loading a grown state); new Parameter objects if shapes differ."""
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != self.in_features or b.shape[0] != self.out_features \
                or a.shape[0] != b.shape[1] or a.shape[0] < 1:
            raise ValueError(f"factors A {tuple(a.shape)}, B {tuple(b.shape)} do not fit a "
                             f"{self.in_features}→{self.out_features} layer")
        dev, dt = self.lora_A.device, self.lora_A.dtype
        with torch.no_grad():
            if a.shape == self.lora_A.shape:
                self.lora_A.copy_(a)
                self.lora_B.copy_(b)
            else:
                self.lora_A = nn.Parameter(a.to(dev, dt).clone())
                self.lora_B = nn.Parameter(b.to(dev, dt).clone())

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale:g}"
