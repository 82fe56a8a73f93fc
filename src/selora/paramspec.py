"""Every key of params.yaml, declared once: its type, bounds, default and meaning.

The JSON schema Snakemake validates against (``workflow/schemas/params.schema.yaml``) is rendered
from these classes and the registered methods' and data sets' own classes (:mod:`selora.sections`,
``python -m selora.schemagen``); :mod:`selora.config` validates with the same schema, fills its
defaults and builds these classes. Rules between keys are each class's ``check(key)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from selora.errors import ConfigError
from selora.findings import FINDINGS, PRIORS, finding_priors
from selora.sections import Registered, Sections, param

HEADER = {
    "title": "selora params",
    "description": (
        "params.yaml is the single source of truth of the pipeline: the experiment grid and every "
        "hyper-parameter. Snakemake validates its config against this schema (filling defaults) and "
        "the Python package does the same before turning it into typed dataclasses that reject "
        "unknown keys."
    ),
}
FRACTION = {"minimum": 0, "maximum": 1}


@dataclass(frozen=True)
class Splits:
    SCHEMA: ClassVar[dict[str, Any]] = {
        "description": "Fractions of the records per split; they must sum to 1. A split of 0 is not written."}

    train: float = param(**FRACTION)
    validation: float = param(**FRACTION, default=0.0)
    test: float = param(**FRACTION)

    def as_dict(self) -> dict[str, float]:
        """Only the splits that get records, in train/validation/test order."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v > 0}

    def check(self, key: str) -> None:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"{key}: fractions sum to {total:g}, not 1")


@dataclass(frozen=True)
class Paths:
    data: str = param("Generated and prepared data sets.", default="data")
    models: str = param("The pre-trained miniature base model.", default="models")
    results: str = param("Runs, tables, figures, benchmarks.", default="results")


@dataclass(frozen=True)
class TinyConfig:
    image_size: int = param("Pixels; a multiple of the VAE factor 2^(len(vae_channels)-1).",
                            minimum=8, default=32)
    vae_channels: list[int] = param(items={"minimum": 4}, minItems=2, default=[16, 32, 64])
    latent_channels: int = param(minimum=1, default=4)
    unet_channels: list[int] = param(items={"minimum": 4}, minItems=1, default=[32, 64])
    unet_layers_per_block: int = param(minimum=1, default=1)
    attention_head_dim: int = param("diffusers' name; it is the number of heads (SD 1.5: 8).",
                                    minimum=1, default=2)
    norm_num_groups: int = param(minimum=1, default=16)
    text_hidden_size: int = param(minimum=8, default=64)
    text_layers: int = param(minimum=1, default=2)
    text_heads: int = param(minimum=1, default=4)
    text_intermediate_size: int = param(minimum=8, default=128)
    vocab_size: int = param("BPE vocabulary learnt from the captions and reports.", minimum=300, default=1200)
    max_length: int = param("Text encoder context, as CLIP's 77.", minimum=8, default=77)
    vae_steps: int = param(minimum=0, default=2000)
    vae_lr: float = param(exclusiveMinimum=0, default=2.0e-3)
    vae_batch_size: int = param(minimum=1, default=8)
    vae_chroma_weight: float = param(
        "Extra weight on the colour-difference error (R − G, B − G) of the VAE's reconstructions, on top "
        "of the MSE. Every generated film is decoded by this VAE, and its error lands on R and B unequally: "
        "grayscale radiographs come back tinted (mean |R − B| on held-out CXR phantoms about 0.020 with 0, "
        "0.013 with 1, 0.008 with 3, at 0.3 / 1.3 dB less PSNR on them; the samples' FID-ref about doubles "
        "with either: benchmarks/README). 0 = plain MSE.",
        minimum=0, default=0.0)
    unet_steps: int = param(minimum=0, default=2000)
    unet_lr: float = param(exclusiveMinimum=0, default=1.0e-3)
    batch_size: int = param("U-Net + text encoder batch (more small steps beat fewer large ones here).",
                            minimum=1, default=16)
    caption_dropout: float = param("Empty-caption rate, so classifier-free guidance works.", **FRACTION,
                                   default=0.1)
    zero_terminal_snr: bool = param(
        "Rescale SD 1.5's betas so the noisiest step is pure noise (Lin et al. 2024) and sample from "
        "t = T. SD 1.5's schedule leaves ~7 % of the image in its noisiest latent; on 8×8 latents that "
        "residue shows where every object is, so a miniature trained on it takes the layout from the "
        "noise instead of the caption and ignores every position word (measured: samples for 'upper "
        "left' and 'lower right' identical). Needs prediction_type v_prediction.", default=True)
    prediction_type: str = param(
        "What the U-Net predicts: epsilon (SD 1.5) or v_prediction (SD 2.x; required at zero terminal "
        "SNR, where ε carries no information about the image).",
        enum=["epsilon", "v_prediction"], default="v_prediction")
    snr_gamma: float | None = param(
        "Min-SNR-γ loss weighting; null = plain MSE. It down-weights the noisiest steps, where the "
        "caption alone decides the layout, so it is off at zero terminal SNR.",
        exclusiveMinimum=0, default=None)
    offset_noise: float = param(
        "Std of a per-(image, channel) constant added to the training noise (offset noise): the older "
        "fix of the same residue for the background only; zero terminal SNR makes it unnecessary.",
        minimum=0, default=0.0)
    grounding_weight: float = param(
        "Weight of the grounding loss on the U-Net's cross-attention (TokenCompose's token loss: "
        "each word of an object's phrase should attend inside the object's box; the natural set's "
        "manifest carries the boxes). Trained on denoising alone, the miniature never binds a "
        "position word to a place within its budget (caption probe position at chance); with it, "
        "it does (benchmarks/README, \"Grounded cross-attention\"). 0 = denoising loss only.",
        minimum=0, default=1.0)
    threads: int | None = param(
        "torch threads of pre-training. The miniature's weights depend on it bit for bit (other "
        "threads split the sums differently), and so every number after it: name it so that `dvc "
        "repro`, `snakemake` at any --cores and any host pre-train the same model. null = torch's "
        "default, the host's cores (or OMP_NUM_THREADS).", minimum=1, default=None)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    def check(self, key: str) -> None:
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ConfigError(f"{key}.zero_terminal_snr needs {key}.prediction_type: v_prediction (at zero "
                              "SNR the noise is the whole input and predicting it teaches nothing)")
        if self.image_size % self.vae_factor:
            raise ConfigError(f"{key}.image_size: {self.image_size} is not a multiple of the VAE factor "
                              f"{self.vae_factor}")


@dataclass(frozen=True)
class BaseModelConfig:
    name: str = param(
        "'tiny' = the embedded miniature Stable Diffusion pre-trained by `selora pretrain-base`; "
        "otherwise a local diffusers folder or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5 "
        "(the paper's runwayml/stable-diffusion-v1-5, now kept under that id).", default="tiny")
    revision: str | None = param("Hub revision (hub ids only).", default=None)
    tiny: TinyConfig = param("Architecture and pre-training budget of the embedded miniature.", default={})


@dataclass(frozen=True)
class ImageSetConfig:
    """The CXR phantoms; :class:`NaturalConfig` re-declares the defaults of the natural scenes."""

    n_images: int = param(minimum=2, default=800)
    size: int = param("Raw size; `prepare` resizes to the setup's size.", minimum=8, default=64)
    splits: Splits = param(default={"train": 0.7, "validation": 0.1, "test": 0.2})


@dataclass(frozen=True)
class NaturalConfig(ImageSetConfig):
    n_images: int = param(minimum=2, default=4000)
    size: int = param(minimum=8, default=32)
    splits: Splits = param(default={"train": 0.95, "test": 0.05})
    radiographs: float = param(
        "Share of the n_images that are chest radiographs with a generic caption (\"a chest x-ray\"), "
        "drawn by the phantom renderer from their own random stream with random findings that the caption "
        "never names. They stand in for the radiographs among SD 1.5's web images: its VAE reconstructs "
        "radiographs and it draws one when asked for \"a chest x-ray\", but it never learnt which report "
        "words go with which finding - the part fine-tuning has to teach.", **FRACTION, default=0.15)


@dataclass(frozen=True)
class CxrConfig(ImageSetConfig):
    findings: dict[str, dict[str, float]] = param(
        "Which findings the phantoms vary, each listed value with its probability (they sum to 1 per "
        "finding); a finding left out is always normal, its negative sentence still in every report. "
        "The default varies all five at IU X-Ray-like priors, about 1 case in 3 normal. At the "
        "embedded grid's fine-tuning budget the miniature learns neither a finding that is a side "
        "(right / left) or a lobe nor any finding among five in varied words, so params.yaml varies "
        "three large, side-free ones in fixed words (README, benchmarks/README).",
        default={k: dict(zip(FINDINGS[k], p, strict=True)) for k, p in PRIORS.items()})
    report_style: str = param(
        "varied: IU X-Ray-like reports, 3-5 phrasings of each finding, optional sentences on bones and "
        "XXXX tokens; fixed: one phrasing per finding and nothing else, so the report's words are its "
        "findings (the same images either way).", enum=["varied", "fixed"], default="varied")

    def check(self, key: str) -> None:
        finding_priors(self.findings, f"{key}.findings")


@dataclass(frozen=True)
class SyntheticConfig:
    natural: NaturalConfig = param(
        "Coloured scenes with captions naming what is drawn (pre-training of the miniature).", default={})
    cxr: CxrConfig = param(
        "Chest-radiograph-like phantoms whose report decides what is visible (stands in for IU X-Ray).",
        default={})


@dataclass(frozen=True)
class Setup:
    dataset: str = param(enum=Registered("datasets"))
    size: int = param("Pixels after resize + centre crop (paper B.1).", minimum=8)
    splits: Splits = param()
    batch_size: int = param(minimum=1)
    epochs: int = param(minimum=1)
    max_steps: int | None = param("Stop early (smoke runs); null = all epochs.", minimum=1, default=None)
    max_records: int | None = param(
        "Use at most this many records of the data set: a seeded random subset of the parsed records, "
        "drawn before decoding and splitting (smoke runs, the rehearsal); the data report still gives the "
        "prompt lengths of every parsed record. null = all (the paper). PatchGastricADC22 is counted by its "
        "data set's pairs_per_subtype instead.", minimum=1, default=None)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = param(exclusiveMinimum=0, default=1.0e-4)
    weight_decay: float = param(minimum=0, default=0.0)
    betas: list[float] = param(items=FRACTION, minItems=2, maxItems=2, default=[0.9, 0.999])
    mixed_precision: str = param(enum=["no", "fp16", "bf16"], default="no")
    gradient_checkpointing: bool = param(default=False)
    device: str = param("auto | cpu | cuda | cuda:N", default="auto")
    checkpoint_every: int = param("Steps between full resumable checkpoints.", minimum=1, default=200)
    memory_every: int = param("Steps between peak-memory samples (paper D.1).", minimum=1, default=40)
    val_draws: int = param("Fixed (noise, timestep) draws per validation image.", minimum=1, default=2)
    timesteps: str = param(
        "How a batch's training timesteps are drawn. uniform: independently (diffusers' training scripts, "
        "the paper). stratified: one from each of batch_size equal strata of [0, T), in random order "
        "(Kingma et al. 2021's low-discrepancy sampler): the same loss in expectation, less spread "
        "between seeds on short runs (benchmarks/README).", enum=["uniform", "stratified"], default="uniform")
    lr_schedule: str = param(
        "The learning rate over the run, by diffusers' schedule names (get_scheduler, no warm-up), and wsd. "
        "constant: Table 4's (the paper states no schedule, diffusers' default). cosine / linear: "
        "decayed to 0 at the last step, so the exported adapter is not one noisy late iterate. Measured on "
        "the embedded default over 6 seeds (benchmarks/README): cosine and wsd narrow the FID-ref spread "
        "between seeds but cost finding accuracy, so both params files keep constant.",
        enum=["constant", "cosine", "linear", "wsd"], default="constant")
    lr_decay_fraction: float = param(
        "For lr_schedule wsd (warmup-stable-decay, Hägele et al. 2024; transformers' get_wsd_schedule): "
        "the share of the last steps over which the lr falls linearly from train.lr to 0; constant "
        "before. Ignored by the other schedules.", minimum=0.0, maximum=1.0, default=0.2)
    adapter_seed: int | None = param(
        "The seed of what the adapter itself draws: its initial weights (LoRA's A, AdaLoRA's P and Q, "
        "SeLoRA's new components) and DyLoRA's rank per step. null: the run's seed, like everything "
        "else (the paper). An int: every seed of the grid starts from the same adapter and draws the "
        "same ranks, so the seeds vary only the data order, the noise and the timesteps: how much of a "
        "method's spread is its initialisation (benchmarks/README, \"Where LoRA's spread comes from\").",
        default=None)
    caption_dropout: float = param(
        "Share of training captions replaced by the empty prompt, drawn per image and step from the run's "
        "generator (diffusers' train_text_to_image.py --proportion_empty_prompts). Classifier-free guidance "
        "extrapolates away from the model's empty-prompt prediction; without dropout the adapter changes "
        "that prediction untrained. 0: the paper (it states none).", **FRACTION, default=0.0)
    threads: int | None = param(
        "torch threads of `selora train` and `selora sample`. null: torch's default (the host's cores, "
        "or OMP_NUM_THREADS). The workflow passes each job's own count (`--set train.threads=N`, 1 on "
        "the CPU), so Snakemake and `dvc repro` run both phases alike.", minimum=1, default=None)


@dataclass(frozen=True)
class SampleConfig:
    scheduler: str = param(enum=["ddim", "ddpm", "pndm", "euler", "dpm"], default="ddim")
    steps: int = param(minimum=1, default=50)
    guidance_scale: float = param(
        "Classifier-free guidance. 7.5 is diffusers' default (the paper does not state its own); the "
        "embedded default samples at 2, where the miniature's fine-tuned adapters draw the findings as "
        "often as at 7.5 with half the FID-ref and colour cast (benchmarks/README).", minimum=0, default=7.5)
    guidance_rescale: float = param(
        "Rescaled classifier-free guidance (Lin et al. 2024, \"Common diffusion noise schedules and "
        "sample steps are flawed\", Section 3.4; diffusers' guidance_rescale): the guided prediction's "
        "per-image std is pulled back to the conditional one's by this share, since guidance over-exposes "
        "a model whose schedule ends at zero SNR. 0 = plain guidance (SD 1.5, the SeLoRA paper); Lin et "
        "al. use 0.7, and so does the embedded default, whose miniature's schedule ends at zero SNR. No "
        "effect at guidance_scale ≤ 1.", minimum=0, maximum=1, default=0.0)
    images_per_prompt: int = param(minimum=1, default=1)
    batch_size: int = param(minimum=1, default=16)
    seed: int = param(default=1234)


@dataclass(frozen=True)
class EvaluateConfig:
    feature_space: str = param("auto: Inception when weights are given, else the reference network.",
                               enum=["auto", "inception", "reference"], default="auto")
    inception_weights: str | None = param(
        "Local weights-inception-2015-12-05-6726825d.pth (torch-fidelity's FID Inception).", default=None)
    clip_model: str | None = param(
        "Local folder or hub id of a CLIP model (paper: openai/clip-vit-large-patch14); null skips CLIP "
        "score.", default=None)
    kid_subsets: int = param(minimum=1, default=50)
    kid_subset_size: int = param(minimum=2, default=50)
    reference_steps: int = param("Training steps of the reference network (embedded default).",
                                 minimum=1, default=600)
    min_finding_accuracy: float = param(
        "The reference network must reach this balanced accuracy (mean per-class recall) on real test "
        "images before it judges generated ones.", **FRACTION, default=0.8)
    natural_reference: str | None = param(
        "Natural-scene imagefolder (its generic radiographs left out) the domain probe contrasts with the "
        "real training images on the reference network's features; the report's in-domain % is the share "
        "of samples it calls real. null: no probe.", default=None)


@dataclass(frozen=True)
class AblationConfig:
    setups: list[str] = param(default=["synthetic-cxr-32"])
    seeds: list[int] = param(default=[0])
    threshold: list[float] = param(items={"minimum": 1}, default=[1.0, 1.3])
    test_interval: list[int] = param(items={"minimum": 1}, default=[20, 80])


@dataclass(frozen=True)
class StatisticsConfig:
    bootstrap_resamples: int = param(
        "Bootstrap resamples of the test prompts (0 turns the bootstrap off); 200 on 128 × 128-d features "
        "takes seconds.", minimum=0, default=200)
    confidence: float = param(
        "Confidence level of the report's intervals: the bootstrap over test images and the seed spread.",
        exclusiveMinimum=0, exclusiveMaximum=1, default=0.95)
    seed: int = param("Seed of the bootstrap draws (numpy.random.default_rng).", default=0)


@dataclass(frozen=True)
class ExperimentConfig:
    setups: list[str] = param(default=["synthetic-cxr-32"])
    methods: list[str] = param(items={"enum": Registered("methods")}, default=Registered("methods"))
    seeds: list[int] = param(minItems=1, default=[0, 1, 2])
    ablation: AblationConfig = param(
        "SeLoRA sensitivity to λ (paper Table 3) and to t (asked for by the reviewers). The lists hold the "
        "values tried *besides* methods.selora's own, whose runs come from the main grid (so ablation "
        "setups and seeds must be part of the main grid, and selora a main method).", default={})
    no_adapter: bool = param(
        "Also sample and evaluate the untouched base model (no adapter) on every main setup's test prompts, "
        "with the same sampling seeds, and show it as the \"no adapter\" row of the quality tables: the "
        "reference every adapter must beat.", default=True)
    statistics: StatisticsConfig = param(
        "How the quality tables judge differences (selora report). Bootstrap over test images: the test "
        "prompts are resampled with replacement (the same draws for every run) and FID/KID recomputed, "
        "giving a percentile interval for each method's difference to SeLoRA; an interval covering 0 is "
        "marked not significant. Over seeds: scipy's paired t-test.", default={})

    def check(self, key: str) -> None:
        abl = self.ablation
        if not (abl.setups and (abl.threshold or abl.test_interval)):
            return
        from selora.adapters.base import proposed_method

        if (proposed := proposed_method()) not in self.methods:
            raise ConfigError(f"{key}.ablation: needs {proposed} in {key}.methods (its base point)")
        for sub, main in (("setups", self.setups), ("seeds", self.seeds)):
            extra = [v for v in getattr(abl, sub) if v not in main]
            if extra:
                raise ConfigError(f"{key}.ablation.{sub}: {extra} not in {key}.{sub}; the base point of "
                                  "every ablation comes from the main grid")


@dataclass(frozen=True)
class Params:
    seed: int = param("Seed of everything that is not a training run (synthetic data, pre-training, "
                      "splits).", default=0)
    paths: Paths = param("Fixed output locations (relative to the repository root). No timestamped "
                         "folders.", default={})
    base_model: BaseModelConfig = param("The Stable Diffusion model to fine-tune.", default={})
    synthetic: SyntheticConfig = param("The embedded synthetic data written by `selora make-synthetic`.",
                                       default={})
    datasets: Sections = param("Where each data set's raw files are (the folder the user downloaded and "
                               "unpacked).", registry="datasets", default={})
    setups: dict[str, Setup] = param(
        "One prepared data set each (data set × image size) with its protocol: split, batch size, epochs "
        "(paper Section 3.5, Table 4, Appendix C). Keys name the setup (e.g. iu-xray-224).",
        default={"synthetic-cxr-32": {"dataset": "synthetic-cxr", "size": 32,
                                      "splits": {"train": 0.7, "validation": 0.1, "test": 0.2},
                                      "batch_size": 8, "epochs": 6}})
    methods: Sections = param("Adapter hyper-parameters per method (paper Section 3.5).",
                              registry="methods", default={})
    train: TrainConfig = param("The training protocol (paper Section 3.5, Table 4).", default={})
    sample: SampleConfig = param("Sampling the test prompts with the best adapter.", default={})
    evaluate: EvaluateConfig = param("Metrics (FID 64/192/2048, KID, CLIP score, finding accuracy).",
                                     default={})
    experiment: ExperimentConfig = param("The grid of runs (setups × methods × seeds) and the ablations.",
                                         default={})
    cpu_isa: str | None = param(
        "Pin torch's CPU kernels to one instruction set (selora.cpuisa), so that x86-64 hosts with AVX2 "
        "compute the same bits: avx2 sets ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and "
        "MKL_ENABLE_INSTRUCTIONS for every phase. null: each library takes the best the CPU has, and an "
        "AVX-512 and an AVX2 host pre-train different miniatures (benchmarks/README, \"Which kernels a "
        "host runs\"). No effect on GPU kernels or on other architectures.", enum=["avx2", None],
        default=None)
    raw: dict[str, Any] = dataclasses.field(compare=False, repr=False, metadata={"schema": None})

    def setup(self, name: str) -> Setup:
        if name not in self.setups:
            known = ", ".join(sorted(self.setups)) or "none"
            raise ConfigError(f"setups: unknown setup {name!r}; known: {known}")
        return self.setups[name]

    def check(self, key: str) -> None:
        """Every setup the grid uses is defined, and its data set has a raw-data folder."""
        for name in [*self.experiment.setups, *self.experiment.ablation.setups]:
            if name not in self.setups:
                raise ConfigError(f"experiment.setups: {name!r} is not defined under setups")
            dataset = self.setups[name].dataset
            if not self.datasets.get(dataset).raw:
                raise ConfigError(
                    f"datasets.{dataset}.raw: setup {name!r} uses {dataset} but no raw-data folder is set")
