"""What the U-Net learns to predict, for ε- and v-prediction models alike.

SD 1.5 predicts the noise ε; the embedded miniature predicts v = √ᾱ·ε − √(1−ᾱ)·x₀ (Salimans & Ho
2022), because its noise schedule ends at zero SNR, where ε says nothing about the image (see
``base_model.tiny.zero_terminal_snr``). Every loss in the package takes its target from here, from
the scheduler's own ``prediction_type``, so one code path trains and probes both kinds.
"""

from __future__ import annotations

import torch


def prediction_target(scheduler, latents: torch.Tensor, noise: torch.Tensor,
                      timesteps: torch.Tensor) -> torch.Tensor:
    """The regression target of the denoising loss: ε, or v for v-prediction schedulers."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise
