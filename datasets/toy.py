"""toy-pedes: a seeded procedural pedestrian dataset, written in the CUHK-PEDES format.

It lets a fresh machine run the whole benchmark with no download. An identity is a combination of
attributes; identities come in families that share most attributes (distractors), each identity
has several images varying in pose, scale, position, clutter and lighting, and each image has two
captions from varied templates and synonyms that mention a random subset of the attributes.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from tbps_bench.fileio import atomic_dir, cache_root, sha256_json

COLOURS = {
    "red": (200, 30, 30),
    "blue": (30, 60, 200),
    "green": (40, 150, 60),
    "black": (25, 25, 25),
    "white": (235, 235, 235),
    "grey": (128, 128, 128),
    "yellow": (230, 210, 40),
    "brown": (120, 75, 35),
    "pink": (235, 130, 170),
    "purple": (120, 50, 150),
    "orange": (240, 140, 30),
    "navy": (20, 30, 90),
}
SYNONYMS = {"grey": ["grey", "gray"], "navy": ["navy", "dark blue"], "brown": ["brown", "tan"]}
ATTRIBUTES = {
    "gender": ["man", "woman"],
    "hair": ["short", "long", "ponytail", "bald"],
    "upper": ["t-shirt", "jacket", "coat", "sweater", "shirt"],
    "upper_colour": list(COLOURS),
    "lower": ["pants", "shorts", "skirt", "jeans"],
    "lower_colour": list(COLOURS),
    "shoes": ["black", "white", "brown", "red"],
    "bag": ["none", "backpack", "handbag", "shoulder bag"],
    "accessory": ["none", "hat", "glasses"],
    "carried": ["none", "umbrella", "phone", "cup"],
}
NOUNS = {"man": ["man", "guy", "male"], "woman": ["woman", "lady", "female"]}
PRONOUNS = {"man": ("he", "his"), "woman": ("she", "her")}


@dataclass(frozen=True)
class ToyConfig:
    ids: int = 500
    images_per_id: int = 4
    height: int = 128
    width: int = 64
    family_size: int = 4  # identities sharing most attributes
    val_ids: int = 50
    test_ids: int = 50
    seed: int = 0


def _identities(config: ToyConfig, rng: random.Random) -> list[dict[str, str]]:
    identities: list[dict[str, str]] = []
    seen: set[tuple] = set()
    while len(identities) < config.ids:
        base = {key: rng.choice(values) for key, values in ATTRIBUTES.items()}
        for _ in range(config.family_size):
            member = dict(base)
            for key in rng.sample(list(ATTRIBUTES), 2):  # distractors differ in two attributes
                member[key] = rng.choice(ATTRIBUTES[key])
            signature = tuple(sorted(member.items()))
            if signature not in seen and len(identities) < config.ids:
                seen.add(signature)
                identities.append(member)
    rng.shuffle(identities)
    return identities


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _colour_word(colour: str, rng: random.Random) -> str:
    return rng.choice(SYNONYMS.get(colour, [colour]))


def caption(attributes: dict[str, str], rng: random.Random) -> str:
    gender = attributes["gender"]
    subject, possessive = PRONOUNS[gender]
    noun = rng.choice(NOUNS[gender])
    phrases = {
        "upper": f"a {_colour_word(attributes['upper_colour'], rng)} {attributes['upper']}",
        "lower": f"{_colour_word(attributes['lower_colour'], rng)} {attributes['lower']}",
        "shoes": f"{attributes['shoes']} shoes",
    }
    if attributes["hair"] == "bald":
        hair = f"{subject} is bald"
    else:
        hair = (
            f"{subject} has {attributes['hair']} hair"
            if attributes["hair"] != "ponytail"
            else (f"{possessive} hair is in a ponytail")
        )
    extras = []
    if attributes["bag"] != "none":
        extras.append(rng.choice(["carrying", "with"]) + " " + _article(attributes["bag"]))
    if attributes["accessory"] != "none":
        extras.append(
            f"wearing {attributes['accessory']}"
            if attributes["accessory"] == "glasses"
            else f"wearing a {attributes['accessory']}"
        )
    if attributes["carried"] != "none":
        extras.append("holding " + _article(attributes["carried"]))
    clothes = [phrases[k] for k in rng.sample(["upper", "lower", "shoes"], rng.randint(2, 3))]
    verb = rng.choice(["wearing", "dressed in", "who wears"])
    opening = rng.choice(
        [
            f"A {noun} {verb} {', '.join(clothes[:-1])} and {clothes[-1]}.",
            f"The {noun} is {verb.replace('who wears', 'wearing')} {' and '.join(clothes)}.",
            f"This {noun} has on {', '.join(clothes)}.",
        ]
    )
    sentences = [opening]
    if rng.random() < 0.7:
        sentences.append(hair[0].upper() + hair[1:] + ".")
    if extras:
        chosen = rng.sample(extras, rng.randint(1, len(extras)))
        sentences.append(f"{subject.capitalize()} is {' and '.join(chosen)}.")
    return " ".join(sentences)


def draw(attributes: dict[str, str], config: ToyConfig, rng: random.Random):
    from PIL import Image, ImageDraw, ImageEnhance

    h, w = config.height, config.width
    bg = tuple(rng.randint(60, 200) for _ in range(3))
    image = Image.new("RGB", (w, h), bg)
    canvas = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 6)):  # background clutter
        x0, y0 = rng.randint(0, w), rng.randint(0, h)
        canvas.rectangle(
            [x0, y0, x0 + rng.randint(4, 20), y0 + rng.randint(4, 30)],
            fill=tuple(rng.randint(0, 255) for _ in range(3)),
        )
    scale = rng.uniform(0.8, 1.0)
    cx = w / 2 + rng.uniform(-0.12, 0.12) * w
    top = rng.uniform(0.02, 0.12) * h
    unit = h * scale / 8.0
    skin = (225, 190, 160)
    head_r = unit * 0.55
    canvas.ellipse([cx - head_r, top, cx + head_r, top + 2 * head_r], fill=skin)
    if attributes["hair"] != "bald":
        canvas.chord([cx - head_r, top, cx + head_r, top + 2 * head_r], 180, 360, fill=(40, 30, 20))
        if attributes["hair"] == "long":
            canvas.rectangle([cx - head_r, top + head_r, cx + head_r, top + 3 * head_r], fill=(40, 30, 20))
        elif attributes["hair"] == "ponytail":
            canvas.ellipse(
                [cx + head_r * 0.6, top + head_r * 0.5, cx + head_r * 1.5, top + 2.5 * head_r], fill=(40, 30, 20)
            )
    if attributes["accessory"] == "hat":
        canvas.rectangle(
            [cx - head_r * 1.2, top - unit * 0.1, cx + head_r * 1.2, top + head_r * 0.6], fill=(20, 20, 20)
        )
    elif attributes["accessory"] == "glasses":
        canvas.line([cx - head_r, top + head_r, cx + head_r, top + head_r], fill=(0, 0, 0), width=2)
    body_top = top + 2 * head_r
    upper_len = unit * (3.2 if attributes["upper"] == "coat" else 2.6)
    half = unit * (0.95 if attributes["gender"] == "man" else 0.8)
    upper = COLOURS[attributes["upper_colour"]]
    canvas.rectangle([cx - half, body_top, cx + half, body_top + upper_len], fill=upper)
    if attributes["upper"] == "jacket":
        canvas.line([cx, body_top, cx, body_top + upper_len], fill=(20, 20, 20), width=1)
    sleeve = upper if attributes["upper"] != "t-shirt" else skin
    swing = rng.uniform(-0.4, 0.4) * unit
    for side in (-1, 1):
        canvas.line(
            [cx + side * half, body_top + 2, cx + side * (half + unit * 0.3) + swing * side, body_top + upper_len],
            fill=sleeve,
            width=max(2, int(unit * 0.35)),
        )
    hip = body_top + upper_len
    lower = COLOURS[attributes["lower_colour"]]
    leg_len = unit * 3.0
    stride = rng.uniform(0.0, 0.6) * unit
    if attributes["lower"] == "skirt":
        canvas.polygon(
            [
                (cx - half, hip),
                (cx + half, hip),
                (cx + half * 1.4, hip + leg_len * 0.5),
                (cx - half * 1.4, hip + leg_len * 0.5),
            ],
            fill=lower,
        )
    for side in (-1, 1):
        foot_x = cx + side * (half * 0.5 + stride)
        length = leg_len * (0.45 if attributes["lower"] in ("shorts", "skirt") else 1.0)
        colour = lower if attributes["lower"] != "skirt" else skin
        canvas.line([cx + side * half * 0.5, hip, foot_x, hip + length], fill=colour, width=max(3, int(unit * 0.45)))
        if length < leg_len:
            canvas.line([foot_x, hip + length, foot_x, hip + leg_len], fill=skin, width=max(2, int(unit * 0.3)))
        shoe = COLOURS.get(attributes["shoes"], (0, 0, 0))
        canvas.rectangle([foot_x - unit * 0.35, hip + leg_len - 2, foot_x + unit * 0.35, hip + leg_len + 2], fill=shoe)
    if attributes["bag"] == "backpack":
        canvas.rectangle(
            [cx + half, body_top + unit * 0.3, cx + half + unit * 0.5, body_top + upper_len * 0.8], fill=(60, 40, 20)
        )
    elif attributes["bag"] in ("handbag", "shoulder bag"):
        y = hip - unit * 0.3 if attributes["bag"] == "handbag" else body_top + unit
        canvas.rectangle([cx - half - unit * 0.7, y, cx - half, y + unit * 0.7], fill=(150, 20, 60))
    if attributes["carried"] == "umbrella":
        canvas.line([cx + half + unit * 0.4, hip, cx + half + unit * 0.4, hip - unit * 3], fill=(10, 10, 10), width=2)
    elif attributes["carried"] in ("phone", "cup"):
        fill = (10, 10, 10) if attributes["carried"] == "phone" else (240, 240, 240)
        canvas.rectangle(
            [cx + half + unit * 0.2, hip - unit * 0.2, cx + half + unit * 0.5, hip + unit * 0.2], fill=fill
        )
    return ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))


def generate(folder: Path, config: ToyConfig) -> None:
    rng = random.Random(config.seed)
    identities = _identities(config, rng)
    test_start = config.ids - config.test_ids
    val_start = test_start - config.val_ids
    (folder / "imgs").mkdir(parents=True)
    records = []
    for index, attributes in enumerate(identities):
        pid = index + 1  # 1-based and contiguous per split, like CUHK-PEDES
        split = "train" if index < val_start else "val" if index < test_start else "test"
        for shot in range(config.images_per_id):
            file_path = f"{split}/p{pid:05d}_s{shot}.jpg"
            target = folder / "imgs" / file_path
            target.parent.mkdir(parents=True, exist_ok=True)
            draw(attributes, config, rng).save(target, quality=90)
            records.append(
                {
                    "split": split,
                    "captions": [caption(attributes, rng), caption(attributes, rng)],
                    "file_path": file_path,
                    "id": pid,
                    "attributes": attributes,
                }
            )
    (folder / "reid_raw.json").write_text(json.dumps(records), encoding="utf-8")


def ensure_generated(config: ToyConfig | None = None, root: Path | None = None) -> Path:
    """Generate once per configuration (atomically) and return the dataset folder."""
    config = config or ToyConfig()
    key = sha256_json({"v": 1, **asdict(config)})[:16]
    folder = (root or cache_root() / "toy-pedes") / key
    if not (folder / "reid_raw.json").is_file():
        with atomic_dir(folder) as tmp:
            generate(tmp, config)
            (tmp / "config.json").write_text(json.dumps(asdict(config), indent=1), encoding="utf-8")
    return folder
