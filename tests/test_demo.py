"""``make demo``: the harness on a tiny model end to end, the demo's sweep commands, and latency helpers."""

from __future__ import annotations

import re
import types

from tomeplug_eval import demo, latency
from tomeplug_eval.latency import compare


def test_demo_runs_the_harness_and_prints_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD", raising=False)  # the harness loads the installed plugins
    argv = ["--model", "sam_tiny", "--depth", "4", "--datasets", "synthetic", "--limit", "1", "--strategies", "tome"]
    table = demo.main([*argv, "--output-dir", str(tmp_path), "threads=1", "progress=false", "flops=false"])
    out = capsys.readouterr().out
    assert table in out and "Full results" in out
    rows = [line for line in table.splitlines() if line.startswith("| sam_tiny ")]
    assert [row.split(" | ")[3] for row in rows] == ["none", "tome"]
    assert " | random | " in rows[0] and "| [0, 1, 2, 3] |" in rows[1]
    assert re.search(r"\| \d+\.\d\dx \|", rows[1])  # tome's speedup over the none run the demo puts first


def test_default_layers_scale_the_paper_schedule():
    assert demo.default_layers(24) == list(demo.PAPER_SCHEDULE_VIT_L)
    assert demo.default_layers(12) == [0, 2, 5, 8, 9, 10, 11]


def test_demo_sweeps_every_strategy_with_none_first():
    first, second = demo.commands(demo.parse_args(["--strategies", "tome", "pitome", "third_party"]))
    assert first[1:3] == ["-m", "tomeplug_eval.harness"]  # the installed harness, not a script in the checkout
    assert first[3:5] == ["-m", "strategy=none,tome,pitome"] and "layers=[0,2,5,8,9,10,11]" in first
    assert {"model=sam_vit_b", "dataset=synthetic,smoke", "limit=2", "r=0.5"} <= set(first)
    assert second[3:6] == ["-m", "strategy=plugin", "strategy.name=third_party"]


def test_compare_interleaves_and_reports_medians_and_speedups(monkeypatch):
    """On a fake clock each call of a variant takes the next of its durations (the first is the warmup's)."""
    now, calls = [0.0], []
    monkeypatch.setattr(latency, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def variant(name: str, *seconds: float):
        durations = iter(seconds)

        def call():
            calls.append(name)
            now[0] += next(durations)
            return len(calls)

        return call

    result = compare({"a": variant("a", 9.0, 3.0, 2.0, 2.0), "b": variant("b", 9.0, 0.5, 0.5, 0.5)}, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert result["all_s"] == {"a": [3.0, 2.0, 2.0], "b": [0.5, 0.5, 0.5]}
    assert result["median_s"] == {"a": 2.0, "b": 0.5} and result["speedup"] == {"a": 1.0, "b": 4.0}
    assert result["last"] == {"a": 7, "b": 8}
