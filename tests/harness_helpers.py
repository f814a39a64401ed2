"""Helpers shared by the harness tests: the config composed in-process, a run, the harness as a subprocess."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.singleton import Singleton

from tomeplug_eval import runner

ROOT = Path(__file__).resolve().parents[1]
HARNESS, CONF = ROOT / "eval" / "harness.py", ROOT / "eval" / "tomeplug_eval" / "conf"
FAST = ["model=sam_tiny", "dataset=synthetic", "limit=3", "threads=1", "progress=false", "warmup=0"]
VFAST = ["model=sam2_tiny", "dataset=synthetic_video", "threads=1", "progress=false", "warmup=0"]


@contextlib.contextmanager
def composed(*overrides: str):
    """The harness config for ``overrides``, composed in-process (hydra's global state restored after)."""
    state = Singleton.get_state()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            yield compose("harness", overrides=list(overrides))
    finally:
        Singleton.set_state(state)


def run(tmp_path: Path, *overrides: str) -> dict | None:
    """One in-process harness run on the tiny SAM and synthetic data (``FAST``), writing to ``tmp_path``."""
    with composed(*FAST, f"output_dir={tmp_path}", *overrides) as cfg:
        return runner.run(cfg)


def run_video(tmp_path: Path, *overrides: str) -> dict | None:
    """One video harness job (a tiny SAM 2 on synthetic_video), in-process, into ``tmp_path``."""
    with composed(*VFAST, f"output_dir={tmp_path}", *overrides) as cfg:
        return runner.run(cfg)


def harness(*args: str, module: list[str] | None = None) -> subprocess.CompletedProcess:
    """The harness as a subprocess, with the installed plugins (conftest disables autoload for this process)."""
    env = {k: v for k, v in os.environ.items() if k != "TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD"}
    command = [sys.executable, *(module or []), str(HARNESS), *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def free_port() -> int:
    """A free local TCP port for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
