"""bench/gpu.sh, the GPU table's script, end to end on the CPU with the tiny models (as it runs on a GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["sam_tiny", "sam2_tiny", "sam3_tiny"]


def test_gpu_script_runs_every_row_on_cpu(tmp_path):
    """Every (model, baseline, batch, scope) row measured, compiled rows for span only, profiles written; the
    built-ins registered without entry points (the repository not installed, as on a bare GPU machine)."""
    command = ["bash", str(ROOT / "bench" / "gpu.sh"), "--device", "cpu", "--models", ",".join(MODELS)]
    command += ["--batches", "1,2", "--repeats", "1", "--warmup", "0", "--compile-backend", "eager"]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu.jsonl").read_text().splitlines()]
    assert not [row for row in rows if "error" in row or "skipped" in row]
    expected = {
        (m, b, base, s) for m in MODELS for b in (1, 2) for base in ("eager", "sdpa") for s in ("attn", "block", "span")
    }
    expected |= {(m, b, "compile", "span") for m in MODELS for b in (1, 2)}
    assert {(r["model"], r["batch"], r["baseline"], r["scope"]) for r in rows} == expected
    for row in rows:
        assert row["dense_s"] > 0 and row["patched_s"] > 0 and row["flops_bound"] > 1 and 0 < row["cosine"] <= 1
        assert row["dense_peak_mb"] >= 0 and row["patched_peak_mb"] >= 0 and row["dtype"] == "bf16"
        assert ("compile_s" in row) == (row["baseline"] == "compile")
    assert {r["flops_bound"] for r in rows if r["model"] == "sam_tiny" and r["scope"] == "attn"} == {
        r["flops_bound"] for r in rows if r["model"] == "sam_tiny" and r["scope"] == "attn" and r["batch"] == 1
    }
    assert sorted(p.name for p in tmp_path.glob("gpu_profile_*")) == sorted(
        f"gpu_profile_{m}_{v}_b2.txt" for m in MODELS for v in ("dense", "span")
    )
    log = (tmp_path / "gpu.log").read_text()
    assert "| model | batch | baseline | scope |" in log and log.count("| compile | span |") == 6
