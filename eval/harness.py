"""The evaluation harness in the repository: the same app as the installed ``tomeplug-eval`` console script.

    python eval/harness.py model=sam_tiny strategy=tome dataset=synthetic
    python eval/harness.py -m model=sam_vit_l strategy=none,tome,pitome layers=paper dataset=coift \\
        data_root=/data/hq-sam checkpoint=checkpoints
    torchrun --nproc_per_node 2 eval/harness.py -m strategy=none,tome ...

``--help`` lists the config groups and every key; the configs live in ``eval/tomeplug_eval/conf/``.
"""

from tomeplug_eval.harness import cli

if __name__ == "__main__":
    cli()
