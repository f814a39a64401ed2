"""What a newcomer trips over (issue 13, items 1 and 6): the torchvision import hook `make` installs, the
cache folder that shadowed ``import tomeplug``, readable errors, names and help, a pasteable demo command
line, progress bars that leave no blank lines."""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from pathlib import Path

import pytest
from harness_helpers import run as run_harness
from harness_helpers import run_video as run_video_harness
from tiny_models import tiny_sam_encoder

import tomeplug
from tomeplug import _torchvision_hook
from tomeplug_eval import demo
from tomeplug_eval.video.synthetic import default_cache_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
HAS_MAKE = shutil.which("make") is not None


def script(*parts: str) -> str:
    """Python source made of ``parts``, each dedented on its own."""
    return "\n".join(textwrap.dedent(part).strip("\n") for part in parts) + "\n"


def python(code: str, *flags: str, cwd: Path | None = None, **variables: str | None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter of this venv; a variable set to None is removed."""
    env = {**os.environ, **variables}
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, *flags, "-c", script(code)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


# Item 1: the README's imports run as written in the venv `make` creates.

README_IMPORTS = """
    import tomeplug
    from segment_anything import sam_model_registry, SamPredictor
    from sam2.build_sam import build_sam2
    import torch, torchvision
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.9], [5.0, 5.0, 6.0, 6.0]])
    print(torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist())
"""


def test_readme_imports_need_no_shim_call_in_the_venv():
    """Holds in the venv `make` creates: its install step registers the hook (the .pth) there."""
    installed = Path(sysconfig.get_paths()["purelib"]) / _torchvision_hook.PTH_NAME
    hint = (
        ""
        if installed.exists()
        else f"\nThe torchvision import hook is not installed in this venv ({installed} is missing): run `make "
        f"install`, or `{sys.executable} -m tomeplug._torchvision_hook`."
    )
    result = python(README_IMPORTS)
    assert result.returncode == 0, result.stderr[-3000:] + hint
    assert result.stdout.split()[-2:] == ["[0,", "2]"]


# The hook's .pth, written into a throwaway site dir and processed as site.py does at start-up. Any copy of
# the hook already installed in this venv is taken off first, so these exercise the .pth under test.
WITH_PTH = """
    import site, sys
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "is_tomeplug_torchvision_hook", False)]
    site.addsitedir({site_dir!r})
    hooks = [f for f in sys.meta_path if getattr(f, "is_tomeplug_torchvision_hook", False)]
    assert len(hooks) == 1 and sys.meta_path[0] is hooks[0], sys.meta_path
    assert "torch" not in sys.modules and "tomeplug" not in sys.modules, "the hook imported torch at start-up"
"""


@pytest.fixture
def site_dir(tmp_path) -> Path:
    """A folder holding the hook's .pth, as `make` writes it into site-packages."""
    folder = tmp_path / "site"
    folder.mkdir()
    assert _torchvision_hook.write_pth(folder) == folder / _torchvision_hook.PTH_NAME
    return folder


def test_pth_hook_makes_the_readme_imports_work(site_dir):
    code = script(
        WITH_PTH,
        README_IMPORTS,
        "assert not any(getattr(f, 'is_tomeplug_torchvision_hook', 0) for f in sys.meta_path)",
        "assert torchvision.__spec__.loader is not hooks[0]  # the module keeps its own spec",
    )
    result = python(code.format(site_dir=str(site_dir)), "-W", "ignore")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["[0,", "2]"]


def test_pth_hook_does_nothing_when_torchvision_imports_normally(site_dir, tmp_path):
    fake = tmp_path / "fake" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '0.0.fake'\n")
    code = script(
        WITH_PTH,
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torchvision
            from tomeplug import torchvision_compat
        assert torchvision.__version__ == "0.0.fake" and torchvision.__file__.startswith({fake!r}), torchvision.__file__
        assert torchvision.__spec__.origin == torchvision.__file__
        assert not torchvision_compat._fallback_active and caught == [], caught
        assert not torchvision_compat._library, "fallback ops registered"
        print("ok")
        """,
    )
    paths = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    result = python(code.format(site_dir=str(site_dir), fake=str(fake)), PYTHONPATH=paths)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_pth_never_breaks_the_interpreter_without_tomeplug(site_dir, tmp_path):
    """No site-packages (-S) and no PYTHONPATH: tomeplug cannot be found, and the .pth stays silent."""
    code = f"""
        import site, sys
        site.addsitedir({str(site_dir)!r})
        assert not any(getattr(f, "is_tomeplug_torchvision_hook", False) for f in sys.meta_path)
        print("ok")
    """
    result = python(code, "-S", cwd=tmp_path, PYTHONPATH=None)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "ok", "")


def test_hook_falls_back_to_a_plain_import_when_tomeplug_is_gone(site_dir, tmp_path):
    fake = tmp_path / "fake" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("VALUE = 7\n")
    code = script(
        WITH_PTH,
        """
        sys.modules["tomeplug.torchvision_compat"] = None  # what a removed tomeplug looks like to the import
        import torchvision
        print(torchvision.VALUE)
        """,
    )
    paths = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    result = python(code.format(site_dir=str(site_dir)), PYTHONPATH=paths)
    assert (result.returncode, result.stdout.strip()) == (0, "7"), result.stderr[-3000:]


def test_hook_can_be_turned_off(site_dir):
    code = f"import site, sys; site.addsitedir({str(site_dir)!r}); print(sys.meta_path[0].__class__.__name__)"
    result = python("import sys; sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "
                    f"'is_tomeplug_torchvision_hook', 0)]; {code}", TOMEPLUG_TORCHVISION_HOOK="0")  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() != "TorchvisionFinder", result.stderr


@pytest.mark.skipif(not HAS_MAKE, reason="make is not installed")
def test_make_installs_the_hook_whenever_it_installs_the_venv():
    """`make -n -B test` prints every recipe `make test` would run on a fresh clone, in order, running none."""
    plan = subprocess.run(["make", "-n", "-B", "test"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    lines = plan.splitlines()
    steps = [
        next(i for i, line in enumerate(lines) if "-m venv" in line),
        next(i for i, line in enumerate(lines) if "pip install -e" in line),
        next(i for i, line in enumerate(lines) if "-m tomeplug._torchvision_hook" in line),
        next(i for i, line in enumerate(lines) if "-m pytest" in line),
    ]
    assert steps == sorted(steps), plan


# Item 6.


def test_cache_folder_does_not_shadow_the_package_for_scripts_in_tmp(tmp_path, monkeypatch):
    monkeypatch.delenv("TOMEPLUG_CACHE", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    default_cache_dir().mkdir(parents=True)
    (tmp_path / "script.py").write_text("import tomeplug\nprint(tomeplug.__file__)\n")
    # as an installed (editable) tomeplug is found: after the script's folder, by a meta-path finder
    done = subprocess.run(
        [sys.executable, "script.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() not in ("", "None") and not done.stdout.startswith(str(tmp_path))


def test_plugin_strategy_without_a_name_says_how_to_set_it(tmp_path):
    with pytest.raises(ValueError, match=r"strategy=plugin needs .*strategy\.name=NAME.*python -m tomeplug list"):
        run_harness(tmp_path, "strategy=plugin")
    assert list(tmp_path.rglob("*.*")) == []


def test_swapped_classes_have_readable_names_and_still_pickle():
    encoder = tiny_sam_encoder()
    tomeplug.patch(encoder, "tome", layers=[0], r=0.5)
    cls = type(encoder.blocks[0].attn)
    assert cls.__name__ == "MergingSamAttention_Attention"
    assert "(attn): MergingSamAttention_Attention(" in str(encoder) and "Swapped_" not in str(encoder)
    assert cls.__qualname__.startswith("Swapped_")  # pickle's key (a fresh process: tests/test_patch_sam.py)
    clone = pickle.loads(pickle.dumps(encoder))
    assert type(clone.blocks[0].attn) is cls


def test_demo_echoes_command_lines_a_shell_runs_as_they_are(tmp_path, monkeypatch, capsys):
    shell = shutil.which("bash")
    if shell is None:
        pytest.skip("bash is not installed")
    ran: list[list[str]] = []
    real_run = subprocess.run

    def record(command, check):
        ran.append(command)
        (tmp_path / "results.md").write_text("| table |\n")

    monkeypatch.setattr(demo.subprocess, "run", record)
    demo.main(["--strategies", "tome", "third party", "--output-dir", str(tmp_path)])
    monkeypatch.setattr(demo.subprocess, "run", real_run)
    echoed = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(echoed) == len(ran) == 2
    for line, command in zip(echoed, ran, strict=True):
        # failglob: an unquoted `layers=[0,2,...]` is a glob that matches nothing, which bash then refuses
        words = real_run([shell, "-O", "failglob", "-c", f'printf "%s\\0" {line}'], capture_output=True, text=True)
        assert words.returncode == 0, words.stderr
        assert words.stdout.split("\0")[:-1] == command


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_encoder_speed_documents_every_option_and_takes_the_harness_model_names():
    parser = load_bench("encoder_speed").build_parser()
    undocumented = [a.option_strings for a in parser._actions if not a.help]
    assert undocumented == []
    model = next(a for a in parser._actions if a.dest == "model")
    harness_models = {p.stem for p in (REPO_ROOT / "eval" / "tomeplug_eval" / "conf" / "model").glob("*.yaml")}
    assert set(model.choices) == harness_models
    assert parser.parse_args(["--model", "sam2.1_hiera_l"]).model == "sam2.1_hiera_l"
    assert parser.parse_args(["--model", "vit_b"]).model == "sam_vit_b"  # the harness's aliases too
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "hiera_l"])


def test_cli_help_is_plain_text():
    done = subprocess.run([sys.executable, "-m", "tomeplug", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "python -m tomeplug list" in done.stdout
    assert not re.search(r"``|:\w+:`", done.stdout), done.stdout


def terminal_rows(stream: str) -> list[str]:
    """The rows a terminal keeps for ``stream`` (text, ``\\r``, ``\\n``, cursor up), above the final cursor."""
    rows, row, col = [""], 0, 0
    for token in re.split(r"(\r|\n|\x1b\[A)", stream):
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
        elif token == "\x1b[A":
            row = max(row - 1, 0)
        elif token:
            rows += [""] * (row + 1 - len(rows))
            line = rows[row].ljust(col)
            rows[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return rows[:row]


def test_terminal_rows_reference():
    assert terminal_rows("a\rb\n\nc\x1b[A\rd\n") == ["b", "d"]


def test_video_progress_bars_leave_no_blank_lines(tmp_path, capsys):
    run_video_harness(tmp_path, "strategy=tome", "flops=false", "progress=true", "dataset.count=2")
    rows = terminal_rows(capsys.readouterr().err)
    assert [row.split(":")[0] for row in rows] == [
        "reference sam2_tiny tome synthetic_video",
        "eval sam2_tiny tome synthetic_video",
    ], rows
