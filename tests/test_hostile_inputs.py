"""No wrong number, ever: cache keys, damaged files, bad arguments, images, self-contradicting results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tbps_bench import registry
from tbps_bench.cli import main
from tbps_bench.results import build_result, load_result, write_result

PIXEL_PLUGIN = """
import torch
from torchvision.transforms import functional as F

from tbps_bench.methods import Method
from tbps_bench.registry import register_method


@register_method("{name}")
class Pixels(Method):
    {name_line}

    def image_transform(self):
        return lambda image: F.to_tensor(F.resize(image, [16, 8]))

    def tokenize(self, captions):
        return {{"n": torch.tensor([[float(len(c) % 7), float(c.count("a"))] for c in captions])}}

    def encode_images(self, batch):
        return batch["pixels"].mean(dim=(2, 3))[:, :2] * {scale} + torch.tensor([0.0, 1.0])

    def encode_texts(self, batch):
        return batch["tokens"]["n"]
"""


def _plugin(folder: Path, name: str, scale: float = 1.0, named: bool = True, stem: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem or name.replace('-', '_')}.py"
    name_line = f'name = "{name}"' if named else "pass  # no name: the class default"
    path.write_text(PIXEL_PLUGIN.format(name=name, name_line=name_line, scale=scale))
    return path


def _toy_copy(tmp_path: Path) -> Path:
    from tbps_datasets.toy import ensure_generated

    copy = tmp_path / "toy"
    shutil.copytree(ensure_generated(), copy)
    return copy


def _eval(args: list[str], out: Path) -> dict:
    assert main([*args, "--out", str(out)]) == 0
    return load_result(next(out.rglob("*.json")))


def test_other_image_files_under_the_same_annotation_are_not_served_from_the_cache(tmp_path):
    plugin, copy = _plugin(tmp_path / "p", "mean-pixels"), _toy_copy(tmp_path)
    args = ["--plugin", str(plugin), "eval", "-m", "mean-pixels", "-d", "toy-pedes", "--data-root", str(copy)]
    first = _eval(args, tmp_path / "a")
    again = _eval(args, tmp_path / "b")
    assert again["timings"]["cache_hits"]["images"] and again["metrics"] == first["metrics"]
    for path in (copy / "imgs" / "test").glob("*.jpg"):  # the same annotation, test images blacked out
        Image.new("RGB", Image.open(path).size).save(path)
    black = _eval(args, tmp_path / "c")
    assert not black["timings"]["cache_hits"]["images"]
    assert black["metrics"] != first["metrics"]


def test_a_same_size_change_with_the_modification_time_set_back_is_not_served(tmp_path):
    """The inode change time, which no user can set back, keys the image manifest too."""
    import os

    plugin, copy = _plugin(tmp_path / "p", "mean-pixels"), _toy_copy(tmp_path)
    args = ["--plugin", str(plugin), "eval", "-m", "mean-pixels", "-d", "toy-pedes", "--data-root", str(copy)]
    _eval(args, tmp_path / "a")
    path = sorted((copy / "imgs" / "test").glob("*.jpg"))[0]
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a byte of the image data changed: same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    again = _eval(args, tmp_path / "b")
    assert not again["timings"]["cache_hits"]["images"]


SIBLING_PLUGIN = """
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sibling_base import SCALE  # noqa: E402

import torch  # noqa: E402

from tbps_bench.methods import Method  # noqa: E402
from tbps_bench.registry import register_method  # noqa: E402


@register_method("uses-a-sibling")
class UsesASibling(Method):
    name = "uses-a-sibling"
    needs_pixels = False
    reads_checkpoint = False

    def encode_images(self, batch):
        return torch.nn.functional.one_hot(batch["pid"] % 5, 5).float() * SCALE + torch.arange(5.0)

    def encode_texts(self, batch):
        return torch.nn.functional.one_hot(batch["pid"] % 5, 5).float()
"""


def test_an_edited_sibling_module_of_a_plugin_is_not_served_from_the_cache(tmp_path):
    """A plugin's source hash covers the modules it imports from its folder, not only its own file."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "uses_a_sibling.py").write_text(SIBLING_PLUGIN)
    (folder / "sibling_base.py").write_text("SCALE = 1.0\n")
    env = {**__import__("os").environ, "TBPS_BENCH_CACHE": str(tmp_path / "cache"), "PYTHONSAFEPATH": "1"}

    def evaluate(out: str) -> dict:
        args = ["--plugin", str(folder / "uses_a_sibling.py"), "eval", "-m", "uses-a-sibling", "-d", "toy-pedes"]
        command = [sys.executable, "-m", "tbps_bench", *args, "--limit", "20", "--out", str(tmp_path / out)]
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        return load_result(next((tmp_path / out).rglob("*.json")))

    first, cached = evaluate("a"), evaluate("b")
    assert cached["timings"]["cache_hits"]["images"] and cached["metrics"] == first["metrics"]
    (folder / "sibling_base.py").write_text("SCALE = -4.0\n")
    edited = evaluate("c")
    assert not edited["timings"]["cache_hits"]["images"]
    assert edited["metrics"] != first["metrics"]


def test_methods_without_a_name_and_an_edited_plugin_get_their_own_cache_entries(tmp_path, monkeypatch):
    a = _plugin(tmp_path / "a", "plain-a", scale=1.0, named=False)
    b = _plugin(tmp_path / "b", "plain-b", scale=-3.0, named=False)
    args = ["--plugin", str(a), "--plugin", str(b), "eval", "-m", "plain-a,plain-b", "-d", "toy-pedes"]
    assert main([*args, "--limit", "40", "--out", str(tmp_path / "res")]) == 0
    results = {r["method"]["name"]: r for r in map(load_result, (tmp_path / "res").rglob("*.json"))}
    assert results["plain-b"]["metrics"] != results["plain-a"]["metrics"]
    assert not results["plain-b"]["timings"]["cache_hits"]["images"]
    # the same file name, registered name and class, edited: its source hash keys a new entry
    edited = _plugin(tmp_path / "edited", "plain-a", scale=-3.0, named=False, stem="plain_a")
    monkeypatch.setattr(registry.METHODS, "_entries", None)
    monkeypatch.setattr(registry.METHODS, "_pending", [])
    again = ["--plugin", str(edited), "eval", "-m", "plain-a", "-d", "toy-pedes", "--limit", "40"]
    result = _eval(again, tmp_path / "edited-res")
    assert not result["timings"]["cache_hits"]["images"]
    assert result["metrics"] == results["plain-b"]["metrics"]


def test_a_damaged_cache_entry_is_named_removed_and_recomputed(tmp_path, capsys):
    args = ["eval", "-m", "random", "-d", "toy-pedes", "--limit", "20"]
    first = _eval(args, tmp_path / "a")
    root = Path(__import__("os").environ["TBPS_BENCH_CACHE"]) / "features"
    damaged = sorted(root.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)[-2:]
    damaged[0].write_bytes(damaged[0].read_bytes()[:40])  # cut short
    damaged[1].write_bytes(b"\x07" * 100)  # garbage
    healed = _eval(args, tmp_path / "b")
    err = capsys.readouterr().err
    assert err.count("is unreadable") == 2 and str(damaged[0]) in err
    assert healed["metrics"] == first["metrics"]
    assert _eval(args, tmp_path / "c")["timings"]["cache_hits"] == {"images": True, "texts": True}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "random", "--method-arg", "dimm=128"], "method 'random' has no argument 'dimm'; did you mean 'dim'?"),
        (["-m", ","], "-m/--methods ',' names no method"),
        (["-m", "random", "--workers", "-1"], "--workers must be >= 0"),
        (["-m", "random", "--checkpoint", "best.pth"], "method 'random' reads no checkpoint"),
        (["-m", "random,oracle", "--method-arg", "seed=1"], "method 'oracle' has no argument 'seed'"),
        # values: the declared type, then the method's own ranges and choices
        (["-m", "random", "--method-arg", "dim=-1"], "dim must be an integer >= 1; got -1"),
        (["-m", "random", "--method-arg", "dim=abc"], "method 'random' argument 'dim' must be an integer; got 'abc'"),
        (["-m", "random", "--method-arg", "dim=2.5"], "must be an integer; got 2.5"),
        (["-m", "random", "--method-arg", "seed=true"], "argument 'seed' must be an integer; got True"),
        (["-m", "random,frozen-linear", "--method-arg", "dim=0"], "dim must be an integer >= 1; got 0"),
        (["-m", "rde", "--method-arg", "embedding=xyz"], "embedding must be one of both, bge, tse"),
        (["-m", "rde", "--method-arg", "select_ratio=0"], "select_ratio must be a number in (0, 1]"),
        (["-m", "plot", "--method-arg", "iterations=0"], "iterations must be an integer >= 1"),
        (["-m", "rasa", "--method-arg", "k=0"], "k (the shortlist size) must be an integer >= 1"),
        (["-m", "rasa", "--method-arg", "fill=zero"], "fill must be one of authors, first-stage"),
        (["-m", "aptm", "--method-arg", "fusion_world_size=0"], "fusion_world_size must be an integer >= 1"),
        (["-m", "aptm", "--method-arg", "mean=[0.5, 0.5, 0.5]"], "give mean= and std= together"),
        (["-m", "nafs-tiny", "--method-arg", "rerank_k=abc"], "argument 'rerank_k' must be an integer"),
        (["-m", "precomputed", "--method-arg", "label=3"], "argument 'label' must be a string or null; got 3"),
    ],
)
def test_bad_arguments_stop_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "res"
    assert main(["eval", *args, "-d", "toy-pedes", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_out_that_is_a_file_stops_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "results.json"
    blocker.write_text("{}")
    for out in (blocker, blocker / "sub"):
        assert main(["eval", "-m", "random", "-d", "toy-pedes", "--out", str(out)]) == 2
        assert "is a file; expected a folder" in capsys.readouterr().err
    assert blocker.read_text() == "{}"


def test_one_methods_crash_does_not_stop_the_others(tmp_path, capsys):
    plugin = tmp_path / "crash.py"
    plugin.write_text(
        "from tbps_bench.methods import Method\nfrom tbps_bench.registry import register_method\n"
        "@register_method('crash')\nclass Crash(Method):\n    needs_pixels = False\n"
        "    def encode_images(self, batch):\n        raise RuntimeError('boom\\nsecond line')\n"
    )
    out = tmp_path / "res"
    args = ["--plugin", str(plugin), "eval", "-m", "crash,oracle", "-d", "toy-pedes", "--limit", "8", "--out", str(out)]
    assert main(args) == 1
    assert "error: crash on toy-pedes: RuntimeError: boom second line" in capsys.readouterr().err
    assert [p.parent.name for p in out.rglob("*.json")] == ["oracle"]


def test_a_16_bit_grey_image_stays_grey(tmp_path):
    from tbps_bench.images import to_rgb

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((16, 8), 117 * 257, dtype=np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
        rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (16, 8, 3) and int(rgb.min()) == int(rgb.max()) == 117


def test_a_32_bit_integer_tiff_is_scaled_by_its_own_range(tmp_path, capsys):
    """Mode "I" holds 16-bit PNGs and 32-bit TIFFs alike: the file's tags say which, and a 32-bit
    mid-grey stays mid-grey (scaled as 16-bit it would be white)."""
    from tbps_bench.images import integer_depth, to_rgb

    path = tmp_path / "grey32.tif"
    Image.fromarray(np.full((16, 8), 117 * (2**31 - 1) // 255, dtype=np.int32)).save(path)  # Pillow writes int32
    with Image.open(path) as image:
        assert integer_depth(image) == (32, True)
        rgb = np.asarray(to_rgb(image))
    assert int(rgb.min()) == int(rgb.max()) == 117
    root = tmp_path / "CUHK-PEDES"
    _one_split_dataset(root, {"a.tif": Image.open(path)})
    main(["data", "check", "-d", "cuhk-pedes", "--root", str(root)])
    assert "1 images are 32-bit integer grayscale" in capsys.readouterr().out


def _one_split_dataset(root: Path, images: dict[str, Image.Image]) -> None:
    (root / "imgs").mkdir(parents=True)
    records = []
    for index, (name, image) in enumerate(images.items()):
        image.save(root / "imgs" / name)
        records.append({"split": "test", "id": index, "file_path": name, "captions": [f"a person {index}"]})
    (root / "reid_raw.json").write_text(json.dumps(records))


def test_data_check_decodes_every_image(tmp_path, capsys):
    root = tmp_path / "CUHK-PEDES"
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 64, 3), dtype=np.uint8))
    grey16 = Image.fromarray(np.full((16, 8), 117 * 257, dtype=np.uint16))
    _one_split_dataset(root, {"a.jpg": photo, "b.jpg": photo, "c.png": grey16})
    (root / "imgs" / "b.jpg").write_bytes((root / "imgs" / "b.jpg").read_bytes()[:1500])  # truncated JPEG
    assert main(["data", "check", "-d", "cuhk-pedes", "--root", str(root), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "error: 1 images are undecodable or truncated: b.jpg" in out
    assert "1 images are 16-bit integer grayscale (scaled to 8 bits by their depth's range" in out
    main(["data", "check", "-d", "cuhk-pedes", "--root", str(root), "--quick"])
    assert "undecodable" not in capsys.readouterr().out  # headers alone cannot see a cut file


def _result_file(tmp_path: Path) -> Path:
    from tbps_bench.metrics import evaluate_scores

    text_ids, image_ids = torch.arange(12) // 2, torch.arange(6)
    scores = (text_ids[:, None] == image_ids[None, :]).float() + torch.randn(
        12, 6, generator=torch.Generator().manual_seed(0)
    )
    result = build_result(
        run_id="20260101T000000-aaaaaa",
        method={"name": "mine", "arguments": {}, "trained_on": None, "checkpoint": None, "training": None},
        dataset={"name": "toy", "split": "test", "limit": None, "counts": {"ids": 6, "images": 6, "captions": 12}},
        retrieval=evaluate_scores(scores, text_ids, image_ids),
        scoring="cosine",
        timings={},
        provenance={"git": {}},
        partial=False,
    )
    return write_result(tmp_path / "results", result)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda r: r["per_query"]["t2i_first_hit_rank"].__setitem__(slice(None), [1] * 12), "gives R1 = 100.000000"),
        (lambda r: r["per_query"]["t2i_first_hit_rank"].pop(), "has 11 queries; the result counts 12"),
        (lambda r: r["per_query"]["i2t_first_hit_rank"].__setitem__(0, 0), "must hold integer ranks >= 1"),
        (lambda r: r["per_query"].__setitem__("i2t_first_hit_rank", "1,2,3"), "is missing or empty"),
        (lambda r: r["per_query"]["t2i_average_precision"].__setitem__(0, 0.0), "gives mAP"),
        (lambda r: r["metrics"]["i2t"].__setitem__("mINP", 1.0), "'metrics.i2t.mINP' is 1.0"),
    ],
)
def test_a_result_that_contradicts_itself_is_named_with_the_field(tmp_path, capsys, tamper, message):
    path = _result_file(tmp_path)
    result = json.loads(path.read_text())
    tamper(result)
    path.write_text(json.dumps(result))
    args = ["leaderboard", "build", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "lb")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err


def test_score_names_what_the_file_is(tmp_path, capsys):
    npy, zeros = tmp_path / "scores.npy", tmp_path / "scores.npz"
    np.save(npy, np.zeros((2, 2)))
    zeros.write_bytes(bytes(256))
    assert main(["score", str(npy)]) == 2
    assert "is a .npy file (one array); expected a .npz archive" in capsys.readouterr().err
    assert main(["score", str(zeros)]) == 2
    err = capsys.readouterr().err
    assert "is not a .npz archive (a zip file): it is zero-filled" in err and "pickled" not in err


def test_queries_without_positives_name_the_command_line_flag(tmp_path, capsys):
    path = tmp_path / "s.npz"
    np.savez(path, similarity=np.random.rand(3, 2), text_ids=np.array([0, 1, 9]), image_ids=np.array([0, 1]))
    assert main(["score", str(path)]) == 2
    assert "--skip-queries-without-positives" in capsys.readouterr().err
    assert main(["score", str(path), "--skip-queries-without-positives", "--json"]) == 0
    assert "skipped" in capsys.readouterr().err


def _frozen_linear_checkpoint(tmp_path: Path) -> Path:
    from tbps_models.frozen_linear.method import FrozenLinearMethod

    folder = tmp_path / "fl"
    FrozenLinearMethod(dim=32).save_checkpoint(folder, {"dataset": "toy-pedes"})
    return folder


def test_damaged_or_foreign_checkpoint_folders_are_one_line(tmp_path, capsys):
    fl = _frozen_linear_checkpoint(tmp_path)
    foreign = tmp_path / "nafs-like"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"config": {"trunk": "resnet18"}, "meta": {}}))
    shutil.copy(fl / "projections.safetensors", foreign / "model.safetensors")
    names = ("truncated", "no-config", "wrong", "wrong-shape")
    truncated, no_config, wrong, wrong_shape = (shutil.copytree(fl, tmp_path / n) for n in names)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(fl / "projections.safetensors"))
    tensors["image_projection.weight"] = tensors["image_projection.weight"][:16]
    save_file(tensors, str(wrong_shape / "projections.safetensors"))
    weights = truncated / "projections.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    (no_config / "config.json").unlink()
    (wrong / "config.json").write_text(json.dumps({"config": {"dim": 16}, "meta": {}}))
    cases = [
        ("cmpm-cmpc", foreign, ["--method-arg", "trunk=resnet18"], "no 'settings'; this is not a cmpm-cmpc checkpoint"),
        ("frozen-linear", truncated, ["--method-arg", "dim=32"], "unreadable tensors"),
        (
            "frozen-linear",
            no_config,
            ["--method-arg", "dim=32"],
            "is not a frozen-linear checkpoint: config.json is missing",
        ),
        ("frozen-linear", wrong, ["--method-arg", "dim=32"], "has dim 16; the method was built with dim 32"),
        ("frozen-linear", wrong_shape, ["--method-arg", "dim=32"], "wrong shape image_projection.weight (16, 1280)"),
        ("nafs-tiny", fl, [], "no 'config' with a text_encoder; this is not a NAFS checkpoint"),
    ]
    for method, folder, extra, message in cases:
        out = tmp_path / f"res-{folder.name}"
        args = ["eval", "-m", method, "-d", "toy-pedes", "--limit", "8", "--checkpoint", str(folder), "--out", str(out)]
        assert main([*args, *extra]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(err) == 1 and message in err[0], (method, folder.name, err)
        assert not out.exists() or not list(out.rglob("*.json"))


def test_a_damaged_resume_file_is_one_line(tmp_path, capsys):
    run = tmp_path / "nafs-tiny" / "toy-pedes" / "seed0"
    run.mkdir(parents=True)
    (run / "resume.pt").write_bytes(b"PK\x03\x04 cut short")
    args = ["train", "-m", "nafs-tiny", "-d", "toy-pedes", "--resume", "--out", str(tmp_path), "--max-steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resume.pt is unreadable" in err[0] and "delete it to start over" in err[0]


def test_long_captions_give_no_false_indexing_warning(tmp_path, capfd):
    from tbps_models.clip.method import ClipMethod

    from tiny_clip import write_tiny_clip

    method = ClipMethod(model=str(write_tiny_clip(tmp_path / "clip")))
    capfd.readouterr()
    tokens = method.tokenize(["a man in a long coat " * 30])
    assert bool(tokens["truncated"][0])
    captured = capfd.readouterr()
    assert "indexing errors" not in captured.err + captured.out


def test_provenance_records_the_hardware(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # read by oneDNN at its first use; recorded as given
    result = _eval(["eval", "-m", "oracle", "-d", "toy-pedes", "--limit", "8"], tmp_path)
    hardware = result["provenance"]["hardware"]
    assert hardware["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert hardware["onednn_max_cpu_isa"] == "AVX2"
    assert hardware["torch_threads"] == torch.get_num_threads() and hardware["cpu_model"]
    assert {"cuda", "cudnn", "gpus", "deterministic_algorithms"} <= set(hardware)


def test_ctrl_c_stops_with_130_and_writes_nothing(tmp_path):
    import signal
    import time

    plugin, marker = Path(__file__).parent / "fixtures" / "slow_plugin.py", tmp_path / "started"
    out = tmp_path / "res"
    env = {**__import__("os").environ, "PYTHONSAFEPATH": "1", "SLOW_PLUGIN_MARKER": str(marker)}
    command = [sys.executable, "-m", "tbps_bench", "--plugin", str(plugin), "eval", "-m", "slow", "-d", "toy-pedes"]
    child = subprocess.Popen([*command, "--out", str(out)], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not marker.exists():  # interrupted in the middle of encoding
        assert time.monotonic() < deadline and child.poll() is None, "the evaluation never started encoding"
        time.sleep(0.1)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-2000:]
    assert "interrupted (Ctrl-C)" in err
    assert not out.exists() or not list(out.rglob("*.json"))


def test_the_demo_compares_its_numbers_with_the_committed_leaderboard(tmp_path, capsys):
    from tbps_bench.cli.demo_cmd import _committed, _compare

    (tmp_path / "toy-pedes.csv").write_text(
        "split,domain,direction,method,source,runs,R1,R1_ci_low,R1_ci_high\n"
        "test,in-domain,t2i,nafs-tiny (config=nafs-tiny),this project,1,40.75,36.0,45.5\n"
        "test,in-domain,i2t,nafs-tiny (config=nafs-tiny),this project,1,45.0,38.5,51.5\n"
        "test,in-domain,t2i,NAFS,Some paper,,59.9,,\n"
    )
    committed = _committed(tmp_path)
    assert committed == {("nafs-tiny", "t2i"): (40.75, 36.0, 45.5), ("nafs-tiny", "i2t"): (45.0, 38.5, 51.5)}
    _compare({"nafs-tiny @ toy-pedes/test": {"t2i": {"R1": 32.75}, "i2t": {"R1": 44.0}}}, committed)
    err = capsys.readouterr().err
    assert "nafs-tiny t2i R@1 32.75; committed 40.75 (95% CI 36.00-45.50): OUTSIDE" in err
    assert "nafs-tiny i2t R@1 44.00; committed 45.00 (95% CI 38.50-51.50): inside" in err


def test_the_demo_says_how_to_get_the_committed_bits_on_other_instruction_sets(tmp_path, monkeypatch, capsys):
    import json

    import tbps_bench.provenance as provenance
    from tbps_bench.cli.demo_cmd import _committed_instruction_sets, _same_bits_hint

    committed_file = tmp_path / "demo" / "toy-pedes" / "nafs-tiny" / "run_test.json"
    committed_file.parent.mkdir(parents=True)
    committed_file.write_text(json.dumps({"provenance": {"hardware": {"cpu_capability": "AVX2"}}}))
    (committed_file.parent / "broken.json").write_text("{not json")  # ignored: it holds no instruction set
    committed = _committed_instruction_sets(tmp_path / "demo")
    assert committed == {("AVX2", "AVX2")}  # an AVX2-only CPU: oneDNN's own choice is AVX2 too

    monkeypatch.setattr(provenance, "hardware", lambda: {"cpu_capability": "AVX512", "onednn_max_cpu_isa": None})
    _same_bits_hint(committed)
    err = capsys.readouterr().err
    assert "instruction sets AVX2 / AVX2 (ATen / oneDNN), this run with AVX512 / uncapped" in err
    assert "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 tbps-bench demo" in err

    # capped to the committed run's instruction sets (or on such a CPU): nothing to say
    monkeypatch.setattr(provenance, "hardware", lambda: {"cpu_capability": "AVX2", "onednn_max_cpu_isa": "AVX2"})
    _same_bits_hint(committed)
    monkeypatch.setattr(provenance, "hardware", lambda: {"cpu_capability": "AVX2", "onednn_max_cpu_isa": None})
    _same_bits_hint(committed)
    assert capsys.readouterr().err == ""
