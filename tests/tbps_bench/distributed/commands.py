"""Run under torchrun: several tbps-bench commands in one job, as a program that sets up its own
process group and calls the command line for each (the group stays between commands).

``commands.py PLAN.json``: PLAN holds ``[{"name", "argv" | "script", "env"}]``; each entry runs in
turn with its environment variables set, its stdout and stderr kept per process in
``<plan folder>/<name>.rank<R>.out|.err``, and its exit code written to ``<name>.rank<R>.code``.
``script`` entries run a module's ``main()`` (the data-parallel gradient check)."""

import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from unittest import mock

import torch.distributed as dist

from tbps_bench.cli import main


def run_script(path: str, arguments: list[str]) -> int:
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with mock.patch.object(sys, "argv", [path, *arguments]):
        return module.main()


def run() -> int:
    plan_file = Path(sys.argv[1])
    plan = json.loads(plan_file.read_text())
    dist.init_process_group(backend="gloo")
    rank = dist.get_rank()
    for entry in plan:
        stem = plan_file.parent / f"{entry['name']}.rank{rank}"
        with (
            mock.patch.dict(os.environ, entry.get("env", {})),
            open(f"{stem}.out", "w") as out,
            open(f"{stem}.err", "w") as err,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = run_script(entry["script"], entry.get("argv", [])) if "script" in entry else main(entry["argv"])
        Path(f"{stem}.code").write_text(str(code))
        dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run())
