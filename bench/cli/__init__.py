"""``tbps-bench``: the demo, plugins, evaluation (methods x datasets), training, external scores, data checks
and leaderboards."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from tbps_bench.errors import BenchError
from tbps_bench.fileio import INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    from tbps_bench.cli import (
        data_cmd,
        demo_cmd,
        eval_cmd,
        leaderboard_cmd,
        list_cmd,
        report_cmd,
        score_cmd,
        search_cmd,
        train_cmd,
    )

    parser = argparse.ArgumentParser(
        prog="tbps-bench",
        description="Text-based person search benchmark: evaluate methods on datasets in both directions, "
        "train, score saved matrices, check datasets, build leaderboards.",
        epilog="Start with: tbps-bench demo (no download), tbps-bench list, tbps-bench eval -m random -d toy-pedes",
    )
    _add_plugin_option(parser, "plugin")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (
        demo_cmd,
        list_cmd,
        eval_cmd,
        train_cmd,
        score_cmd,
        data_cmd,
        leaderboard_cmd,
        report_cmd,
        search_cmd,
    ):
        module.add_parser(commands)
    # also after the command (``tbps-bench eval --plugin F.py ...``); argparse would let a command's
    # own default replace the list given before it, hence a second name
    for command in _leaf_parsers(parser):
        _add_plugin_option(command, "plugin_after_command")
        page = DOCS[command.prog.split()[1]]
        command.epilog = f"{command.epilog} " if command.epilog else ""
        command.epilog += f"Documentation: {page} in the tbps-bench repository."
    parser.epilog += "; documentation: README.md and docs/ in the tbps-bench repository"
    return parser


#: the page that documents each command
DOCS = {
    "demo": "README.md",
    "list": "docs/methods.md",
    "eval": "docs/evaluation.md",
    "train": "docs/plugins.md",
    "score": "docs/evaluation.md",
    "data": "docs/datasets.md",
    "leaderboard": "docs/leaderboards.md",
    "report": "docs/reports.md",
    "search": "docs/reports.md",
}


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that end a command line (``eval``, ``data check``, ...)."""
    nested = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not nested:
        return [parser]
    return [leaf for action in nested for command in action.choices.values() for leaf in _leaf_parsers(command)]


def _add_plugin_option(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "--plugin",
        dest=dest,
        action="append",
        default=[],
        metavar="FILE.py",
        help="import a plugin file that registers methods or datasets (repeatable)",
    )


def _interrupt(signum, frame) -> None:
    INTERRUPTED.set()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    INTERRUPTED.clear()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _interrupt) if in_main_thread else None
    try:
        from tbps_bench.registry import load_plugin_file

        for plugin in [*args.plugin, *args.plugin_after_command]:
            load_plugin_file(plugin)
        code = int(args.run(args, argv) or 0)
        if INTERRUPTED.is_set():  # a library swallowed the KeyboardInterrupt: the run still failed
            raise KeyboardInterrupt
        return code
    except BenchError as exc:
        print(f"error: {_where()}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: {_where()}interrupted (Ctrl-C); nothing further was written", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _where():
            raise
        # in a distributed job: one line per process (a peer that stopped shows up here as a
        # collective error); the launcher stops the other processes
        from tbps_bench.distributed import explained

        print(f"error: {_where()}{explained(exc)}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
        _leave_job()


def _where() -> str:
    """``rank R: `` inside a distributed job, so that each process's error says which it is."""
    if "torch.distributed" not in sys.modules:
        return ""
    from tbps_bench.distributed import current_world

    world = current_world()
    return f"rank {world.rank}/{world.size}: " if world.distributed else ""


def _leave_job() -> None:
    if "torch.distributed" not in sys.modules:
        return
    from tbps_bench.distributed import stop

    stop()
