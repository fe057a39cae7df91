"""Every trap of the dataset spec, on small fixture folders written in the official formats."""

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from tbps_bench.cli import main
from tbps_bench.errors import BenchError
from tbps_bench.registry import DATASETS
from tbps_bench.results import load_result
from tbps_datasets import pedes as pedes_module
from tbps_datasets.check import check_dataset
from tbps_datasets.specs import DatasetSpec, SplitCounts

from paths import FIXTURES


def _image(path: Path, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (16, 32), 128).save(path)


def _write(root: Path, name: str, records: list[dict], images: bool = True, mode: str = "RGB") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(records))
    if images:
        for record in records:
            _image(root / "imgs" / record.get("file_path", record.get("img_path")), mode)
    return root


def _records(key="file_path", splits=(("train", 3), ("val", 1), ("test", 2)), captions=2, prefix="p"):
    records, pid = [], 0
    for split, ids in splits:
        for _ in range(ids):
            pid += 1
            for shot in range(2):
                records.append(
                    {
                        "split": split,
                        "id": pid,
                        key: f"{prefix}/{pid}_{shot}.jpg",
                        "captions": [f"a person {pid} in a red coat {c}" for c in range(captions)],
                        "processed_tokens": [],
                    }
                )
    return records


def _spec(name="tiny", files=("reid_raw.json",), keys=("file_path",), splits=None, **extra) -> DatasetSpec:
    counts = splits or {"train": SplitCounts(3, 6, 12), "val": SplitCounts(1, 2, 4), "test": SplitCounts(2, 4, 8)}
    return DatasetSpec(
        name=name,
        title=name,
        citation="",
        access="",
        folder=name.upper(),
        image_dir="imgs",
        annotation_files=tuple(files),
        image_keys=tuple(keys),
        adapter="tbps_datasets.pedes:PedesDataset",
        splits=counts,
        **extra,
    )


def _dataset(spec, root):
    from tbps_datasets.pedes import PedesDataset

    return PedesDataset(spec, root)


def test_cuhk_format_loads_and_eval_view(tmp_path):
    root = _write(tmp_path / "CUHK-PEDES", "reid_raw.json", _records())
    dataset = DATASETS.load("cuhk-pedes")(root=tmp_path)  # the parent holding the usual folder name works
    split = dataset.eval_split("test")
    assert split.counts() == {"ids": 2, "images": 4, "captions": 8}
    assert split.caption_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    hf = dataset.hf_splits()
    assert set(hf) == {"train", "val", "test"}
    assert sorted(set(hf["train"]["label"])) == [0, 1, 2]  # contiguous 0-based train labels
    assert hf["train"][0]["image"].size == (16, 32)  # lazily decoded PIL image
    assert (root / "reid_raw.json").exists()


def test_cuhk_alternative_file_name(tmp_path):
    _write(tmp_path, "CUHK-PEDES.json", _records())
    assert DATASETS.load("cuhk-pedes")(root=tmp_path).eval_split().counts()["images"] == 4


def test_caption_all_without_split_is_explained(tmp_path):
    records = _records()
    for r in records:
        del r["split"]
    _write(tmp_path, "caption_all.json", records)
    with pytest.raises(BenchError, match="no 'split' field .*caption_all.json.*reid_raw.json"):
        DATASETS.load("cuhk-pedes")(root=tmp_path).eval_split()


def test_icfg_underscore_name_and_storage_folders(tmp_path):
    records = _records(splits=(("train", 2), ("test", 2)))
    for r in records:
        r["file_path"] = ("test/" if r["split"] == "train" else "train/") + r["file_path"]  # not the split
    _write(tmp_path, "ICFG_PEDES.json", records)
    split = DATASETS.load("icfg-pedes")(root=tmp_path).eval_split("test")
    assert split.counts()["images"] == 4 and split.image_paths[0].startswith("train/")


def test_rstpreid_img_path_key(tmp_path):
    _write(tmp_path, "data_captions.json", _records(key="img_path"))
    assert DATASETS.load("rstpreid")(root=tmp_path).eval_split().counts()["captions"] == 8


def test_old_rstpreid_split_fails_the_count_check(tmp_path):
    spec = _spec(splits={"train": SplitCounts(3, 6, 12), "val": SplitCounts(2, 4, 8), "test": SplitCounts(2, 4, 8)})
    report = check_dataset(_dataset(spec, _write(tmp_path, "reid_raw.json", _records())))
    assert not report.ok
    assert "split 'val': expected 2 ids, found 1" in report.errors


def test_images_with_more_than_two_captions_are_kept(tmp_path):
    records = _records(captions=2)
    records[-1]["captions"] = [f"caption {i}" for i in range(10)]
    dataset = _dataset(_spec(), _write(tmp_path, "reid_raw.json", records))
    assert dataset.eval_split().counts()["captions"] == 16
    assert any("more than 2 captions" in n for n in check_dataset(dataset).notes)


def test_missing_image_folders_reported_with_examples(tmp_path):
    root = _write(tmp_path, "reid_raw.json", _records())
    for path in sorted((root / "imgs" / "p").glob("1_*.jpg")):
        path.unlink()
    report = check_dataset(_dataset(_spec(), root))
    assert report.errors == ["2 referenced images are missing: p/1_0.jpg, p/1_1.jpg"]


def test_grayscale_images_noted_and_converted(tmp_path):
    root = _write(tmp_path, "reid_raw.json", _records(), mode="L")
    report = check_dataset(_dataset(_spec(), root))
    assert report.ok and any("12 images are grayscale" in n for n in report.notes)


def test_escaping_path_is_rejected(tmp_path):
    records = _records()
    records[3]["file_path"] = "../../x.jpg"
    _write(tmp_path, "reid_raw.json", records, images=False)
    with pytest.raises(BenchError, match=r"record 3: image path '../../x.jpg' escapes the image folder"):
        _dataset(_spec(), tmp_path).records()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r[2].pop("id"), "record 2: missing key 'id'"),
        (lambda r: r[1].update(id="7"), "record 1: key 'id' must be an integer, found str"),
        (lambda r: r[0].update(split="dev"), "record 0: key 'split' is 'dev'; expected one of train, val, test"),
        (lambda r: r[4].update(captions="text"), "record 4: key 'captions' must be a list of strings"),
    ],
)
def test_bad_records_name_index_and_key(tmp_path, mutate, message):
    records = _records()
    mutate(records)
    _write(tmp_path, "reid_raw.json", records, images=False)
    with pytest.raises(BenchError, match=message):
        _dataset(_spec(), tmp_path).records()


def test_malformed_json_gives_line_and_column(tmp_path):
    (tmp_path / "reid_raw.json").write_text('[{"split": "train",\n "id": 1,,}]')
    with pytest.raises(BenchError, match=r"reid_raw.json: malformed JSON at line 2, column 10"):
        _dataset(_spec(), tmp_path).records()


def test_missing_root_and_annotation_name_what_was_tried(tmp_path, capsys):
    assert main(["data", "check", "-d", "cuhk-pedes", "--root", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "check", "-d", "cuhk-pedes", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tried" in err and "reid_raw.json" in err and "CUHK-PEDES.json" in err and "caption_all.json" in err


def test_junk_and_reused_captions_counted(tmp_path):
    records = _records()
    records[0]["captions"][0] = "这是一个垃圾标题"
    records[2]["captions"][0] = records[5]["captions"][1]
    report = check_dataset(_dataset(_spec(), _write(tmp_path, "reid_raw.json", records)))
    assert any(n.startswith("1 captions look like junk") for n in report.notes)
    assert any(n.startswith("1 captions are reused for different person ids") for n in report.notes)


def test_toy_pedes_passes_its_own_check(capsys):
    assert main(["data", "check", "-d", "toy-pedes", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["counts"]["test"] == {"ids": 50, "images": 200, "captions": 400}


def test_toy_pedes_is_deterministic_and_nontrivial(tmp_path):
    from tbps_datasets.toy import ToyConfig, ensure_generated

    config = ToyConfig(ids=20, images_per_id=2, val_ids=4, test_ids=4, seed=5)
    a = ensure_generated(config, tmp_path / "a")
    b = ensure_generated(config, tmp_path / "b")
    assert (a / "reid_raw.json").read_bytes() == (b / "reid_raw.json").read_bytes()
    assert (a / "imgs/test/p00017_s0.jpg").read_bytes() == (b / "imgs/test/p00017_s0.jpg").read_bytes()
    records = json.loads((a / "reid_raw.json").read_text())
    captions = [c for r in records for c in r["captions"]]
    assert len(set(captions)) > 0.8 * len(captions)  # varied templates, not one string per identity


def test_info_prints_statistics(capsys):
    assert main(["data", "info", "-d", "toy-pedes"]) == 0
    out = capsys.readouterr().out
    assert "| test" in out and "words mean" in out


def test_cache_is_keyed_on_content_not_mtime(tmp_path):
    root = _write(tmp_path, "reid_raw.json", _records())
    first = _dataset(_spec(), root)._cache_dir()
    (root / "reid_raw.json").touch()
    assert _dataset(_spec(), root)._cache_dir() == first
    records = _records()
    records[0]["captions"][0] = "changed"
    (root / "reid_raw.json").write_text(json.dumps(records))
    assert _dataset(_spec(), root)._cache_dir() != first


def test_ufine3c_is_evaluated_whole_and_per_source(tmp_path):
    records = _records(splits=(("test", 4),))
    for i, r in enumerate(records):
        r["source"] = ["cuhk", "icfg"][i % 2]
        del r["split"]
    _write(tmp_path, "UFine3C.json", records)
    out = tmp_path / "res"
    assert main(["eval", "-m", "oracle", "-d", "ufine3c", "--data-root", str(tmp_path), "--out", str(out)]) == 0
    splits = sorted(json.loads(p.read_text())["dataset"]["split"] for p in out.rglob("*.json"))
    assert splits == ["test", "test/cuhk", "test/icfg"]


def _train_annotation(folder, records: int):
    """A train-only annotation of ``records`` images with two captions each; its spec."""
    rows = [
        {
            "split": "train",
            "id": i // 3 + 1,
            "file_path": f"train/{i}.jpg",
            "captions": ["a man in a black jacket and blue jeans carrying a bag", "he wears white shoes"],
        }
        for i in range(records)
    ]
    (folder / "reid_raw.json").write_text(json.dumps(rows))
    return _spec(splits={"train": SplitCounts((records + 2) // 3, records, 2 * records)})


def _never_parsed_again(monkeypatch):
    def refuse(*args):
        raise AssertionError("the second load parsed the annotation again instead of reading the cache")

    monkeypatch.setattr(pedes_module, "read_annotation", refuse)


def test_second_load_reads_the_cache_not_the_annotation(tmp_path, monkeypatch):
    spec = _train_annotation(tmp_path, 300)
    _dataset(spec, tmp_path).hf_splits()  # the first load builds the cache
    _never_parsed_again(monkeypatch)
    assert _dataset(spec, tmp_path).eval_split("train").counts()["captions"] == 600


@pytest.mark.heavy
@pytest.mark.benchmark(group="cuhk-sized-annotation")
def test_second_load_of_cuhk_sized_annotation_reads_the_cache(tmp_path, benchmark, monkeypatch):
    """40,206 records, 80,412 captions: the second load, from the cache, at least 3x faster than the
    first (parsing and building it), in the same run."""
    spec = _train_annotation(tmp_path, 40206)
    start = time.perf_counter()
    _dataset(spec, tmp_path).hf_splits()
    first_s = time.perf_counter() - start
    _never_parsed_again(monkeypatch)
    split = benchmark(lambda: _dataset(spec, tmp_path).eval_split("train"))
    assert split.counts()["captions"] == 80412
    benchmark.extra_info["first_load_s"] = round(first_s, 3)
    assert benchmark.stats.stats.min * 3 <= first_s, (benchmark.stats.stats.min, first_s)


def test_long_ufine3c_captions_are_kept_whole_and_truncation_is_counted(tmp_path):
    """UFine captions are long: the adapter keeps every word, the tokenizer's cut is recorded."""
    records = _records(splits=(("test", 4),))
    long_caption = " ".join(["a woman wearing a long dark red coat with golden buttons"] * 6)  # > 32 word pieces
    for i, r in enumerate(records):
        r["source"] = ["cuhk", "icfg"][i % 2]
        r["captions"][0] = long_caption if i < 3 else r["captions"][0]
        del r["split"]
    _write(tmp_path, "UFine3C.json", records)
    split = DATASETS.load("ufine3c")(root=tmp_path).eval_split("test")
    assert split.captions.count(long_caption) == 3  # nothing cut by the adapter
    out = tmp_path / "res"
    args = ["eval", "-m", "nafs-tiny", "-d", "ufine3c", "--data-root", str(tmp_path), "--out", str(out)]
    assert main(args) == 0
    by_split = {r["dataset"]["split"]: r for r in map(load_result, out.rglob("*.json"))}
    assert by_split["test"]["protocol"]["truncated_captions"] == 3  # nafs-tiny reads 32 word pieces
    assert by_split["test/cuhk"]["protocol"]["truncated_captions"] == 2
    assert by_split["test/icfg"]["protocol"]["truncated_captions"] == 1
    random_args = ["eval", "-m", "random", "-d", "ufine3c", "--data-root", str(tmp_path), "--out", str(out / "r")]
    assert main(random_args) == 0
    assert load_result(next((out / "r").rglob("*_test.json")))["protocol"]["truncated_captions"] is None


def test_a_decompression_bomb_is_a_named_image_not_a_traceback(tmp_path, monkeypatch, capsys):
    """An image with more pixels than Pillow decodes safely: `data check` lists it as unreadable and an
    evaluation stops on it in one line naming the file."""
    from PIL import Image

    from tbps_datasets.check import _inspect_image

    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100 x 100 is then over twice the limit
    assert _inspect_image((tmp_path, "big.png", False)) == ("big.png", "unreadable")
    folder = FIXTURES / "rasa_reference"
    out = tmp_path / "res"
    args = ["eval", "-m", "rasa", "-d", "cuhk-pedes", "--data-root", str(folder), "--out", str(out), "--no-cache"]
    assert main([*args, "--checkpoint", str(folder / "rasa_checkpoint.pth")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "cannot read image synthetic/" in errors[0] and "exceeds limit" in errors[0], errors
    assert not out.exists() or not list(out.rglob("*.json"))
