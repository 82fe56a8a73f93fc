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
--fit-reference``) and reused by every run of that setup. The small networks and matrices of
evaluation run on one torch thread (:func:`one_thread`), whatever the runner gives the process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from selora.metrics.samples import SampleError

__all__ = ["SampleError", "one_thread"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded for the block, then restore the thread count.

    For the small networks and matrices of evaluation: they gain nothing from threads, two OpenMP
    threads on busy shared cores ran 5-8x slower here (small eigen-decompositions up to 50x), and a
    fixed thread count keeps the result identical on every machine (CPU reductions depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

