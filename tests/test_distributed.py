"""Scale-out: sharding covers every item once, and two torchrun processes give a one-process run's numbers."""

from __future__ import annotations

import pytest
from harness_helpers import FAST, free_port, harness, run

from tomeplug_eval import distributed
from tomeplug_eval.results import ItemCache, ResultsFile, read_jsonl


@pytest.mark.parametrize("count", [0, 1, 5, 8])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_shards_cover_every_item_exactly_once(count, size):
    shards = [distributed.shard(range(count), distributed.World(rank, size)) for rank in range(size)]
    assert sorted(i for shard in shards for i in shard) == list(range(count))


def test_single_process_collectives_are_local():
    world = distributed.world_from_env()
    assert world == distributed.World(0, 1, 0) and world.is_main
    assert distributed.gather({"a": 1}, world) == [{"a": 1}] and distributed.broadcast(3, world) == 3


def test_two_processes_give_the_numbers_of_one(tmp_path):
    two = tmp_path / "two"
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    done = harness(*FAST, "strategy=tome", "flops=false", f"output_dir={two}", module=torchrun)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = ResultsFile(two).records()
    single = run(tmp_path / "one", "strategy=tome", "flops=false")
    assert record["world_size"] == 2 and single["world_size"] == 1
    assert record["run_key"] == single["run_key"]
    assert record["metrics"] == single["metrics"]  # exactly, not approximately
    assert (record["images"], record["objects"]) == (single["images"], single["objects"])
    shards = [[r["index"] for r in read_jsonl(ItemCache(two, record["items_key"], rank).path)] for rank in (0, 1)]
    assert shards == [[0, 2], [1]]  # rank r took items r, r + 2, ...: none twice, none missed
