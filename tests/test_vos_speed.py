"""bench/vos_speed.py end to end on the tiny SAM 2: four variants, a time split that adds up, FLOPs that drop."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_vos_speed_rows_on_the_tiny_sam2(tmp_path):
    out = tmp_path / "rows.jsonl"
    command = [sys.executable, str(BENCH / "vos_speed.py"), "--model", "sam2_tiny", "--rounds", "1", "--warmup", "0"]
    command += ["--memory-r", "0.5"]  # the memory frames merge too
    env = {k: v for k, v in os.environ.items() if k != "TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD"}
    done = subprocess.run(
        [*command, "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["variant"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert list(rows) == ["dense", "encoder", "memory", "both"]
    assert "| variant | frame ms |" in done.stdout
    for row in rows.values():
        assert row["memory_frames"] == 7  # sam2_tiny's num_maskmem: a full bank
        assert all(row[f"{stage}_ms"] > 0 for stage in ("frame", "encoder", "memory"))
        assert math.isclose(row["encoder_ms"] + row["memory_ms"] + row["rest_ms"], row["frame_ms"], rel_tol=1e-9)
        assert 0 <= row["mask_iou"] <= 1
    dense, encoder, memory, both = rows.values()
    assert dense["frame_speedup"] == 1.0 and dense["mask_iou"] == 1.0
    assert encoder["encoder_gflops"] < dense["encoder_gflops"] and encoder["memory_gflops"] == dense["memory_gflops"]
    assert memory["memory_gflops"] < dense["memory_gflops"] and memory["encoder_gflops"] == dense["encoder_gflops"]
    assert both["total_gflops"] == encoder["encoder_gflops"] + memory["memory_gflops"]
