"""CLIP towers stored with OpenAI's key names (IRRA and its forks under ``base_model.``, TBPS-CLIP
under ``visual.`` and ``encode_text.``): the architecture read off tensor shapes, the key set such a
state must have (so that a missing or an unknown entry is named, never guessed at), and the key
names mapped to ``transformers``'."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import CLIPConfig

from tbps_bench.errors import BenchError

IMAGE_SIZE = (384, 128)  # height x width of every IRRA-family codebase (TBPS-CLIP: 224 x 224)
HEAD_WIDTH = 64  # CLIP's attention heads are 64 wide in both towers
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")


@dataclass(frozen=True)
class ClipArchitecture:
    vision_width: int
    vision_layers: int
    patch_size: int
    stride: int
    grid: tuple[int, int]
    text_width: int
    text_layers: int
    context_length: int
    vocab_size: int
    embed_dim: int
    vision_mlp: int
    text_mlp: int
    image_size: tuple[int, int] = IMAGE_SIZE

    def config(self, attention_weights: bool = False) -> CLIPConfig:
        config = CLIPConfig(
            vision_config={
                "hidden_size": self.vision_width,
                "intermediate_size": self.vision_mlp,
                "num_hidden_layers": self.vision_layers,
                "num_attention_heads": self.vision_width // HEAD_WIDTH,
                "patch_size": self.patch_size,
                "image_size": self.image_size[0],
                "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5,
            },
            text_config={
                "hidden_size": self.text_width,
                "intermediate_size": self.text_mlp,
                "num_hidden_layers": self.text_layers,
                "num_attention_heads": self.text_width // HEAD_WIDTH,
                "max_position_embeddings": self.context_length,
                "vocab_size": self.vocab_size,
                "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5,
                "eos_token_id": self.vocab_size - 1,
            },
            projection_dim=self.embed_dim,
        )
        # attention probabilities are returned by the eager implementation only (RDE selects tokens by them)
        config._attn_implementation = "eager" if attention_weights else "sdpa"
        for sub in (config.vision_config, config.text_config):
            sub._attn_implementation = config._attn_implementation
        return config


def _stride_for(
    grid_cells: int, patch: int, source: str, image_size: tuple[int, int], stride_is_patch: bool
) -> tuple[int, tuple[int, int]]:
    """The conv stride whose grid over an image of ``image_size`` has ``grid_cells`` patches (the
    patch size itself when the method's code fixes it so)."""
    height, width = image_size
    strides = [patch] if stride_is_patch else range(1, patch + 1)
    fits = [
        (stride, ((height - patch) // stride + 1, (width - patch) // stride + 1))
        for stride in strides
        if ((height - patch) // stride + 1) * ((width - patch) // stride + 1) == grid_cells
    ]
    if len(fits) != 1:
        allowed = f"s = {patch}" if stride_is_patch else f"a stride s <= {patch}"
        raise BenchError(
            f"{source}: visual.positional_embedding has {grid_cells} patch rows, which "
            f"{'matches no' if not fits else 'matches more than one'} stride of a {patch}-pixel patch over a "
            f"{height} x {width} image; expected (({height} - {patch}) // s + 1) x (({width} - {patch}) // s + 1) "
            f"for {allowed}"
        )
    return fits[0]


def infer_architecture(
    clip_state: dict[str, torch.Tensor],
    source: str,
    image_size: tuple[int, int] = IMAGE_SIZE,
    stride_is_patch: bool = False,
) -> ClipArchitecture:
    """Widths, depths, patch, stride, grid, context and embedding size, from shapes alone (the image
    size is the method's: a position table fits several)."""
    try:
        conv = clip_state["visual.conv1.weight"]
        patch = conv.shape[-1]
        rows = clip_state["visual.positional_embedding"].shape[0] - 1
        stride, grid = _stride_for(rows, patch, source, image_size, stride_is_patch)
        layers = {"visual": 0, "text": 0}
        for key in clip_state:
            match = _BLOCK.match(key)
            if match:
                tower = "visual" if match.group(1) else "text"
                layers[tower] = max(layers[tower], int(match.group(2)) + 1)
        return ClipArchitecture(
            vision_width=conv.shape[0],
            vision_layers=layers["visual"],
            patch_size=patch,
            stride=stride,
            grid=grid,
            text_width=clip_state["ln_final.weight"].shape[0],
            text_layers=layers["text"],
            context_length=clip_state["positional_embedding"].shape[0],
            vocab_size=clip_state["token_embedding.weight"].shape[0],
            embed_dim=clip_state["text_projection"].shape[1],
            vision_mlp=clip_state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            text_mlp=clip_state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            image_size=tuple(image_size),
        )
    except KeyError as exc:
        raise BenchError(f"{source}: the CLIP state lacks {exc.args[0]!r}; expected OpenAI CLIP key names") from exc


_BLOCK_KEYS = tuple(
    f"{part}.{kind}"
    for part in ("attn.out_proj", "ln_1", "mlp.c_fc", "mlp.c_proj", "ln_2")
    for kind in ("weight", "bias")
) + ("attn.in_proj_weight", "attn.in_proj_bias")
#: entries a CLIP state may hold or not: the temperature (unused in evaluation)
OPTIONAL_KEYS = frozenset({"logit_scale"})


def openai_keys(architecture: ClipArchitecture) -> frozenset[str]:
    """Every entry an OpenAI-layout CLIP state of this architecture holds."""
    visual = [f"visual.{k}" for k in ("conv1.weight", "class_embedding", "positional_embedding", "proj")]
    visual += [f"visual.{norm}.{kind}" for norm in ("ln_pre", "ln_post") for kind in ("weight", "bias")]
    text = ["token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight", "ln_final.bias"]
    blocks = [
        f"{tower}transformer.resblocks.{layer}.{key}"
        for tower, count in (("visual.", architecture.vision_layers), ("", architecture.text_layers))
        for layer in range(count)
        for key in _BLOCK_KEYS
    ]
    return frozenset(visual + text + blocks)


def check_keys(
    clip_state: dict[str, torch.Tensor],
    architecture: ClipArchitecture,
    source: str,
    file_key: Callable[[str], str],
) -> None:
    """One line naming what is missing from the towers, or what sits inside them that CLIP does not
    have (an adapter, a prompt, LoRA weights: they change the function, so they are refused, never
    dropped). Keys are shown as the file spells them (``file_key`` of the OpenAI name)."""

    def shown(keys: list[str]) -> str:
        more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
        return ", ".join(repr(file_key(k)) for k in keys[:4]) + more

    expected = openai_keys(architecture)
    missing = sorted(expected - clip_state.keys())
    if missing:
        raise BenchError(f"{source}: CLIP weights missing: {shown(missing)}; the file is incomplete")
    unknown = sorted(clip_state.keys() - expected - OPTIONAL_KEYS)
    if unknown:
        raise BenchError(
            f"{source}: unknown entries inside the CLIP towers: {shown(unknown)}; they are not CLIP weights "
            "(adapters, prompts, LoRA?) and would change the function: refused, not dropped"
        )


_TEXT_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.")


def first_text_blocks(state: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """``transformers`` keys with the text blocks from ``keep`` on left out (stored, never run)."""

    def kept(key: str) -> bool:
        match = _TEXT_LAYER.match(key)
        return match is None or int(match.group(1)) < keep

    return {k: v for k, v in state.items() if kept(k)}


_TOWER = {"visual.transformer.": "vision_model.encoder.", "transformer.": "text_model.encoder."}
_BLOCK_PARTS = {
    "attn.out_proj.": "self_attn.out_proj.",
    "ln_1.": "layer_norm1.",
    "ln_2.": "layer_norm2.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}
_SINGLE = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_PROJECTIONS = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}


def to_transformers(clip_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP keys -> ``transformers.CLIPModel`` keys, in fp32 (the file stores fp16 weights).

    The packed attention input projection is split into q, k and v; the two projections are stored
    input x output by OpenAI and output x input by ``nn.Linear``."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in clip_state.items():
        tensor = tensor.float()
        if key in _SINGLE:
            out[_SINGLE[key]] = tensor
        elif key in _PROJECTIONS:
            out[_PROJECTIONS[key]] = tensor.T.contiguous()
        else:
            prefix = next(p for p in _TOWER if key.startswith(p))
            layer, rest = key[len(prefix) + len("resblocks.") :].split(".", 1)
            base = f"{_TOWER[prefix]}layers.{layer}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3), strict=True):
                    out[f"{base}self_attn.{name}.{kind}"] = part.contiguous()
            else:
                part = next(p for p in _BLOCK_PARTS if rest.startswith(p))
                out[base + _BLOCK_PARTS[part] + rest[len(part) :]] = tensor
    return out
