"""Every fenced code block of README.md and CONTRIBUTING.md runs (or is checked) as written; README's numbers.

Each block is claimed by exactly one test through :func:`covers` (a marker: a string only that block holds);
``test_every_block_is_covered`` fails for a block no test claims, so a new block cannot go unrun silently.

- python blocks are exec'd as written in a fresh namespace, in a temporary working directory. A snippet
  that names an official checkpoint runs "with random weights, small": the package's own entry point runs
  unchanged (``sam_model_registry["vit_l"]``, ``build_sam2``), only the architecture it instantiates is
  shrunk to the tests' tiny model with the official size's block layout (:func:`tiny_official_models`),
  and that tiny model's weights are written under the official file name. Inputs a snippet leaves
  undefined come from :data:`PRELUDES`. ``NOT_RUN`` lists the blocks that are checked but cannot run.
- bash blocks: every command runs, rewritten only as :data:`HARNESS_REWRITES` and :data:`DEMO_REWRITES`
  say; :data:`COMMANDS_NOT_RUN` lists those validated instead, with the reason.
- text / toml / tree blocks: what they claim is checked (the example plugin's files, its entry point, the
  columns and rows of the demo's table).

README's measurements (FLOPs shares, speedups, memory, run times) are derived here from their sources,
``bench/RESULTS.md`` and the demo's output block, and must appear in README as derived (:data:`QUOTES`);
``test_every_readme_measurement_is_checked`` fails for a measurement in README's prose that no quote covers.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import itertools
import logging
import os
import re
import runpy
import shlex
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import numpy as np
import plugin_guide
import pytest
import torch
from conftest import builtin_registry
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from omegaconf import open_dict
from PIL import Image
from test_adapter_contract import guide_module
from test_harness import composed
from tiny_models import _randomise, sam2_feat_sizes, tiny_sam

import tomeplug
from tomeplug.registry import use_registry
from tomeplug.torchvision_compat import ensure_torchvision
from tomeplug_eval import demo, run_spec
from tomeplug_eval.architectures import SAM2_POSTPROCESSING, instantiate_sam2, sam2_config, tiny_sam2_config
from tomeplug_eval.data import smoke_dataset
from tomeplug_eval.model_catalog import MODELS, build_model, default_checkpoint
from tomeplug_eval.results import ResultsFile
from tomeplug_eval.schedule_file import read_schedule

ensure_torchvision()  # as tests/conftest.py: the snippets import segment_anything and sam2

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "eval" / "harness.py"
EXAMPLE = ROOT / "examples" / "tomeplug-example-strategy"
DOCS = ("README.md", "CONTRIBUTING.md")


# ---------------------------------------------------------------------------------------------------------
# Blocks and who covers them


class Block(NamedTuple):
    """One fenced code block: its file, first line (the fence), language tag and dedented text."""

    file: str
    line: int
    lang: str
    text: str


FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\S*)\s*$")


def fenced_blocks(name: str) -> list[Block]:
    """Every fenced block of ``name`` (also those indented inside list items), in order."""
    lines = (ROOT / name).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent = len(opening["indent"])
        ends = [j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"]
        assert ends, f"{name}:{i + 1}: a fence that is never closed"
        body = [line[indent:] for line in lines[i + 1 : ends[0]]]
        blocks.append(Block(name, i + 1, opening["lang"], "\n".join(body) + "\n"))
        i = ends[0] + 1
    return blocks


COVERED: dict[tuple[str, str], str] = {}
"""(file, marker) -> the test that runs or checks the one block of ``file`` holding ``marker``."""

NOT_RUN: dict[tuple[str, str], str] = {}
"""Blocks that are checked but cannot run, with the reason."""


def covers(file: str, *markers: str) -> Callable[[Callable], Callable]:
    """Record that the decorated test runs (or checks) the blocks of ``file`` holding ``markers``."""

    def record(test: Callable) -> Callable:
        for marker in markers:
            COVERED[(file, marker)] = test.__name__
        return test

    return record


def block(file: str, marker: str) -> Block:
    """The one block of ``file`` that holds ``marker``."""
    found = [b for b in fenced_blocks(file) if marker in b.text]
    assert len(found) == 1, f"{len(found)} blocks of {file} hold {marker!r}; the marker must name exactly one"
    return found[0]


def run_python(source: Block, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Exec a python block as written (tracebacks name the file and line); its namespace."""
    namespace = {"__name__": f"docs_{Path(source.file).stem.lower()}_{source.line}", **(namespace or {})}
    exec(compile(source.text, f"{source.file}:{source.line + 1}", "exec"), namespace)
    return namespace


def shell_commands(text: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = [re.sub(r"(^|\s)#.*$", "", line).strip() for line in joined.splitlines()]
    return [c for c in commands if c]


def readme_prose() -> str:
    """README.md with its fenced blocks blanked (line numbers kept)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    for b in fenced_blocks("README.md"):
        n = len(b.text.splitlines())
        lines[b.line - 1 : b.line + n + 1] = [""] * (n + 2)
    return "\n".join(lines)


def code_spans(paragraph_start: str) -> list[str]:
    """The inline code spans of the README paragraph that begins with ``paragraph_start``."""
    text = readme_prose()
    start = text.index(paragraph_start)
    end = text.find("\n\n", start)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text[start:end])]


def readme_list(pattern: str) -> list[int]:
    """A block list quoted in README prose, e.g. ``SAM 2.1 Hiera-L blocks `[31, ...]```."""
    found = re.search(pattern + r"\s*`(\[[\d, ]+\])`", readme_prose())
    assert found, f"README no longer quotes {pattern!r}"
    return ast.literal_eval(found[1])


# ---------------------------------------------------------------------------------------------------------
# Official models, small: the package's entry point runs, the architecture it builds is the tiny one


def tiny_sam2_layout_config(config: str, image_size: int = 128) -> Any:
    """The official SAM 2 yaml shrunk as ``tiny_sam2`` does, keeping its Hiera block layout (stages, global
    blocks): e.g. Hiera-L's 48 blocks, so its published schedule applies."""
    cfg = tiny_sam2_config(config, image_size)
    official = sam2_config(config, postprocessing=False).image_encoder.trunk
    cfg.image_encoder.trunk.update(stages=list(official.stages), global_att_blocks=list(official.global_att_blocks))
    return cfg


def tiny_build_sam(encoder_embed_dim, encoder_depth, encoder_num_heads, encoder_global_attn_indexes, checkpoint=None):
    """Stands in for ``segment_anything.build_sam._build_sam``: the tiny SAM with the size's depth and global
    blocks; a checkpoint loads as the official builder loads it (``torch.load``, strict)."""
    sam = tiny_sam(depth=encoder_depth, global_attn_indexes=tuple(encoder_global_attn_indexes))
    if checkpoint is not None:
        with open(checkpoint, "rb") as f:
            sam.load_state_dict(torch.load(f))
    return sam.eval()


def tiny_sam2_model(config: str, target: str | None = None, **fields: Any) -> torch.nn.Module:
    """Stands in for the harness's builder of an official SAM 2 model (``architectures.sam2_model``)."""
    cfg = tiny_sam2_layout_config(config)
    cfg.sam_mask_decoder_extra_args = dict(SAM2_POSTPROCESSING)
    if target is not None:
        cfg._target_ = target
    cfg.update(fields)
    return instantiate_sam2(cfg)


@contextlib.contextmanager
def tiny_official_models() -> Iterator[None]:
    """Official SAM / SAM 2 entry points build tiny models of the same layout while this is active."""
    sam_builders = importlib.import_module("segment_anything.build_sam")  # the package's name is a function
    sam2_builders = importlib.import_module("sam2.build_sam")
    real_compose = sam2_builders.compose

    def tiny_compose(config_name: str, overrides: Sequence[str] = ()) -> Any:
        cfg = real_compose(config_name=config_name, overrides=list(overrides))  # the name must exist
        model = tiny_sam2_layout_config(config_name.removeprefix("configs/"))
        model.sam_mask_decoder_extra_args = cfg.model.get("sam_mask_decoder_extra_args")
        with open_dict(cfg):
            cfg.model = model
        return cfg

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sam_builders, "_build_sam", tiny_build_sam)
        mp.setattr(sam2_builders, "compose", tiny_compose)
        for name, spec in MODELS.items():
            if spec.family == "sam2" and spec.source.endswith(".yaml"):
                mp.setitem(MODELS, name, attrs.evolve(spec, build=partial(tiny_sam2_model, spec.source)))
        yield


@contextlib.contextmanager
def sam2_hydra() -> Iterator[None]:
    """Hydra's global state as ``import sam2`` sets it (``build_sam2`` composes from it); restored after."""
    from hydra import initialize_config_module

    state = Singleton.get_state()
    GlobalHydra.instance().clear()
    try:
        initialize_config_module("sam2", version_base="1.2")
        yield
    finally:
        Singleton.set_state(state)


def write_checkpoint(path: Path, model: torch.nn.Module, key: str | None = None) -> dict[str, torch.Tensor]:
    """Give ``model`` other random weights (seed 1) and save them at ``path`` (under ``key``); the weights."""
    state = _randomise(model, seed=1).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state if key is None else {key: state}, path)
    return state


def same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``model`` holds exactly ``state``."""
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_tiny_official_models_keep_the_official_block_layout():
    from segment_anything import sam_model_registry

    with tiny_official_models():
        sam = sam_model_registry["vit_l"]()
        hiera = build_model("sam2.1_hiera_l").image_encoder.trunk
    assert len(sam.image_encoder.blocks) == 24
    assert [i for i, b in enumerate(sam.image_encoder.blocks) if b.window_size == 0] == [5, 11, 17, 23]
    assert len(hiera.blocks) == 48 and [i for i, b in enumerate(hiera.blocks) if b.window_size == 0] == [23, 33, 43]
    assert sum(p.numel() for p in sam.parameters()) < 2e6  # tiny


# ---------------------------------------------------------------------------------------------------------
# The harness and the demo, in this process


@contextlib.contextmanager
def harness_state() -> Iterator[None]:
    """Restore what a hydra app changes in its process: argv, hydra's global state, the root logger."""
    argv, state = sys.argv, Singleton.get_state()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HYDRA_FULL_ERROR", "1")  # the error itself, not hydra's summary
            yield
    finally:
        sys.argv = argv
        Singleton.set_state(state)
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def run_harness(args: Sequence[str]) -> None:
    """``python eval/harness.py ARGS`` in this process, from the current directory."""
    with harness_state():
        sys.argv = [str(HARNESS), *args]
        runpy.run_path(str(HARNESS), run_name="__main__")


HARNESS_REWRITES = {
    "data_root": "a temporary folder holding generated items in the layout README documents",
}
"""Overrides of a README harness command replaced here, and by what. Every other word runs as written."""
HARNESS_APPENDED = ("limit=1", "progress=false")
"""Appended to every README harness command: one item per dataset, no progress bars."""
HARNESS_HOW = (
    "`python eval/harness.py` runs in this process, from a temporary working directory (so `checkpoint=checkpoints`"
    " and the default `output_dir=outputs/eval` resolve there); official models are tiny (tiny_official_models)"
)
DEMO_REWRITES = ("--model", "sam_tiny", "--depth", "4", "--limit", "1", "progress=false")
"""Appended to the demo's command line (a tiny model, its 4 blocks, one item per dataset); its harness sweeps
run in this process instead of a subprocess each (the same command lines)."""

COMMANDS_NOT_RUN = {
    "make test": "runs the whole suite, this file included (recursion, many minutes): `make -n` checks it runs pytest",
    "torchrun --nproc_per_node 8": (
        "8 processes of a full sweep are too slow here, and `...` elides overrides: torchrun's own parser checks"
        " its options, and every job of the sweep is composed by hydra (each group value and key exists) and"
        " resolved and tried on its (tiny) model as the harness does first; tests/test_distributed.py runs"
        " two torchrun processes against one"
    ),
}
"""Commands of README's bash blocks that are validated instead of run, with the reason."""


def harness_args(command: str, data_root: Path | None = None) -> list[str]:
    """The arguments of a README ``python eval/harness.py ...`` command, rewritten as HARNESS_REWRITES says."""
    words = shlex.split(command)
    assert words[:2] == ["python", "eval/harness.py"], f"not a harness command: {command}"
    args = []
    for word in words[2:]:
        key = word.partition("=")[0]
        if key in HARNESS_REWRITES:
            assert data_root is not None, f"{command}: {key} needs generated data"
            word = f"{key}={data_root}"
        args.append(word)
    return [*args, *HARNESS_APPENDED]


def sweep_jobs(args: Sequence[str]) -> list[list[str]]:
    """The jobs of a hydra multirun over ``args``: one override list per combination of swept values."""
    overrides = OverridesParser.create().parse_overrides([a for a in args if a != "-m"])
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        for o in overrides
    ]
    return [list(job) for job in itertools.product(*choices)]


def make_recipe(target: str) -> list[str]:
    """The command ``make TARGET`` runs once ``.venv`` is installed (``make -n``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under `make test`
    command = ["make", "-n", "--no-print-directory", "-o", ".venv/.installed", target]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    (line,) = [line for line in done.stdout.splitlines() if line.strip()]
    return shlex.split(line)


def run_demo(argv: Sequence[str]) -> str:
    """``python -m tomeplug_eval.demo ARGV`` with its harness sweeps in this process; the console output."""

    def in_process(command: list[str], check: bool = True) -> subprocess.CompletedProcess:
        assert command[:3] == [sys.executable, "-m", "tomeplug_eval.harness"], command
        run_harness(command[3:])
        return subprocess.CompletedProcess(command, 0)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(demo, "subprocess", types.SimpleNamespace(run=in_process))
        demo.main(list(argv))
    return out.getvalue()


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> str:
    """README's `make demo`, run as :func:`test_setup_commands` documents: the console output."""
    recipe = make_recipe("demo")
    assert recipe[:3] == [".venv/bin/python", "-m", "tomeplug_eval.demo"], recipe
    with contextlib.chdir(tmp_path_factory.mktemp("demo")), use_registry(builtin_registry()):
        return run_demo([*recipe[3:], *DEMO_REWRITES])


def markdown_table(lines: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows (as dicts) of a markdown table's lines."""
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    header, rows = cells[0], [c for c in cells[1:] if not set("".join(c)) <= set("-: ")]
    return header, [dict(zip(header, row, strict=True)) for row in rows]


# ---------------------------------------------------------------------------------------------------------
# Generated data in README's documented layouts


def brace_expand(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``a/{b,c/{d,e}}`` -> ``a/b``, ``a/c/d``, ``a/c/e``."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, parts, last = 0, [], start + 1
    for i in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[i], 0)
        if pattern[i] == "," and depth == 1:
            parts.append(pattern[last:i])
            last = i + 1
        if depth == 0:
            parts.append(pattern[last:i])
            head, tail = pattern[:start], pattern[i + 1 :]
            return [e for p in parts for e in brace_expand(head + p.strip() + tail)]
    raise ValueError(f"unbalanced braces in {pattern!r}")


def write_hqsam_layout(root: Path) -> list[tuple[str, str]]:
    """One image and its mask in every (images, masks) folder pair README lists for HQ-SAM's data root."""
    spans = code_spans("Datasets: `data_root` is")
    folders = [f for span in spans if "{" in span for f in brace_expand(span.replace(" ", ""))]
    assert "<stem>.jpg" in spans and "<stem>.png" in spans and len(folders) % 2 == 0, spans
    pairs = list(zip(folders[::2], folders[1::2], strict=True))
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 48), np.uint8)
    mask[8:30, 10:36] = 255
    for images, masks in pairs:
        (root / images).mkdir(parents=True)
        (root / masks).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / images / "item.jpg")
        Image.fromarray(mask).save(root / masks / "item.png")
    return pairs


def write_davis_layout(root: Path, sequence: str = "blob", frames: int = 4) -> None:
    """One sequence in README's DAVIS 2017 layout: jpg frames, palette PNGs of object ids, the split list."""
    spans = code_spans("`data_root` holds DAVIS 2017's")
    (images,) = [s for s in spans if s.endswith("*.jpg")]
    (annotations,) = [s for s in spans if s.endswith("*.png")]
    (split,) = [s for s in spans if s.endswith(".txt")]
    rng = np.random.default_rng(0)
    palette = [0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * (768 - 9)
    for t in range(frames):
        ids = np.zeros((24, 32), np.uint8)
        ids[4:14, 3 + t : 13 + t] = 1
        ids[15:22, 18:28] = 2
        frame = (root / images.replace("<seq>", sequence)).with_name(f"{t:05d}.jpg")
        annotation = (root / annotations.replace("<seq>", sequence)).with_name(f"{t:05d}.png")
        for path in (frame, annotation):
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(frame)
        png = Image.new("P", (ids.shape[1], ids.shape[0]))
        png.putpalette(palette)
        png.putdata(ids.ravel().tolist())
        png.save(annotation)
    (root / split).parent.mkdir(parents=True, exist_ok=True)
    (root / split).write_text(f"{sequence}\n")


def test_brace_expand():
    assert brace_expand("a/{b,c/{d,e}_x}") == ["a/b", "a/c/d_x", "a/c/e_x"]


# ---------------------------------------------------------------------------------------------------------
# README


PRELUDES: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
    ("README.md", "sam_model_registry["): lambda: {
        "image": np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8),  # an RGB photo
        "box": np.array([8, 6, 44, 34]),  # x0, y0, x1, y1 inside it
    },
    ("README.md", "from tomeplug_eval import tune"): lambda: {
        "images": [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(2)],
    },
}
"""Inputs a snippet uses but does not define, per block (file, marker)."""


@covers("README.md", "make demo   #")
def test_setup_commands(tiny_demo):
    """`make demo` runs the demo (rewritten as DEMO_REWRITES says); `make test` is checked, not run."""
    commands = shell_commands(block("README.md", "make demo   #").text)
    assert commands == ["make demo", "make test"], "a new setup command: run or list it here"
    assert make_recipe("test")[:4] == [".venv/bin/python", "-m", "pytest", "-q"], COMMANDS_NOT_RUN["make test"]
    # make demo: "the evaluation harness on SAM ViT-B, synthetic + real images, none vs. every strategy"
    defaults = demo.parse_args([])
    assert (defaults.model, defaults.datasets) == ("sam_vit_b", ["synthetic", "smoke"])
    _, rows = markdown_table(tiny_demo.splitlines())
    expected = [(s, d) for s in ["none", *tomeplug.list_strategies()] for d in defaults.datasets]
    assert [(r["strategy"], r["dataset"]) for r in rows] == expected
    assert "Full results:" in tiny_demo


@covers("README.md", "sam_model_registry[")
def test_usage_snippet(tmp_path, monkeypatch):
    """The Usage snippet as written, on a tiny ViT-L-shaped SAM loaded from `sam_vit_l_0b3195.pth`."""
    from segment_anything import SamPredictor, sam_model_registry

    source = block("README.md", "sam_model_registry[")
    checkpoint = re.search(r'checkpoint="([^"]+)"', source.text)[1]
    monkeypatch.chdir(tmp_path)
    with tiny_official_models():
        state = write_checkpoint(tmp_path / checkpoint, sam_model_registry["vit_l"]())
        ns = run_python(source, PRELUDES[("README.md", "sam_model_registry[")]())
        reference = sam_model_registry["vit_l"](checkpoint=checkpoint)  # never patched
    sam, handle, masks = ns["sam"], ns["handle"], ns["masks"]
    assert same_weights(reference, state) and same_weights(sam, state)
    paper = ast.literal_eval(re.search(r"# blocks (\[[\d, ]+\])", source.text)[1])
    assert sorted(handle.to_dict()["layers"]) == paper == readme_list(r"SAM /\s+HQ-SAM ViT-L blocks")
    assert masks.shape == (1, *ns["image"].shape[:2]) and masks.dtype == bool
    unpatched = SamPredictor(reference)
    unpatched.set_image(ns["image"])
    assert not torch.equal(ns["predictor"].features, unpatched.features)  # it ran on merged tokens
    assert tomeplug.active_patch(sam) is None  # handle.remove(): bit-identical again
    ns["predictor"].set_image(ns["image"])
    assert torch.equal(ns["predictor"].features, unpatched.features)


@covers("README.md", "build_sam2(")
def test_sam2_snippet(tmp_path, monkeypatch):
    """The SAM 2 snippet as written, on a tiny Hiera-L-shaped SAM 2.1 loaded from `sam2.1_hiera_large.pt`."""
    source = block("README.md", "build_sam2(")
    config, checkpoint = re.search(r'build_sam2\("([^"]+)", "([^"]+)"', source.text).groups()
    monkeypatch.chdir(tmp_path)
    with tiny_official_models(), sam2_hydra():
        state = write_checkpoint(tmp_path / checkpoint, tiny_sam2_model(config.removeprefix("configs/")), "model")
        ns = run_python(source)
    model, predictor = ns["sam2"], ns["predictor"]
    assert same_weights(model, state) and predictor.model is model
    handle = tomeplug.active_patch(model)
    assert handle is not None and sorted(handle.to_dict()["layers"]) == list(range(48))  # every block
    assert {s["scope"] for s in handle.to_dict()["layers"].values()} == {"span"}
    predictor._bb_feat_sizes = sam2_feat_sizes(128)  # the tiny model's 128-pixel input, not 1024
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    predictor.set_image(image)
    masks, _, _ = predictor.predict(box=np.array([8, 6, 44, 34]), multimask_output=False)
    assert masks.shape == (1, 48, 64)


@covers("README.md", "from tomeplug_eval import tune")
def test_tune_snippet(tmp_path, monkeypatch):
    """The tune snippet as written, on a tiny ViT-B-shaped SAM loaded from `sam_vit_b_01ec64.pth`."""
    from segment_anything import build_sam_vit_b

    source = block("README.md", "from tomeplug_eval import tune")
    checkpoint = re.search(r'checkpoint="([^"]+)"', source.text)[1]
    monkeypatch.chdir(tmp_path)
    with tiny_official_models():
        state = write_checkpoint(tmp_path / checkpoint, build_sam_vit_b())
        ns = run_python(source, PRELUDES[("README.md", "from tomeplug_eval import tune")]())
    sam, schedule, report = ns["sam"], ns["schedule"], ns["report"]
    assert same_weights(sam, state) and report.final.flops_ratio <= 0.8
    assert {s["r"] for s in schedule.values()} <= {0.25, 0.5} and len(report.rows) == 12 * 2  # ViT-B: 12 blocks
    handle = tomeplug.active_patch(sam)
    assert handle is not None and list(handle.schedule) == list(schedule)
    assert (tmp_path / "tune.png").is_file() and any((tmp_path / "tune-cache").glob("*.json"))


@covers("README.md", "SamModel.from_pretrained(")
def test_transformers_snippet(tmp_path, monkeypatch):
    """The transformers snippet as written; the hub id resolves to a folder holding a tiny SamModel and its
    processor (no hub access), as ``from_pretrained`` resolves a downloaded one."""
    from transformers import SamModel, SamProcessor

    from tomeplug_eval.hf_architectures import hf_sam
    from tomeplug_eval.hf_segmenters import hf_processor

    source = block("README.md", "SamModel.from_pretrained(")
    repo = re.search(r'SamModel\.from_pretrained\("([^"]+)"\)', source.text)[1]
    folder = tmp_path / repo
    torch.manual_seed(0)
    hf_sam(tiny=True).save_pretrained(folder)
    hf_processor("hf_sam", 256).save_pretrained(folder)
    for cls in (SamModel, SamProcessor):
        load = cls.from_pretrained.__func__
        monkeypatch.setattr(
            cls, "from_pretrained", classmethod(lambda c, name, _load=load, **kw: _load(c, folder, **kw))
        )
    ns = run_python(source, PRELUDES[("README.md", "sam_model_registry[")]())
    model, inputs, masks = ns["model"], ns["inputs"], ns["masks"]
    assert masks[0].shape == (1, 1, *ns["image"].shape[:2]) and masks[0].dtype == torch.bool
    assert tomeplug.active_patch(model) is None  # handle.remove()
    with torch.no_grad():
        dense = model(**inputs, multimask_output=False).pred_masks
        tomeplug.patch(model, "tome", r=0.5, scope="span")
        merged = model(**inputs, multimask_output=False).pred_masks
    assert torch.equal(ns["outputs"].pred_masks, merged) and not torch.equal(dense, merged)  # it ran merged


@covers("README.md", 'SAM("sam2.1_b.pt")')
def test_ultralytics_snippet(tmp_path, monkeypatch):
    """The Ultralytics snippet as written, in a folder holding `sam2.1_b.pt` (a tiny SAM 2 of Ultralytics' own
    builder, the name mapped to it as Ultralytics maps names to builders) and `photo.jpg`."""
    from tiny_ultralytics import tiny_sam2
    from ultralytics.models.sam import build

    source = block("README.md", 'SAM("sam2.1_b.pt")')
    monkeypatch.chdir(tmp_path)
    torch.save({"model": tiny_sam2().state_dict()}, tmp_path / "sam2.1_b.pt")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save("photo.jpg")

    def tiny_builder(checkpoint: str) -> torch.nn.Module:
        return build._load_checkpoint(tiny_sam2(seed=1), checkpoint)  # Ultralytics' own loader

    monkeypatch.setitem(build.sam_model_map, "sam2.1_b.pt", tiny_builder)
    ns = run_python(source)
    sam, masks = ns["sam"], ns["masks"]
    assert masks.shape == (1, 48, 64) and masks.dtype == torch.bool
    assert tomeplug.get_registry().adapter_for(sam.model).name == "ultralytics_sam2_hiera"
    assert {s["scope"] for s in tomeplug.active_patch(sam.model).to_dict()["layers"].values()} == {"span"}


TUNE_APPENDED = ("--no-progress",)
"""Appended to README's tune command (no progress bars); it runs in this process (``tomeplug_eval.tune.main``)
from a temporary working directory holding the official checkpoint (tiny) and a folder of generated images."""


@covers("README.md", "python -m tomeplug_eval.tune --model")
def test_tune_commands(tmp_path, monkeypatch):
    """README's tune command, then the harness on the schedule file it wrote (HARNESS_HOW)."""
    import tomeplug_eval.tune

    tune_command, harness_command = shell_commands(block("README.md", "python -m tomeplug_eval.tune --model").text)
    words = shlex.split(tune_command)
    assert words[:3] == ["python", "-m", "tomeplug_eval.tune"]
    option = dict(zip(words[3::2], words[4::2], strict=True))
    folder = tmp_path / option["--images"]
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(int(option["--limit"]) + int(option["--holdout"])):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    monkeypatch.chdir(tmp_path)
    with tiny_official_models():
        write_checkpoint(tmp_path / "checkpoints" / MODELS["sam_vit_b"].checkpoint, build_model("sam_vit_b"))
        report = tomeplug_eval.tune.main([*words[3:], *TUNE_APPENDED])
        write_hqsam_layout(tmp_path / "data")
        args, found = run_readme_command(harness_command, tmp_path, monkeypatch, data_root=tmp_path / "data")
    schedule = read_schedule(tmp_path / option["--out"])
    assert schedule == report.schedule and report.final.flops_ratio <= 0.8 and report.validation is not None
    assert (tmp_path / option["--out"]).with_suffix(".md").read_text() == report.to_markdown()
    assert {r["weights"] for r in found} == {"checkpoint"} and {r["strategy"] for r in found} == {"none", "mix"}
    (mixed,) = [r for r in found if r["strategy"] == "mix"]
    assert {int(b): s["r"] for b, s in mixed["blocks"]["layers"].items()} == {b: s["r"] for b, s in schedule.items()}


def validate_torchrun(command: str) -> None:
    """What COMMANDS_NOT_RUN says for ``torchrun``: its options parse, and every job composes and resolves."""
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(shlex.split(command)[1:])
    assert int(parsed.nproc_per_node) > 1 and parsed.training_script == "eval/harness.py"
    args = [a for a in parsed.training_script_args if a != "..."]  # `...`: the reader's further overrides
    for job in sweep_jobs(args):
        with composed(*job) as cfg:
            spec = run_spec.resolve(cfg, "cpu")
        spec.check(build_model(spec.model, spec.checkpoint))


def records(cwd: Path) -> list[dict[str, Any]]:
    """The records a README command wrote under the default ``output_dir`` (outputs/eval) of ``cwd``."""
    out = cwd / "outputs" / "eval"
    assert {"results.jsonl", "results.csv", "results.md", "results.png"} <= {p.name for p in out.iterdir()}
    return ResultsFile(out).records()


def run_readme_command(
    command: str, cwd: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """A README harness command run from ``cwd`` as HARNESS_HOW says: its arguments and the records it wrote."""
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    args = harness_args(command, data_root)
    run_harness(args)
    return args, records(cwd)


def swept(args: Sequence[str], key: str) -> set[str]:
    """The values ``key`` takes in the jobs of ``args``."""
    return {o.partition("=")[2] for job in sweep_jobs(args) for o in job if o.partition("=")[0] == key}


@covers("README.md", "torchrun --nproc_per_node 8")
def test_evaluation_commands(tmp_path, monkeypatch):
    """README's three harness commands: the published protocol and its built-in-data twin run (HARNESS_HOW);
    the torchrun line is validated (COMMANDS_NOT_RUN)."""
    published, builtin, scale_out = shell_commands(block("README.md", "torchrun --nproc_per_node 8").text)
    paper = readme_list(r"SAM /\s+HQ-SAM ViT-L blocks")
    with tiny_official_models():
        # 1. the published protocol: the official checkpoint in checkpoints/, HQ-SAM's four sets in data_root
        cwd = tmp_path / "published"
        write_hqsam_layout(cwd / "data")
        write_checkpoint(cwd / "checkpoints" / MODELS["sam_vit_l"].checkpoint, build_model("sam_vit_l"))
        args, found = run_readme_command(published, cwd, monkeypatch, data_root=cwd / "data")
        assert sorted((r["strategy"], r["dataset"]) for r in found) == sorted(
            itertools.product(swept(args, "strategy"), swept(args, "dataset"))
        )
        assert {r["weights"] for r in found} == {"checkpoint"} and {r["model"] for r in found} == {"sam_vit_l"}
        assert all(sorted(map(int, r["blocks"]["layers"])) == paper for r in found if r["strategy"] != "none")
        # 2. the same on the built-in data: no checkpoints/ here, so random weights
        args, found = run_readme_command(builtin, tmp_path / "builtin", monkeypatch)
        assert len(found) == len(sweep_jobs(args)) and {r["weights"] for r in found} == {"random"}
        assert {r["dataset"] for r in found} == {"synthetic", "smoke"}
        # 3. scale-out: validated (COMMANDS_NOT_RUN)
        assert scale_out.startswith("torchrun --nproc_per_node 8 ")
        validate_torchrun(scale_out)


@covers("README.md", "dataset=davis")
def test_video_commands(tmp_path, monkeypatch):
    """README's video commands: DAVIS with the official SAM 2.1 Hiera-L checkpoint (tiny, generated data in
    README's DAVIS layout) and the built-in synthetic_video on sam2_tiny, as HARNESS_HOW says."""
    davis, synthetic = shell_commands(block("README.md", "dataset=davis").text)
    with tiny_official_models():
        cwd = tmp_path / "davis"
        write_davis_layout(cwd / "DAVIS")
        write_checkpoint(
            cwd / "checkpoints" / MODELS["sam2.1_hiera_l"].checkpoint, build_model("sam2.1_hiera_l"), "model"
        )
        _, (record,) = run_readme_command(davis, cwd, monkeypatch, data_root=cwd / "DAVIS")
        assert (record["task"], record["weights"], record["strategy"]) == ("video", "checkpoint", "tome")
        assert sorted(map(int, record["blocks"]["layers"])) == readme_list(r"SAM 2.1 Hiera-L blocks")
        assert len(list((cwd / "outputs" / "eval" / "predictions").glob("*/blob/*.png"))) == 4  # DAVIS layout
    _, found = run_readme_command(synthetic, tmp_path / "synthetic", monkeypatch)
    assert [(r["strategy"], r["dataset"], r["task"]) for r in found] == [
        ("none", "synthetic_video", "video"),
        ("tome", "synthetic_video", "video"),
    ]


DEMO_BLOCK_STALE: dict[str, str] = {}
"""Where README's demo output block is known to differ from what the current code prints: rerun `make demo`
and paste its output, then empty this (the test fails once an entry no longer holds)."""


def demo_block() -> tuple[list[str], list[str], list[dict[str, str]]]:
    """README's demo output block: its console lines before the table, the table's header and rows."""
    lines = block("README.md", "[tomeplug] !!! ").text.splitlines()
    header, rows = markdown_table(lines)
    return [line for line in lines if not line.startswith("|")], header, rows


def number(cell: str) -> float:
    """A table cell as a number (``1.00x`` -> 1.0)."""
    return float(cell.rstrip("x×").replace("**", ""))


@covers("README.md", "[tomeplug] !!! ")
def test_demo_output_block(tiny_demo):
    """README's demo output is what the demo prints: its warning, the harness's columns, a row per strategy
    and dataset on the scaled schedule, and numbers consistent with each other and with bench/RESULTS.md."""
    console, header, rows = demo_block()
    defaults = demo.parse_args([])
    # the loud line: as the harness says it for sam_vit_b without its checkpoint
    said = next(line for line in tiny_demo.splitlines() if line.startswith("[tomeplug] !!! sam_tiny: "))
    expected = re.sub(r"\(.*?\)", f"(no checkpoint at {default_checkpoint('sam_vit_b')})", said, count=1)
    assert console == [expected.replace("sam_tiny", defaults.model), "..."]
    # the columns the harness writes (today's tiny demo), less those known stale
    tiny_header, tiny_rows = markdown_table(tiny_demo.splitlines())
    stale = [c for c in tiny_header if c in DEMO_BLOCK_STALE]
    assert not set(stale) & set(header), "the block is refreshed: remove its entries from DEMO_BLOCK_STALE"
    assert header == [c for c in tiny_header if c not in stale]
    # a row per strategy and dataset, in the demo's order, on the paper schedule scaled to ViT-B
    assert [(r["strategy"], r["dataset"]) for r in rows] == [(r["strategy"], r["dataset"]) for r in tiny_rows]
    schedule = str(demo.default_layers(12))
    assert f"(`{schedule}`: the four global blocks" in normalised(readme_prose())
    assert {r["schedule"] for r in rows if r["strategy"] != "none"} == {schedule}
    assert {(r["model"], r["weights"]) for r in rows} == {(defaults.model, "random")}
    images = {"synthetic": defaults.limit, "smoke": min(defaults.limit, len(smoke_dataset()))}
    assert all(int(r["images"]) == images[r["dataset"]] for r in rows)
    # its numbers agree with each other: FLOPs = GFLOPs / dense, speedup = none's ms/img / ms/img
    dense = {r["dataset"]: r for r in rows if r["strategy"] == "none"}
    for r in rows:
        base = dense[r["dataset"]]
        assert number(r["FLOPs"]) == pytest.approx(number(r["GFLOPs"]) / number(base["GFLOPs"]), abs=6e-4), r
        assert number(r["speedup"]) == pytest.approx(number(base["ms/img"]) / number(r["ms/img"]), abs=6e-3), r
    # and with bench/RESULTS.md's ViT-B row (same encoder, schedule, strategy and r)
    vit_b = results_row("ViT-B", "fp32", "attn")
    assert vit_b["blocks merged"].endswith(",".join(map(str, demo.default_layers(12))))
    assert {number(r["GFLOPs"]) for r in dense.values()} == {gflops(vit_b)[0]}
    tome = {number(r["GFLOPs"]) for r in rows if r["strategy"] == "tome"}
    if "tome GFLOPs" in DEMO_BLOCK_STALE:
        assert tome != {gflops(vit_b)[1]}, "tome's GFLOPs are current: remove 'tome GFLOPs' from DEMO_BLOCK_STALE"
    else:
        assert tome == {gflops(vit_b)[1]}, "the block's tome GFLOPs differ from bench/RESULTS.md's ViT-B row"


# ---------------------------------------------------------------------------------------------------------
# CONTRIBUTING


GUIDE_MARKERS = {
    "pyproject.toml": "[build-system]",
    "tomeplug_example_strategy/__init__.py": '"""An example tomeplug strategy plugin',
    "tomeplug_example_strategy/pool2x2.py": "class Pool2x2Config(StrategyConfig)",
    "tomeplug_example_strategy/plugin.py": "def tomeplug_register_strategies",
    "tests/test_pool2x2.py": "def test_conforms",
}
"""A marker of each file the strategy guide shows whole."""


@covers("CONTRIBUTING.md", "tomeplug-example-strategy/\n", 'pip install ".[test]"', *GUIDE_MARKERS.values())
def test_strategy_guide_blocks():
    """The strategy guide's blocks are the files of its package, whole (tests/plugin_guide.py reads them;
    tests/test_example_plugin.py assembles the package from them, installs it with pip as step 5 says and
    runs its tests, and checks it is the example file for file); the tree lists exactly those files; the
    shell steps are the ones that test performs."""
    shown = plugin_guide.guide_files()
    assert set(shown) == set(GUIDE_MARKERS)
    for path, marker in GUIDE_MARKERS.items():
        assert block("CONTRIBUTING.md", marker).text == shown[path], path
    tree = block("CONTRIBUTING.md", "tomeplug-example-strategy/\n").text.splitlines()
    assert tree[0] == f"{EXAMPLE.name}/"
    assert {line.split("#")[0].strip() for line in tree[1:] if line.strip()} == set(shown)
    commands = shell_commands(block("CONTRIBUTING.md", 'pip install ".[test]"').text)
    assert commands == [
        f"cd {EXAMPLE.name}",
        'pip install ".[test]"',
        "python -m pytest tests",
        "python -m tomeplug list",
    ]


@covers("CONTRIBUTING.md", "class GridViT(nn.Module)", "class GridViTAdapter")
def test_adapter_guide_blocks(registry):
    """The adapter guide's two blocks, run as one module (tests/test_adapter_contract.py also runs
    ``check_adapter`` on it with every strategy): "then ``tomeplug.patch(GridViT().eval(), "tome", r=0.3)``
    merges in every block"."""
    section = (ROOT / "CONTRIBUTING.md").read_text().split("## Add an adapter")[1].split("\n## ")[0]
    guide_blocks = [b for b in fenced_blocks("CONTRIBUTING.md") if b.lang == "python" and b.text in section]
    assert [b.text for b in guide_blocks] == [
        block("CONTRIBUTING.md", m).text for m in ("class GridViT(nn.Module)", "class GridViTAdapter")
    ]
    module = guide_module()
    try:
        registry.register_plugin(module, "contributing_adapter_guide")
        model = module.GridViT().eval()
        image = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            dense = model(image)
            with tomeplug.patch(model, "tome", r=0.3) as handle:
                merged = model(image)
                assert handle.adapter == "grid_vit"
                assert all(isinstance(b.attn, module.MergingGridAttention) for b in model.blocks)
            assert merged.shape == dense.shape and not torch.equal(merged, dense)
            assert torch.equal(model(image), dense)
    finally:
        del sys.modules[module.__name__]


def test_every_block_is_covered():
    """Every fenced block is claimed by exactly one test, every marker names one block, and the blocks
    checked but not run are covered too."""
    blocks = [b for name in DOCS for b in fenced_blocks(name)]
    for b in blocks:
        claims = [test for (file, marker), test in COVERED.items() if file == b.file and marker in b.text]
        assert len(claims) >= 1, f"{b.file}:{b.line} ({b.lang or 'text'}): a block no test runs; run it here"
        assert len(set(claims)) == 1, f"{b.file}:{b.line} is claimed by {claims}"
    for (file, marker), test in COVERED.items():
        assert sum(b.file == file and marker in b.text for b in blocks) == 1, f"{test}: {marker!r} in {file}"
    assert set(NOT_RUN) <= set(COVERED)
    bash = [c for b in blocks if b.lang == "bash" for c in shell_commands(b.text)]
    for prefix in COMMANDS_NOT_RUN:
        assert sum(c.startswith(prefix) for c in bash) == 1, f"COMMANDS_NOT_RUN names no command: {prefix!r}"


# ---------------------------------------------------------------------------------------------------------
# README's measurements and their sources


def results_rows() -> list[dict[str, str]]:
    """bench/RESULTS.md's results table, one dict per row."""
    text = (ROOT / "bench" / "RESULTS.md").read_text()
    table = text[text.index("| model | dtype | scope |") :].split("\n\n")[0]
    return markdown_table(table.splitlines())[1]


def results_row(model: str, dtype: str, scope: str) -> dict[str, str]:
    """The one bench/RESULTS.md row of ``model``, ``dtype`` and ``scope``."""
    (row,) = [r for r in results_rows() if (r["model"], r["dtype"], r["scope"]) == (model, dtype, scope)]
    return row


def gflops(row: dict[str, str]) -> tuple[float, float]:
    """A bench/RESULTS.md row's dense and patched GFLOPs (``486.4 → 370.2``)."""
    dense, patched = row["GFLOPs dense → patched"].split("→")
    return float(dense), float(patched)


def share_saved(model: str) -> str:
    """The share of the encoder's FLOPs the published (attn) schedule saves, in percent."""
    dense, patched = gflops(results_row(model, "fp32", "attn"))
    return f"{100 * (1 - patched / dense):.1f}"


def span(values: Sequence[float], fmt: str) -> str:
    """``low-high`` of ``values``, each formatted with ``fmt``."""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def demo_values() -> dict[str, str]:
    """The figures README quotes from its demo output block."""
    _, _, rows = demo_block()
    merged = [r for r in rows if r["strategy"] != "none"]
    registry = builtin_registry()
    cells = [r for r in merged if issubclass(registry.strategy(r["strategy"]), tomeplug.CellStrategyConfig)]
    return {
        "forwards": str(sum(int(r["images"]) for r in rows)),
        "minutes": f"{sum(number(r['ms/img']) * int(r['images']) for r in rows) / 60000:.1f}",
        "traces": str(len({r["strategy"] for r in rows})),
        "flops_removed": span([100 * (1 - number(r["FLOPs"])) for r in merged], "{:.1f}"),
        "tome_pitome_fid": span(
            [number(r["fid. IoU"]) for r in merged if r["strategy"] in ("tome", "pitome")], "{:.1f}"
        ),
        "cell_fid": span([number(r["fid. IoU"]) for r in cells], "{:.0f}"),
        "dense_mb": span([number(r["peak MB"]) for r in rows if r["strategy"] == "none"], "{:.0f}"),
        "merged_mb": span([number(r["peak MB"]) for r in merged], "{:.0f}"),
        "peak_ratio": span([number(r["peak ×"]) for r in merged], "{:.2f}"),
    }


def bench_values() -> dict[str, str]:
    """The figures README quotes from bench/RESULTS.md."""
    vit_b = results_row("ViT-B", "fp32", "attn")
    return {
        "vit_l_saved": share_saved("ViT-L"),
        "hiera_l_saved": share_saved("Hiera-L"),
        "vit_b_dense_s": vit_b["dense s"],
        "vit_b_tome_s": vit_b["patched s"],
        "vit_b_speedup": vit_b["speedup"].strip("*×"),
    }


QUOTES = (
    "saves {vit_l_saved}% of SAM ViT-L's encoder FLOPs and {hiera_l_saved}% of SAM 2.1 Hiera-L's",
    "its {forwards} timed encoder forwards took {minutes} minutes in all",
    "`bench/RESULTS.md` timed a dense ViT-B forward at {vit_b_dense_s} s and a ToMe one at {vit_b_tome_s} s",
    "add {traces} FLOP traces",
    "the schedule removes {flops_removed}% of the encoder's FLOPs",
    "PiToMe and ToMe keep {tome_pitome_fid}% mask IoU with the unmerged model",
    "the 2×2-cell strategies keep {cell_fid}%",
    "dominate peak memory ({dense_mb} MB dense vs. {merged_mb} MB merged)",
    "cuts the peak several-fold (the demo below: {peak_ratio}×)",
    "measured {vit_b_speedup}x",
)
"""README's sentences that quote a measurement, with the figure's name in its source (demo_values,
bench_values). Whitespace is normalised before matching."""

NOT_MEASUREMENTS = {
    "band: 2% of the image diagonal": "boundary_dilation's default, a setting",
    "sampled every 2 ms": "the memory sampler's period, a setting",
}
"""Numbers with units in README's prose that are settings, not measurements."""

MEASUREMENT = re.compile(r"\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?(?:%|x\b|×(?!\d)| (?:GB|MB|minutes|min|s|ms|G|GFLOPs)\b)")


def normalised(text: str) -> str:
    return " ".join(text.split())


def test_readme_measurements_match_their_sources():
    values = {**demo_values(), **bench_values()}
    prose = normalised(readme_prose())
    for quote in QUOTES:
        assert quote.format(**values) in prose, f"README should say: {quote.format(**values)!r}"


def test_every_readme_measurement_is_checked():
    values = {**demo_values(), **bench_values()}
    prose = normalised(readme_prose())
    spans = [
        m.span()
        for q in (*(q.format(**values) for q in QUOTES), *NOT_MEASUREMENTS)
        for m in re.finditer(re.escape(q), prose)
    ]
    unchecked = [
        prose[max(0, m.start() - 40) : m.end() + 20]
        for m in MEASUREMENT.finditer(prose)
        if not any(a <= m.start() and m.end() <= b for a, b in spans)
    ]
    assert not unchecked, f"measurements in README that no QUOTES entry derives from a source: {unchecked}"
