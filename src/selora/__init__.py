"""selora: the reproducible benchmark of SeLoRA and its baselines for medical latent diffusion."""

__version__ = "0.1.0"
