"""Pip users can run the evaluation: a wheel built from this tree, installed (not editable) into a fresh
virtual environment outside the repository, runs the harness by its console script on a tiny SAM.

The environment installs ``tomeplug[sam,eval]`` from the wheel through the project's constraints (the
CPU torch); nothing of the repository is on its path. About a minute here, most of it installing torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout's paths or the test suite's plugin switch."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD")}
    return {**env, "PIP_CONSTRAINT": str(ROOT / "constraints.txt"), "SAM2_BUILD_CUDA": "0", **extra}


def check(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command[:4]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel of this tree installed, with the sam and eval extras."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    tracked = check(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT).stdout.split()
    for name in tracked:  # a copy, so the build leaves the checkout clean
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheels = root / "wheels"
    check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)])
    (wheel,) = wheels.glob("tomeplug-*.whl")
    env_dir = root / "venv"
    check([sys.executable, "-m", "venv", str(env_dir)])
    check([str(env_dir / "bin" / "pip"), "install", "-q", f"{wheel}[sam,eval]"], env=clean_env())
    return env_dir


def test_the_wheel_ships_the_configs_and_the_console_script(venv):
    python = str(venv / "bin" / "python")
    code = "import tomeplug_eval.harness as h; print(h.__file__); print(sorted(p.name for p in h.CONF.iterdir()))"
    done = check([python, "-c", code], env=clean_env(), cwd=venv)
    where, listing = done.stdout.splitlines()
    assert where.startswith(str(venv)) and "site-packages" in where  # installed, not this checkout
    assert listing == str(sorted(p.name for p in (ROOT / "eval" / "tomeplug_eval" / "conf").iterdir()))
    assert (venv / "bin" / "tomeplug-eval").is_file()
    assert "tomeplug-eval [-m] model=NAME" in check([str(venv / "bin" / "tomeplug-eval"), "--help"], cwd=venv).stdout


def test_the_console_script_runs_the_harness_outside_the_repository(venv, tmp_path):
    command = [
        str(venv / "bin" / "tomeplug-eval"), "-m", "model=sam_tiny", "dataset=synthetic", "strategy=none,tome",
        "limit=1", "threads=1", "progress=false", "warmup=0", f"output_dir={tmp_path / 'out'}",
    ]  # fmt: skip
    done = check(command, env=clean_env(), cwd=tmp_path)
    assert "RANDOM WEIGHTS" in done.stdout
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["strategy"] for r in records] == ["none", "tome"]
    assert records[1]["flops"]["ratio"] < 1.0 and 0.0 < records[1]["metrics"]["fid_iou"] <= 1.0
    assert records[1]["versions"]["tomeplug"] == "0.1.0"  # the installed distribution's


def test_the_demo_runs_the_installed_harness(venv, tmp_path):
    python = str(venv / "bin" / "python")
    code = (
        "from tomeplug_eval import demo; args = demo.parse_args(['--output-dir', 'x']); "
        "print(demo.commands(args)[0][1:4]); print(args.strategies)"
    )
    done = check([python, "-c", code], env=clean_env(), cwd=tmp_path)
    head, strategies = done.stdout.splitlines()
    assert head == "['-m', 'tomeplug_eval.harness', '-m']"
    assert "tome" in strategies and "pitome" in strategies  # the strategies come from the installed plugins


def test_missing_eval_extra_names_it(tmp_path):
    """Without the eval extra's distributions, importing tomeplug_eval says which and how to install them."""
    hide = "import sys; sys.path = [p for p in sys.path if 'site-packages' not in p]; "
    code = hide + f"sys.path.insert(0, {str(ROOT / 'eval')!r}); import tomeplug_eval"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0
    assert "tomeplug_eval needs the 'eval' extra; missing: fvcore, hydra-core" in done.stderr
    assert 'pip install "tomeplug[eval]"' in done.stderr
