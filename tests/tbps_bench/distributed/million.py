"""Run under torchrun: exact text-to-image metrics of 20,000 queries over 1,000,000 images.

The synthetic gallery (256-d, 4 images per person) is generated block by block from per-block
seeds, so each process builds only its own shard and every world size sees the same numbers.
Each process measures, in one run: the exact ranking, its peak resident memory, and the floor
(every score tile of its shard, in the same query chunks, nothing else). The first process writes a JSON report:
``million.py OUT.json [IMAGES] [QUERIES]``."""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time

import torch

from tbps_bench.distributed import start, stop
from tbps_bench.metrics import SCORE_TILE, Shard, cosine_scorer, query_chunk_rows, rank_sharded

DIM = 256
IMAGES_PER_PERSON = 4
PERSONS_PER_BLOCK = SCORE_TILE // IMAGES_PER_PERSON
QUERY_STRIDE = 12  # query q describes person 12 q: queries spread over the whole gallery
NOISE = 1.5
BRUTE_FORCE = 64


def centres(block: int) -> torch.Tensor:
    return torch.randn(PERSONS_PER_BLOCK, DIM, generator=torch.Generator().manual_seed(2 * block))


def gallery_shard(rows: slice) -> torch.Tensor:
    """Unit embeddings of images ``rows``, stored (dim x items) as the cosine scorer reads them."""
    out = torch.empty(DIM, rows.stop - rows.start)
    for first in range(rows.start, rows.stop, SCORE_TILE):
        block = first // SCORE_TILE
        count = min(SCORE_TILE, rows.stop - first)
        noise = torch.randn(SCORE_TILE, DIM, generator=torch.Generator().manual_seed(2 * block + 1))[:count]
        persons = torch.arange(count) // IMAGES_PER_PERSON
        embeddings = torch.nn.functional.normalize(centres(block)[persons] + NOISE * noise, dim=1)
        out[:, first - rows.start : first - rows.start + count] = embeddings.T
    return out


def query_shard(rows: slice) -> torch.Tensor:
    persons = torch.arange(rows.start, rows.stop) * QUERY_STRIDE
    out = torch.empty(len(persons), DIM)
    for block in torch.unique(persons // PERSONS_PER_BLOCK).tolist():
        mine = persons // PERSONS_PER_BLOCK == block
        out[mine] = centres(block)[persons[mine] % PERSONS_PER_BLOCK]
    for first in range(rows.start, rows.stop, SCORE_TILE):  # noise per fixed block: any sharding, same queries
        count = min(SCORE_TILE, rows.stop - first)
        seed = 10**9 + first // SCORE_TILE
        noise = torch.randn(SCORE_TILE, DIM, generator=torch.Generator().manual_seed(seed))[:count]
        out[first - rows.start : first - rows.start + count] += NOISE * noise
    return torch.nn.functional.normalize(out, dim=1)


def peak_memory_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> int:
    out = sys.argv[1]
    n_images = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    n_queries = int(sys.argv[3]) if len(sys.argv) > 3 else 20_000
    world, _ = start("cpu")
    image_ranges = world.shards(n_images, SCORE_TILE)
    query_ranges = world.shards(n_queries, SCORE_TILE)
    images = gallery_shard(image_ranges[world.rank])
    queries = query_shard(query_ranges[world.rank])
    image_ids = torch.arange(n_images) // IMAGES_PER_PERSON
    query_ids = torch.arange(n_queries) * QUERY_STRIDE
    score = cosine_scorer()
    world.barrier()
    began = time.perf_counter()
    result = rank_sharded(
        Shard(queries, query_ranges),
        Shard(images, image_ranges, items_last=True),
        query_ids,
        image_ids,
        score,
        "t2i",
        world,
    )
    exact_s = time.perf_counter() - began
    peak_gib = peak_memory_gib()  # before the floor, which is measured in the same chunks
    world.barrier()
    rows = query_chunk_rows(n_images)
    began = time.perf_counter()
    for first in range(0, n_queries, rows):  # the floor: every score tile of this shard, nothing else
        score(queries[:1].expand(min(rows, n_queries - first), DIM).contiguous(), images)
    floor_s = time.perf_counter() - began
    report = {
        "rank": world.rank,
        "floor_s": floor_s,
        "exact_s": exact_s,
        "peak_gib": peak_gib,
        "shard_gib": images.numel() * 4 / 2**30,
        "query_rows_per_chunk": rows,
    }
    reports = world.all_gather_object(report)
    checked = None
    if world.size == 1:  # brute force for the first queries: a stable full sort of their rows
        scores = score(queries[:BRUTE_FORCE], images)
        order = torch.sort(-scores, dim=1, stable=True).indices
        positive = image_ids[order] == query_ids[:BRUTE_FORCE, None]
        first = positive.to(torch.int8).argmax(dim=1) + 1
        checked = bool(torch.equal(first, result.first_hit_rank[:BRUTE_FORCE]))
    if world.is_main:
        ranks = result.first_hit_rank.numpy().tobytes() + result.average_precision.numpy().tobytes()
        summary = {
            "world_size": world.size,
            "images": n_images,
            "queries": n_queries,
            "metrics": result.summary(),
            "per_query_sha256": hashlib.sha256(ranks).hexdigest(),
            "ranks": reports,
            "threads_per_process": torch.get_num_threads(),
            "brute_force_first_ranks_equal": checked,
        }
        with open(out, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1)
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
