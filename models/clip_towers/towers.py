"""Reading CLIP towers out of a released file: the ``{"model": state_dict}`` the CLIP-based
codebases save, the towers' entries checked key by key, and the weights loaded into ``PersonClip``.
Every method file around the towers (IRRA's and RDE's heads, PLOT's slots) is the method's own."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from tbps_bench.checkpoints import load_state, load_torch_file
from tbps_bench.errors import BenchError
from tbps_models.clip_towers.architecture import (
    ClipArchitecture,
    check_keys,
    first_text_blocks,
    to_transformers,
)
from tbps_models.clip_towers.backbone import PersonClip
from tbps_models.clip_towers.preset import ClipPreset

#: integer buffers a state may hold beside weights
COUNTERS = ("position_ids", "num_batches_tracked")


def read_model_state(path: str | Path, expected: str) -> dict[str, torch.Tensor]:
    """The file's ``model`` state dict (``module.`` prefixes removed), or one line saying what is wrong."""
    path = Path(path)
    stored = load_torch_file(path, expected, "{'model': state_dict} of tensors")
    return model_state(stored, path, expected)


def model_state(stored, path: Path, expected: str) -> dict[str, torch.Tensor]:
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        found = sorted(stored)[:6] if isinstance(stored, dict) else type(stored).__name__
        hint = " (a NAFS release checkpoint: use -m nafs)" if isinstance(stored, dict) and "network" in stored else ""
        raise BenchError(f"checkpoint {path} is not {expected}: expected a dict with 'model', found {found}{hint}")
    return {k.removeprefix("module."): v for k, v in stored["model"].items() if isinstance(v, torch.Tensor)}


def refuse_integer_weights(state: dict[str, torch.Tensor], modules: Iterable[str], source: str) -> None:
    """Integer or complex weights of the used ``modules`` (a quantised file) are refused by name,
    never cast."""
    modules = set(modules)
    for key, value in state.items():
        if key.split(".")[0] not in modules or key.endswith(COUNTERS):
            continue
        if not value.is_floating_point():
            raise BenchError(f"{source}: '{key}' is {value.dtype}; expected floating-point weights (refused, not cast)")


def modules_beside(
    state: dict[str, torch.Tensor], used: Iterable[str], training_only: Iterable[str], source: str, method: str
) -> dict[str, int]:
    """The top-level modules of ``state`` that are neither used nor known to serve training alone
    are refused by name (an adapter or a prompt changes the function); the training-only ones are
    returned with their entry counts, for a note."""
    modules = Counter(key.split(".")[0] for key in state)
    unknown = sorted(set(modules) - set(used) - set(training_only))
    if unknown:
        listed = ", ".join(f"{name} ({modules[name]})" for name in unknown[:4])
        raise BenchError(
            f"{source}: modules {method} does not have: {listed}; refused, not dropped (they would change the "
            "function; known training-only parts are ignored by name)"
        )
    return {name: count for name, count in sorted(modules.items()) if name in set(training_only)}


def prefixed(prefix: str) -> Callable[[str], str]:
    """``file_key`` of a file that keeps the OpenAI names under one prefix (IRRA's ``base_model.``)."""
    return lambda key: prefix + key


def new_towers(architecture: ClipArchitecture, preset: ClipPreset, attention_weights: bool = False) -> PersonClip:
    """Randomly initialised towers of this architecture, with the text blocks the method runs."""
    config = architecture.config(attention_weights)
    config.text_config.num_hidden_layers = architecture.text_layers - preset.text_blocks_dropped
    return PersonClip.from_config(config, architecture.stride, architecture.grid)


def load_towers(
    towers: PersonClip,
    clip_state: dict[str, torch.Tensor],
    architecture: ClipArchitecture,
    preset: ClipPreset,
    source: str,
    file_key: Callable[[str], str],
) -> None:
    """The towers' weights from an OpenAI-layout state, every entry accounted for: missing and
    unknown ones are named as the file spells them (``file_key`` of the OpenAI name)."""
    check_keys(clip_state, architecture, source, file_key)
    mapped = first_text_blocks(to_transformers(clip_state), architecture.text_layers - preset.text_blocks_dropped)
    # position ids are buffers; the temperature is not used in evaluation
    load_state(towers.clip, mapped, source, "CLIP", optional=("position_ids", "logit_scale"))
