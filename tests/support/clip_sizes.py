"""The released IRRA-family tower sizes, for benchmarks and the GPU check that run them with random
weights: ViT-B/16 at 384 x 128 (stride 16: 192 patches + the class token), the 12-layer, 512-wide
text transformer over 77 tokens."""

from tbps_models.clip_towers.architecture import ClipArchitecture

VIT_B16 = ClipArchitecture(
    vision_width=768,
    vision_layers=12,
    patch_size=16,
    stride=16,
    grid=(24, 8),
    text_width=512,
    text_layers=12,
    context_length=77,
    vocab_size=49408,
    embed_dim=512,
    vision_mlp=3072,
    text_mlp=2048,
)
