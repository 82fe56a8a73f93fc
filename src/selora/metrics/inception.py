"""The FID Inception-v3 (torch-fidelity's port of the TensorFlow graph) with the paper's three taps.

The paper's "FID", "FID 192" and "FID 64" are the 2048-d final pool, the 192-d pool after
MaxPool_2 and the 64-d pool after MaxPool_1. One forward yields all three. Images are resized the
TensorFlow-1 way (torchmetrics' ``antialias=False``), so numbers are comparable with pytorch-fid,
torch-fidelity and published papers. The network runs in float32: torch-fidelity (0.3/0.4) maps
``feature_extractor_internal_dtype="float64"`` to float32, and a real float64 forward runs at 0.37×
the speed and moves FID by < 1e-4 (benchmarks/README, "SD 1.5 architecture"). The taps are returned
in float64 for the Fréchet statistics.

Nothing downloads: the weights come from ``evaluate.inception_weights`` or torch's hub cache, and
when neither has them the error says which file to put where.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from selora.errors import MissingWeightsError

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
# role → torch-fidelity feature name; role names are shared with the reference feature space.
TAPS = {"fid": "2048", "fid_mid": "192", "fid_low": "64"}
FEATURE_DIMS = {role: int(tap) for role, tap in TAPS.items()}


def hub_weights_path() -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the file ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def resolve_weights(configured: str | None) -> Path:
    """The weights file to use, checked to be a plain state dict (``weights_only`` loadable)."""
    fetch = (
        f"download {WEIGHTS_URL} (torch-fidelity's FID Inception; pytorch-fid's "
        f"pt_inception-*.pth is a different file)"
    )
    if configured:
        path = Path(configured).expanduser()
        if path.is_dir():
            path = path / WEIGHTS_FILE
        if not path.is_file():
            raise MissingWeightsError(
                f"evaluate.inception_weights: {path} does not exist: {fetch} and put it at {path}, "
                "or set evaluate.feature_space: reference"
            )
    else:
        path = hub_weights_path()
        if not path.is_file():
            raise MissingWeightsError(
                f"Inception FID needs {WEIGHTS_FILE}: {fetch} and put it at {path} (torch's hub cache, "
                "$TORCH_HOME/hub/checkpoints) or anywhere and set evaluate.inception_weights to its path"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MissingWeightsError(f"{path} is not a loadable PyTorch state dict ({exc}); {fetch}") from exc
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise MissingWeightsError(f"{path} is not the FID Inception-v3 state dict; {fetch}")
    return path


class InceptionTaps(nn.Module):
    """uint8 [N, 3, H, W] → {"fid": [N, 2048], "fid_mid": [N, 192], "fid_low": [N, 64]} (float32 net,
    float64 out)."""

    def __init__(self, weights: str | Path, roles: tuple[str, ...] = tuple(TAPS)) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        # The file was checked with weights_only=True in resolve_weights before torch-fidelity loads it.
        # The forward stops after the deepest requested tap.
        self.roles = roles
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat",
            [TAPS[r] for r in roles],
            feature_extractor_weights_path=str(weights),
            feature_extractor_internal_dtype="float32",
        )
        self.dims = {role: FEATURE_DIMS[role] for role in roles}

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(images)  # tuple in self.roles order, each [N, d]
        return {r: t.reshape(images.shape[0], -1).double() for r, t in zip(self.roles, out, strict=True)}
