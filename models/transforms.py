"""The image pipeline the person-search methods share: resize to a fixed (height, width), aspect
not kept, optional horizontal flip (training), tensor, normalisation."""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def person_image_transform(
    size: tuple[int, int],
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    flip: bool = False,
    interpolation: str = "bilinear",
):
    from torchvision import transforms as T

    steps = [T.Resize(tuple(size), interpolation=T.InterpolationMode(interpolation))]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
