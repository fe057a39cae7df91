"""``tbps-bench search``: rank a folder of your own images against sentences (or an image against a
text file of sentences) with any registered method, print the top K and write a contact sheet."""

from __future__ import annotations

import sys
from pathlib import Path

from tbps_bench.errors import BenchError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def add_parser(commands) -> None:
    parser = commands.add_parser("search", help="rank your own images against a sentence (or the reverse)")
    parser.add_argument("sentences", nargs="*", help="the sentence(s) to search with")
    parser.add_argument("-m", "--method", required=True, help="a registered method")
    parser.add_argument("--checkpoint", help="checkpoint file for the method")
    parser.add_argument("--method-arg", action="append", default=[], metavar="[METHOD:]KEY=VALUE")
    parser.add_argument("--images", help="folder of images to rank (every image file in it, sorted)")
    parser.add_argument("--image", help="one image to rank --texts against")
    parser.add_argument("--texts", help="text file of sentences, one per line (with --image)")
    parser.add_argument("-k", "--top", type=int, default=10, help="how many results to show (10)")
    parser.add_argument("--out", default="search", help="folder for the contact sheet (search/)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-cache", action="store_true", help="re-encode the images even when cached")
    parser.set_defaults(run=run)


def _queries(args) -> tuple[Path, list[str], list[str], str]:
    """(image folder, image files, sentences, direction shown)."""
    if args.images and not args.image:
        folder = Path(args.images)
        if not folder.is_dir():
            raise BenchError(f"--images {folder}: not a folder")
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise BenchError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        sentences = [s for s in args.sentences if s.strip()]
        if not sentences:
            raise BenchError(
                'give the sentence to search with: tbps-bench search ... --images DIR "a woman in a red coat"'
            )
        return folder, files, sentences, "t2i"
    if args.image and args.texts and not args.images:
        image, texts = Path(args.image), Path(args.texts)
        if not image.is_file():
            raise BenchError(f"--image {image}: not a file")
        try:
            sentences = [line.strip() for line in texts.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchError(f"--texts {texts}: cannot read it as UTF-8 text ({exc})") from exc
        if not sentences:
            raise BenchError(f"--texts {texts}: no sentences (one per line)")
        return image.parent, [image.name], sentences, "i2t"
    raise BenchError("give --images DIR and a sentence, or --image FILE and --texts FILE")


def run(args, argv) -> int:
    import hashlib
    import json

    import torch

    from tbps_bench.arguments import parse_method_args
    from tbps_bench.cache import FeatureCache
    from tbps_bench.evaluation import EvalSettings, evaluate_split
    from tbps_bench.fileio import sha256_path
    from tbps_bench.harness import build_method, check_method_arguments, resolve_device
    from tbps_bench.report.page import write_search_sheet
    from tbps_bench.splits import EvalSplit

    if args.top < 1:
        raise BenchError(f"-k/--top must be >= 1, got {args.top}")
    folder, files, sentences, direction = _queries(args)
    method_args = parse_method_args(args.method_arg, [args.method]).for_method(args.method)
    check_method_arguments(args.method, method_args, args.checkpoint)
    # every item shares one id: the ranking is the method's, and no query lacks a positive
    split = EvalSplit(
        dataset="search",
        split=folder.name or "images",
        image_root=folder,
        image_paths=files,
        image_pids=torch.zeros(len(files), dtype=torch.int64),
        captions=sentences,
        caption_pids=torch.zeros(len(sentences), dtype=torch.int64),
        caption_image=torch.zeros(len(sentences), dtype=torch.int64),
        annotation_sha256=hashlib.sha256(json.dumps(["search", files]).encode()).hexdigest(),
        caption_sha256=hashlib.sha256(json.dumps(sentences).encode()).hexdigest(),
    )
    device = resolve_device(args.device)
    method = build_method(args.method, device, args.checkpoint, method_args)
    evaluation = evaluate_split(
        method,
        split,
        EvalSettings(batch_size=args.batch_size),
        FeatureCache(enabled=not args.no_cache),
        checkpoint_sha=sha256_path(args.checkpoint) if args.checkpoint else None,
        rankings_k=args.top,
    )
    top = getattr(evaluation.rankings, direction)
    for query, (indices, scores) in enumerate(zip(top.indices.tolist(), top.values.tolist(), strict=True)):
        print(sentences[query] if direction == "t2i" else files[query])
        gallery = files if direction == "t2i" else sentences
        for place, (index, score) in enumerate(zip(indices, scores, strict=True), start=1):
            if index >= 0:
                print(f"  {place:>3}  {score:+.4f}  {gallery[index]}")
    page = write_search_sheet(args.method, split, evaluation.rankings, direction, Path(args.out))
    cached = evaluation.timings.encode.images_cached
    print(f"wrote {page} (image features {'from the cache' if cached else 'encoded'})", file=sys.stderr)
    return 0
