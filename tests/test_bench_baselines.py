"""bench/: the SDPA dense baseline equals upstream's attention, and encoder_speed.py runs with each baseline."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from tiny_models import tiny_sam_encoder

import tomeplug

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from sdpa_attention import use_sdpa  # noqa: E402


def test_sdpa_attention_equals_upstream_and_spares_patched_modules():
    """Windowed (padded) and global blocks: the SDPA form gives upstream's encoder output."""
    encoder = tiny_sam_encoder()
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    sdpa = copy.deepcopy(encoder)
    assert use_sdpa(sdpa) == len(encoder.blocks)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(x), encoder(x), rtol=1e-4, atol=1e-5)
    patched = copy.deepcopy(encoder)
    tomeplug.patch(patched, "tome", [0, 1], r=0.5)  # attn scope: those attentions are tomeplug's
    assert use_sdpa(patched) == len(encoder.blocks) - 2


def test_encoder_speed_runs_with_the_sdpa_baseline(tmp_path):
    """The benchmark end to end on the tiny SAM: a JSON row that says what it swapped and measured."""
    out = tmp_path / "rows.jsonl"
    command = [sys.executable, str(BENCH / "encoder_speed.py"), "--model", "sam_tiny", "--baseline", "sdpa"]
    command += ["--scope", "span", "--repeats", "1", "--warmup", "0", "--overhead-runs", "1", "--threads", "1"]
    env = {k: v for k, v in os.environ.items() if k != "TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD"}  # the installed plugins
    done = subprocess.run(
        [*command, "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(out.read_text())
    # both copies: 4 blocks each (span scope swaps blocks, not their attentions, which merged runs bypass)
    assert row["baseline"] == "sdpa" and row["sdpa_swapped"] == 8
    assert row["speedup"] > 0 and row["flops_bound"] > 1 and 0 < row["cosine"] <= 1
    assert row["dense_peak_mb"] >= 0 and row["patched_peak_mb"] >= 0
    # deterministic live-tensor peaks: dense SDPA holds its (heads, N, N) mask, twice (add, then reshape's copy)
    assert row["patched_live_peak_mb"] > 0 and row["dense_live_peak_mb"] >= 2 * 4 * 256**2 * 4 / 2**20
    assert row["dense_live_peak"][1].split()[2] in {"add", "clone"}


def test_profile_forward_prints_eager_and_compiled_tables(capsys):
    """bench/profile_forward.py end to end on the tiny SAM: a profiler table per variant, the compile timed."""
    import profile_forward

    seconds = profile_forward.main(["--model", "sam_tiny", "--scope", "span", "--compile", "--backend", "eager"])
    out = capsys.readouterr().out
    assert set(seconds) == {"eager", "compile", "compiled"} and all(s > 0 for s in seconds.values())
    assert "sam_tiny span fp32 eager" in out and "sam_tiny span fp32 compiled" in out
    assert out.count("Self CPU time total") == 2


def test_profile_forward_names_inductors_kernels(capsys):
    """``--kernel-names``: the compiled table has a row per generated C++ kernel (how the bf16 gap was named)."""
    import profile_forward

    profile_forward.main(["--model", "sam_tiny", "--scope", "span", "--compile", "--kernel-names", "--rows", "400"])
    compiled = capsys.readouterr().out.split("sam_tiny span fp32 compiled")[1]
    assert "graph_0_cpp_fused_" in compiled
    assert not torch._inductor.config.cpp.enable_kernel_profile  # set for that compile only
