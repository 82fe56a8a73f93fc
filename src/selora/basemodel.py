"""Resolve ``base_model.name`` and load it: the miniature and SD 1.5 share one code path.

``tiny`` is the folder written by ``selora pretrain-base`` (``<paths.models>/tiny-sd``); any other
name is a local diffusers folder (with ``model_index.json``) or a hub id (``org/name``). Hub ids
load from the local cache only when ``HF_HUB_OFFLINE=1``; nothing on the default path downloads.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from selora.config import Params
from selora.errors import ConfigError, MissingWeightsError

TINY_DIRNAME = "tiny-sd"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


PRETRAIN_REPORT = "pretrain_report.json"  # beside the miniature's pipeline folder (selora.pretrain)


def tiny_path(params: Params) -> Path:
    return Path(params.paths.models) / TINY_DIRNAME


def resolve_base(params: Params) -> str:
    """A folder path or hub id that ``StableDiffusionPipeline.from_pretrained`` accepts."""
    name = params.base_model.name
    if name == "tiny":
        path = tiny_path(params)
        if not (path / "model_index.json").is_file():
            raise MissingWeightsError(
                f"base_model.name is 'tiny' but {path}/model_index.json does not exist: "
                "run `selora pretrain-base` first (or `make repro`)"
            )
        return str(path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise MissingWeightsError(
                f"base_model.name {name!r} is a folder without model_index.json: point it at a "
                "diffusers Stable Diffusion folder (e.g. a download of "
                "stable-diffusion-v1-5/stable-diffusion-v1-5)"
            )
        return str(path)
    if _HUB_ID.match(name) and not name.startswith((".", "/")):
        return name
    raise ConfigError(
        f"base_model.name: unknown base model {name!r}; expected 'tiny', a diffusers folder with "
        "model_index.json, or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5"
    )


def load_pipeline(params: Params, torch_dtype=None, progress: bool = True):
    """A fresh ``StableDiffusionPipeline`` of the base model (no safety checker).

    ``progress=False`` (a phase's ``--quiet``) also silences diffusers' and transformers' loading
    bars, which otherwise fill every job log with carriage-return lines."""
    from diffusers import StableDiffusionPipeline

    source = resolve_base(params)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not Path(source).is_dir()
    try:
        with loading_bars(progress):
            pipe = StableDiffusionPipeline.from_pretrained(
                source,
                revision=params.base_model.revision,
                torch_dtype=torch_dtype,
                safety_checker=None,
                requires_safety_checker=False,
                local_files_only=offline and not Path(source).is_dir(),
            )
    except OSError as exc:
        raise MissingWeightsError(
            f"cannot load base model {source!r}: {exc}. Without hub access, download it on a machine "
            "with internet (huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 "
            "--local-dir models/sd15) and set base_model.name to that folder."
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def loading_bars(enabled: bool) -> Iterator[None]:
    """diffusers' and transformers' progress bars off for the block (when not enabled), then as
    they were: the switches are process-wide."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    before = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    if not enabled:
        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        for mod, was in zip((dlog, tlog), before, strict=True):
            (mod.enable_progress_bar if was else mod.disable_progress_bar)()
