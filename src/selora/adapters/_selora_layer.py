"""The SeLoRA linear layer and the exact, in-step Fisher information of its expansion test.

``h = x W0ᵀ + b0 + s · (x Aᵀ) Bᵀ`` with the frozen base ``nn.Linear`` (W0 [out, in], b0), trainable
A [r, in] (Kaiming-uniform) and B [out, r] (zeros), and one fixed scale ``s`` (growing the rank must
not rescale the ranks already learnt, unlike LoRA's alpha/r). Storage follows peft (A [r, in],
B [out, r]); the paper writes the transposes.

**The test, from the training step's own backward.** On a test step the LoRA branch runs through
:class:`_ProbedLoRA`, which computes the same forward as the plain path and does the branch's
backward itself: from ``g = ∂L/∂h``, the saved input ``x`` and ``v = s·x Aᵀ`` it forms, per sample i
(tokens / pixels t summed before squaring, as Eq. 3 wants a sample's whole gradient)::

    ∂L/∂A_i     = s · Σ_t (g_it B) ⊗ x_it           [r, in]
    ∂L/∂B_i     = Σ_t g_it ⊗ v_it                   [out, r]
    ∂L/∂B_new,i = s · Σ_t g_it · (x_it · k)         [out]    the candidate column of B'
    ∂L/∂k       = 0                                 (k's output is multiplied by the zero column)

and hands autograd the sums over samples as the weight gradients, so the per-sample gradients
replace work the plain backward does anyway; the extra cost is the candidate column (``x·k`` and
one more column in the B-gradient matmul). No second forward or backward, no loop over samples.

Because the candidate column of B' is zero, the expanded module computes the same function, so the
gradients of the old entries are unchanged and ``FI_exp = FI_orig + FI_new``: the FI-Ratio is
``FI_exp / FI_orig = 1 + FI_new / FI_orig ≥ 1`` (Eq. 5 of the paper prints the inverse, which could
never reach λ > 1; Section 3.2's text and the authors' code use exp / orig). Statistics and the
branch's test-step backward are computed in fp32 (fp64 stays fp64) even under fp16 autocast.

Units: for a loss that is a mean over the batch (the diffusion MSE), the gradient the probe sees is
``c_i = ∂L_i/∂w / N`` per sample, so ``per_sample`` reports Eq. 3 exactly as ``N · Σ_i c_i²``;
``batch`` reports the squared mini-batch gradient ``(Σ_i c_i)²``. Any constant factor on the loss
(the mean's 1/N, fp16's GradScaler loss scale S) multiplies both scores alike (by S²), so the ratio
— the only thing the expansion rule uses — is invariant to it.

Memory: a layer's per-sample gradients, N·(r·in + out·(r+1)) numbers, exist only inside its own
backward: a layer that ran once in the forward (every layer of SD 1.5) reduces them there to its
three squared norms. Only a layer that ran more than once (weight sharing, or a forward recomputed
by gradient checkpointing) keeps them until ``after_optimizer_step``, because its per-sample
gradients must be summed over the calls before squaring. Holding them for every layer until the end
of the backward would add N × the adapter's size to a test step (SD 1.5 at the paper's 224 px,
batch 8: ~80 MB; benchmarks/sd15.py), part of it at the step's activation peak.

**Gradient checkpointing.** The forward only counts its calls (a recomputed forward counts too,
which can only make a layer keep its gradients, never reduce them early): :class:`_ProbedLoRA`
saves its tensors with ``save_for_backward`` and records in its backward, which autograd runs
exactly once per real call. Non-reentrant checkpointing re-runs the forward to rebuild the saved
tensors but never runs that re-run's backward; reentrant checkpointing runs the first forward
without a graph and the backward of the re-run once. A layer called several times in one forward
(weight sharing) gets its per-sample gradients summed over the calls before squaring, which is
exact too.
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
    """One layer's gradients during one test step: computes the LoRA branch's backward itself, keeping
    the per-sample (or batch) gradients it needs anyway, plus the candidate column's."""

    def __init__(self, mode: str, scale: float) -> None:
        self.mode = mode
        self.scale = scale
        self.calls = 0
        self.forward_calls = 0  # counted by _ProbedLoRA.forward; recomputed forwards count too
        self.n_samples = 0
        self.norms: list[torch.Tensor] | None = None  # 3 fp64 norms, when reduced in the backward
        self.d_a: torch.Tensor | None = None  # per_sample [N, r, in] | batch [r, in]
        self.d_bk: torch.Tensor | None = None  # [N, out, r+1] | [out, r+1]: ∂L/∂B' (last column: candidate)

    def backward(self, g: torch.Tensor, x: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                 k: torch.Tensor, need_x: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """g [N, ..., out] = ∂L/∂h, x [N, ..., in], v [N, ..., r] = s·x Aᵀ, a [r, in], b [out, r], k [in].

        Returns (∂L/∂x, ∂L/∂A, ∂L/∂B) for autograd; the weight gradients are the sums over samples of
        the per-sample ones, so the test costs little more than the plain backward of the branch."""
        # promote(promote(g, fp32), a) for floating dtypes — fp16 / bf16 → fp32, fp64 stays — in Python:
        # two torch calls fewer per layer, and a test step's extra time is per-call overhead (SD 1.5)
        dt = torch.float64 if torch.float64 in (g.dtype, a.dtype) else torch.float32
        n, r, s = (g.shape[0] if g.ndim > 1 else 1), a.shape[0], self.scale  # unbatched input: N = 1
        g3 = _as(g.reshape(n, -1, g.shape[-1]), dt)  # [N, T, out]
        x3 = _as(x.reshape(n, -1, x.shape[-1]), dt)  # [N, T, in]
        v3 = _as(v.reshape(n, -1, r), dt)  # [N, T, r]
        b_, k_ = _as(b, dt), _as(k, dt)
        dv = g3 @ b_  # [N, T, r] = ∂L/∂v
        xk = (x3 @ k_).unsqueeze(-1)  # [N, T, 1]: the candidate's v-column, before the scale
        vk = torch.cat([v3, xk * s if s != 1.0 else xk], dim=-1)  # [N, T, r+1]
        if self.mode == "per_sample":
            d_a = torch.bmm(dv.transpose(1, 2), x3)  # [N, r, in]
            d_bk = torch.bmm(g3.transpose(1, 2), vk)  # [N, out, r+1]
        else:
            d_a = dv.reshape(-1, r).T @ x3.reshape(-1, x3.shape[-1])  # [r, in]
            d_bk = g3.reshape(-1, g3.shape[-1]).T @ vk.reshape(-1, r + 1)  # [out, r+1]
        if s != 1.0:
            d_a.mul_(s)
        if self.mode == "per_sample":
            grad_a, grad_b = d_a.sum(0), d_bk[..., :r].sum(0)
        else:  # copies: autograd may keep and accumulate into the tensors it is handed
            grad_a, grad_b = d_a.clone(), d_bk[:, :r].clone()
        grad_x = None
        if need_x:
            grad_x = (dv @ _as(a, dt)).reshape(x.shape)  # [..., in]
            grad_x = _as(grad_x * s if s != 1.0 else grad_x, x.dtype)
        self._record(n, d_a, d_bk)
        return grad_x, _as(grad_a, a.dtype), _as(grad_b, b.dtype)

    def _record(self, n: int, d_a: torch.Tensor, d_bk: torch.Tensor) -> None:
        if self.norms is not None:
            raise RuntimeError(
                "SeLoRA Fisher probe: a second backward reached a layer whose only forward call was "
                "already scored; call before_forward/after_optimizer_step once per forward/backward"
            )
        if self.d_a is None and self.forward_calls <= 1:  # the layer's only call: reduce now
            r = d_a.shape[-2]
            # squared and stacked with every layer's in fisher_scores, not here: 2 calls fewer per layer
            self.norms = list(torch._foreach_norm([d_a, d_bk[..., :r], d_bk[..., r]], 2, dtype=torch.float64))
            self.n_samples = n
        elif self.d_a is None:
            self.d_a, self.d_bk, self.n_samples = d_a, d_bk, n
        else:  # the layer ran more than once in this forward: sum gradients before squaring
            if self.mode == "per_sample" and n != self.n_samples:
                raise RuntimeError(
                    f"SeLoRA per-sample Fisher: one layer saw batches of {self.n_samples} and {n} samples "
                    "in one step; call before_forward/after_optimizer_step once per forward/backward"
                )
            self.d_a += d_a
            self.d_bk += d_bk
        self.calls += 1

    def parts(self) -> list[torch.Tensor]:
        """[∂A, ∂B, ∂B_new] (per sample or batch) whose squared norms make FI_orig = ‖∂A‖² + ‖∂B‖² and
        FI_new = ‖∂B_new‖² (Eq. 3-4; per-sample scores are also multiplied by N, see the module doc)."""
        r = self.d_a.shape[-2]
        return [self.d_a, self.d_bk[..., :r], self.d_bk[..., r]]


def _autocast_casts(x: torch.Tensor) -> bool:
    """Whether autocast will cast ``x`` for a matmul (it is on for x's device; fp64 it leaves alone)."""
    return torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)  # skips the call overhead of a no-op .to()


def fisher_scores(probes: list[FisherProbe]) -> list[tuple[float, float]]:
    """(FI_orig, FI_new) of each probe that recorded, in float64, with one host sync for all."""
    if not probes:
        return []
    held = [t for p in probes if p.norms is None for t in p.parts()]
    # one fused call for the layers that kept their gradients, instead of 3 × layers norms; norms in
    # fp64 (fp32 squares of entries below 1e-19 would underflow to 0)
    held_norms = iter(torch._foreach_norm(held, 2, dtype=torch.float64) if held else ())
    norms = [n for p in probes
             for n in (p.norms if p.norms is not None else [next(held_norms) for _ in range(3)])]
    sq = torch.stack(norms).reshape(-1, 3).square()  # [probes, 3]: ‖∂A‖², ‖∂B‖², ‖∂B_new‖²
    factor = torch.tensor([p.n_samples if p.mode == "per_sample" else 1 for p in probes], dtype=torch.float64)
    orig = (sq[:, 0] + sq[:, 1]).cpu() * factor
    new = sq[:, 2].cpu() * factor
    return list(zip(orig.tolist(), new.tolist(), strict=True))


class _ProbedLoRA(torch.autograd.Function):
    """The LoRA branch ``s · x Aᵀ Bᵀ`` of a test step, with a backward that also feeds the probe."""

    @staticmethod
    def forward(ctx, x, a, b, k, scale, probe):  # x [..., in] -> [..., out], computed as the plain path
        ctx.x_dtype = x.dtype
        if _autocast_casts(x):
            # keep x as the plain path's F.linear does, in autocast's dtype: saving the fp32 x (or
            # SeLoraLinear's fp32 up-cast of a half x) doubled every layer's saved input, +5 % of a
            # step's activations on SD 1.5 (benchmarks/README, GPU)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        v = F.linear(x, a)  # [..., r]
        if scale != 1.0:
            v = v * scale
        ctx.save_for_backward(x, v, a, b, k)
        ctx.probe = probe
        probe.forward_calls += 1
        return F.linear(v, b)

    @staticmethod
    def backward(ctx, g):  # g [..., out] = ∂L/∂h
        x, v, a, b, k = ctx.saved_tensors
        grad_x, grad_a, grad_b = ctx.probe.backward(g, x, v, a, b, k, ctx.needs_input_grad[0])
        return _as(grad_x, ctx.x_dtype) if grad_x is not None else None, grad_a, grad_b, None, None, None


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
        # under autocast F.linear casts x itself: an fp32 copy would only be cast back
        xa = x if x.dtype == a.dtype or _autocast_casts(x) else x.to(a.dtype)
        if self.probe is not None and torch.is_grad_enabled():
            y = _ProbedLoRA.apply(xa, a, b, self.candidate, self.scale, self.probe)
        else:
            v = F.linear(xa, a)  # [..., r]
            if self.scale != 1.0:
                v = v * self.scale
            y = F.linear(v, b)  # [..., out]
        return h + _as(y, h.dtype)

    def grown(self, k: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
        """New (A', B') = ([A; k], [B, 0]): the tested k appended to A, a zero column to B."""
        a, b = self.lora_A.detach(), self.lora_B.detach()
        a2 = torch.cat([a, k.to(a.device, a.dtype).reshape(1, -1)], dim=0)  # [r+1, in]
        return nn.Parameter(a2), nn.Parameter(F.pad(b, (0, 1)))  # B' [out, r+1]

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
