"""Scoring generated images: Fréchet distance (FID 64/192/2048), KID, CLIP score, finding accuracy.

Modules:

- :mod:`~selora.metrics.samples`   a run's samples and the real test split, validated (bad input →
  :class:`SampleError` naming what is missing)
- :mod:`~selora.metrics.frechet`   FID and KID from feature matrices through torchmetrics
- :mod:`~selora.metrics.inception` the FID Inception-v3 (torch-fidelity weights, 64/192/2048 taps)
- :mod:`~selora.metrics.reference` the embedded default's reference network: FID/KID feature space
  and finding reader
- :mod:`~selora.metrics.clip`      CLIP score with prompts truncated by the tokenizer (end token kept)
- :mod:`~selora.metrics.fit_reference`  ``selora evaluate --fit-reference``: a setup's reference, fitted once
- :mod:`~selora.metrics.evaluate`  ``selora evaluate --run-dir``: score one run against it

Real-image features are computed once per setup and test split (``selora evaluate
--fit-reference``) and reused by every run of that setup.
"""

from selora.metrics.samples import SampleError

__all__ = ["SampleError"]
