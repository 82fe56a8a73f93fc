"""Prepare a data set from its official distribution: frontal/subtype selection, the paper's
splits (seeded), resize + centre crop (paper B.1) into an imagefolder with metadata.jsonl, and a
data report (data_report.md/.json: counts, prompt lengths in tokens, every skipped record).

Data sets: every registered one (selora.data.registry; --help lists them). With --setup NAME the
data set, size and splits come from params.setups[NAME], the raw folder from
params.datasets.<data set>.raw and the seed from params.seed; explicit flags override them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selora.commands import add_params_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)
    parser.add_argument("--setup", help="a key of params.setups (data set, size, splits)")
    # No `choices`: the registry imports the data modules, and `selora --help` stays import-free; an
    # unknown name is a ConfigError that lists the registered ones.
    parser.add_argument("--dataset", help="a registered data set (or from --setup)")
    parser.add_argument("--raw", help="the downloaded, unpacked folder (default: params.datasets.<name>.raw)")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--size", type=int, help="pixels after resize + centre crop, a multiple of 8 "
                        "(default: the setup's, else the paper's: 224; PatchGastricADC22 384)")
    parser.add_argument("--seed", type=int, help="split/sampling seed (default: params.seed)")
    parser.add_argument("--splits", metavar="train=F,validation=F,test=F",
                        help="split fractions (default: the setup's, else the paper's for the data set)")
    parser.add_argument("--views", help="IU X-Ray NLM layout: CSV of image id → view position")
    parser.add_argument("--subtype", action="append", metavar="NAME",
                        help="PatchGastricADC22 subtype (repeatable; default: params, the paper's five)")
    parser.add_argument("--pairs-per-subtype", type=int, help="PatchGastricADC22 pairs per subtype")
    parser.add_argument("--max-records", type=int, metavar="N",
                        help="use a seeded subset of N parsed records (default: the setup's "
                        "max_records, else all); prompt lengths still cover every record")
    parser.add_argument("--tokenizer", help="tokenizer folder for prompt lengths (default: the base model's)")
    parser.add_argument("--workers", type=int,
                        help="image worker processes (default: usable CPUs, at most 8)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")


def load_params(args: argparse.Namespace):
    """``--params`` files, else ./params.yaml when present, else the schema defaults."""
    from selora.config import load_params as load

    if args.params:
        return load(args.params, args.overrides)
    return load("params.yaml" if Path("params.yaml").is_file() else None, args.overrides)


def options_from_args(args: argparse.Namespace, params):
    """Resolve the setup, params and explicit flags (flags win) into :class:`PrepareOptions`."""
    from selora.data import PrepareOptions, default_splits, paper_size, parse_splits
    from selora.data.images import usable_cpus
    from selora.errors import ConfigError

    if args.setup:
        setup = params.setup(args.setup)
        if args.dataset and args.dataset != setup.dataset:
            raise ConfigError(f"--dataset {args.dataset} contradicts setups.{args.setup}.dataset "
                              f"({setup.dataset})")
        dataset, size, splits = setup.dataset, args.size or setup.size, setup.splits.as_dict()
        max_records = setup.max_records
    elif args.dataset:
        dataset = args.dataset
        size = args.size or paper_size(dataset)
        splits = default_splits(dataset, size)
        max_records = None
    else:
        raise ConfigError("give --dataset NAME or --setup NAME")
    if args.splits:
        splits = parse_splits(args.splits)
    source = params.datasets.get(dataset)
    raw = args.raw or source.raw
    if not raw:
        raise ConfigError(f"no raw data folder for {dataset}: pass --raw DIR or set datasets.{dataset}.raw")
    views = args.views or getattr(source, "views", None)  # the data set's own options, where it has them
    tokenizer, note = args.tokenizer, ""
    if tokenizer is None:
        tokenizer, note = _base_tokenizer(params)
    return PrepareOptions(
        dataset=dataset, raw=Path(raw), out=Path(args.out), size=size,
        seed=params.seed if args.seed is None else args.seed, splits=splits,
        views=Path(views) if views else None,
        subtypes=tuple(args.subtype or getattr(source, "subtypes", ())),
        pairs_per_subtype=args.pairs_per_subtype or getattr(source, "pairs_per_subtype", 1000),
        max_records=max_records if args.max_records is None else args.max_records,
        tokenizer=tokenizer, tokenizer_note=note, workers=args.workers or min(usable_cpus(), 8),
        force=args.force,
    )


def _base_tokenizer(params) -> tuple[str | None, str]:
    from selora.basemodel import resolve_base
    from selora.errors import SeloraError

    try:
        return resolve_base(params), ""
    except SeloraError as exc:
        return None, f"the base model's tokenizer is not available ({exc})"


def run(args: argparse.Namespace) -> int:
    from selora.data import prepare

    opts = options_from_args(args, load_params(args))
    report, written = prepare(opts, progress=not args.quiet)
    counts = ", ".join(f"{s} {n}" for s, n in report["counts"].items())
    skipped = len(report["skipped"])
    state = "written" if written else "up to date, nothing to do"
    print(f"{opts.dataset} → {opts.out} ({state}): {counts}; {skipped} record(s) skipped "
          f"(see {opts.out}/data_report.md)")
    cap = report.get("record_cap")
    if cap:
        print(f"record cap: {cap['used']} of {cap['parsed_records']} parsed records used "
              f"(max_records {cap['max_records']})")
    # With a cap, the data set's own prompt lengths: every parsed record's, not the few used.
    tok, of = (cap.get("prompt_tokens"), "every parsed record") if cap else \
        (report.get("prompt_tokens", {}).get("all"), "the records used")
    limit = report["tokenizer"].get("max_length")
    if tok and tok["n"]:
        over = f", {tok['over_limit']} over {limit}" if limit and "over_limit" in tok else ""
        print(f"prompt tokens ({of}, n={tok['n']}): median {tok['median']}, p95 {tok['p95']}, "
              f"max {tok['max']}{over}")
    print(f"split hash: {report['split_hash']}")
    for warning in report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0
