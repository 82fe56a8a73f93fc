"""Training-engine throughput: steps/second per method, checkpoint overhead, and (on a GPU) SD 1.5
against a plain peft LoRA loop written the way diffusers' example script does it.

CPU, embedded miniature (default)::

    python benchmarks/train.py --out results/benchmarks/train.json

trains every method for ``--steps`` optimiser steps through the real engine (``selora train``'s
code path) on the same prepared data, in one process, and reports ``steps_per_second`` per method,
``steps_per_second_ratio_vs_lora`` and the engine's measured ``checkpoint_overhead`` (checkpoint
time / step time at the default ``train.checkpoint_every``; goal ≤ 2 %).

GPU (``--sd15``; needs a CUDA device, no download): the SD 1.5 architecture built from its
published config with random weights at 224 px, batch 8, fp16 autocast — steps/second and peak
memory per method through the engine's step, and the same for a reference loop (peft ``LoraConfig``
r = 4 on U-Net + text encoder, as ``train_text_to_image_lora.py``), as ``ratio_vs_diffusers_loop``
(goal ≥ 1.0).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from selora.config import load_params, method_names
from selora.io import Provenance, write_json
from selora.runlayout import RunId
from selora.synthetic import make_cxr


def cpu_engine(args: argparse.Namespace) -> dict:
    from selora.engine.train import train

    base = Path(args.base)
    if not (base / "model_index.json").is_file():
        raise SystemExit(f"{base} is not a pre-trained miniature: run `make repro` or `selora pretrain-base`")
    out: dict = {"steps": args.steps, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prepared"
        make_cxr(load_params(None, ["synthetic.cxr.n_images=400", "synthetic.cxr.size=32"]).synthetic.cxr,
                 data, seed=0, progress=False)
        for method in args.methods:
            params = load_params(args.params, [
                f"base_model.name={base}", f"paths.results={tmp}/results", "train.device=cpu",
                f"setups.synthetic-cxr-32.max_steps={args.steps}", "setups.synthetic-cxr-32.epochs=100",
            ])
            summary = train(params, RunId("synthetic-cxr-32", method, "default", 0), data_dir=data,
                            progress=False)
            out["methods"][method] = {
                "steps_per_second": summary["steps_per_second"],
                "checkpoint_overhead": summary["checkpoint_overhead"],
                "checkpoint_every": params.train.checkpoint_every,
                "memory_mean_mb": summary["memory_mean_mb"],
            }
    lora = out["methods"].get("lora", {}).get("steps_per_second")
    if lora:
        out["steps_per_second_ratio_vs_lora"] = {
            m: round(v["steps_per_second"] / lora, 3) for m, v in out["methods"].items()}
    out["checkpoint_overhead_max"] = max(v["checkpoint_overhead"] for v in out["methods"].values())
    return out


def sd15_gpu(args: argparse.Namespace) -> dict:  # pragma: no cover - needs a GPU
    """SD 1.5 architecture, random weights, 224 px, batch 8, fp16: engine step vs diffusers-style loop."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextConfig, CLIPTextModel

    from selora.adapters import create_adapter

    if not torch.cuda.is_available():
        raise SystemExit("--sd15 needs a CUDA device")
    dev = torch.device("cuda")
    unet_cfg = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                    block_out_channels=(320, 640, 1280, 1280),
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    text_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012)
    params = load_params(args.params)
    bs, hw = 8, 224 // 8
    results = {}

    def run(method: str | None) -> dict:
        torch.manual_seed(0)
        unet, text = UNet2DConditionModel(**unet_cfg).to(dev), CLIPTextModel(text_cfg).to(dev)
        unet.requires_grad_(False)
        text.requires_grad_(False)
        if method is None:  # the diffusers example's way: peft adapters, trainable params filtered
            cfg = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules="all-linear")
            unet.add_adapter(cfg)
            targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
            text.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                        target_modules=targets))
            trainable = [p for m in (unet, text) for p in m.parameters() if p.requires_grad]
            adapter = None
        else:
            adapter = create_adapter(method, params.methods.get(method), seed=0)
            adapter.attach({"unet": unet, "text_encoder": text}, total_steps=args.gpu_steps)
            trainable = adapter.trainable_parameters()
        opt_cls = torch.optim.AdamW if method is None else torch.optim.Adam  # diffusers' script: AdamW
        opt = opt_cls(trainable, lr=1e-4)
        scaler = torch.amp.GradScaler("cuda")
        ids = torch.randint(0, 49408, (bs, 77), device=dev)
        torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(args.gpu_steps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            if adapter:
                adapter.before_forward(step)
            latents = torch.randn(bs, 4, hw, hw, device=dev)
            noise = torch.randn_like(latents)
            ts = torch.randint(0, 1000, (bs,), device=dev)
            with torch.autocast("cuda", dtype=torch.float16):
                hidden = text(ids)[0]
                pred = unet(sched.add_noise(latents, noise, ts), ts, encoder_hidden_states=hidden).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            extra = adapter.extra_loss() if adapter else None
            scaler.scale(loss if extra is None else loss + extra).backward()
            scaler.step(opt)
            scaler.update()
            if adapter:
                adapter.after_optimizer_step(step, opt)
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        warm = times[5:]
        return {"steps_per_second": round(len(warm) / sum(warm), 3),
                "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}

    results["diffusers_loop"] = run(None)
    for method in args.methods:
        results[method] = run(method)
    ref = results["diffusers_loop"]["steps_per_second"]
    return {"device": torch.cuda.get_device_name(), "per_method": results,
            "ratio_vs_diffusers_loop": {m: round(r["steps_per_second"] / ref, 3)
                                        for m, r in results.items() if m != "diffusers_loop"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", default="models/tiny-sd", help="pre-trained miniature folder")
    ap.add_argument("--methods", nargs="+", default=method_names())
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--sd15", action="store_true", help="the GPU benchmark (SD 1.5 architecture)")
    ap.add_argument("--gpu-steps", type=int, default=30)
    ap.add_argument("--out", default="results/benchmarks/train.json")
    args = ap.parse_args()
    prov = Provenance("benchmarks/train.py")
    result = {"cpu_engine": cpu_engine(args)} if not args.sd15 else {"sd15_gpu": sd15_gpu(args)}
    result["torch_threads"] = torch.get_num_threads()
    write_json(args.out, {**result, "provenance": prov.as_dict()})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
