"""The evaluation harness: any registered strategy x model x schedule x dataset, as a hydra app.

Installed as the console script ``tomeplug-eval`` (also ``python -m tomeplug_eval.harness``; in the
repository ``eval/harness.py`` is the same app):

    tomeplug-eval model=sam_tiny strategy=tome dataset=synthetic
    tomeplug-eval -m model=sam_vit_l strategy=none,tome,pitome layers=paper dataset=coift \\
        data_root=/data/hq-sam checkpoint=checkpoints
    torchrun --nproc_per_node 2 -m tomeplug_eval.harness -m strategy=none,tome ...

The hydra configs ship inside the package (``tomeplug_eval/conf/``). ``--help`` lists the config groups
and every key (documented in ``conf/harness.yaml``). Each job
appends one line to ``<output_dir>/results.jsonl`` and regenerates ``results.csv``, ``results.md`` and
``results.png`` there, so every job of a sweep (and every later invocation) accumulates in one table.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parent / "conf"
"""The harness's hydra configs, shipped as package data."""


@hydra.main(config_path=str(CONF), config_name="harness", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run one job (hydra calls this once per job of a multirun)."""
    from tomeplug.torchvision_compat import ensure_torchvision  # imported here: --help stays quick
    from tomeplug_eval.results import ResultsFile
    from tomeplug_eval.run_labels import run_title
    from tomeplug_eval.runner import run

    ensure_torchvision()
    record = run(cfg)
    if record is not None:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items())
        gflops = (record.get("flops") or {}).get("gflops")
        cost = f", {gflops:.4g} GFLOPs" if gflops is not None else ""
        ms = 1000 * record["latency"]["encoder_s"]
        title = run_title(record, ResultsFile(cfg.output_dir).records())  # names the parameters that vary
        print(f"[tomeplug] {title}: {metrics}{cost}, {ms:.1f} ms/img")
        print(f"[tomeplug] table: {cfg.output_dir}/results.md", flush=True)


def cli() -> None:
    """The ``tomeplug-eval`` console script: run the hydra app on the command line's overrides."""
    if GlobalHydra.instance().is_initialized():  # `import sam2` (by a plugin) initialises hydra; the app owns it
        GlobalHydra.instance().clear()
    main()


if __name__ == "__main__":
    cli()
