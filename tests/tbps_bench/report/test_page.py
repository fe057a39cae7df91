"""``tbps-bench report`` and ``search`` pages, looked at in a real browser (headless Chromium):
rows, sorting order, filters, thumbnails, escaping, no network, no console error, not blank."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tbps_bench.cli import main
from tbps_bench.metrics import DirectionResult, RetrievalResult
from tbps_bench.rankings import Rankings, rankings_path, write_rankings
from tbps_bench.results import build_result, write_result

from browser import chromium, console_errors, distinct_colours, network_requests, open_page


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def _run(browser, script: str):
    return browser.execute_script(script)


def _rows(browser) -> int:
    return _run(browser, "return document.querySelectorAll('#queries .query').length")


#: the thumbnails of the rendered rows
IMAGES = "[...document.querySelectorAll('#queries img')]"


def _type(browser, text: str) -> None:
    """Type into the search box as a reader does (an input event per change)."""
    box = browser.find_element("id", "search")
    box.clear()
    if text:
        box.send_keys(text)
    browser.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")


def _wait_for_rows(browser, timeout: float = 30.0) -> int:
    """The rendered rows once the page's script has run (a large page parses its data first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(browser)
        if rows:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"no rows rendered in {timeout} s; console: {console_errors(browser)}")


def _settle(browser, seconds: float = 0.2) -> None:
    time.sleep(seconds)


def _evaluated(tmp_path: Path, method: str, *extra: str) -> Path:
    out = tmp_path / "res"
    args = ["eval", "-m", method, "-d", "toy-pedes", "--save-rankings", "5", "--out", str(out), *extra]
    assert main(args) == 0
    return next((out / "toy-pedes" / method).glob("*_test.json"))


def test_report_of_one_result_as_a_reader_sees_it(tmp_path, browser):
    result = _evaluated(tmp_path, "random")
    assert main(["report", str(result), "--out", str(tmp_path / "report")]) == 0
    network_requests(browser), browser.get_log("browser")  # empty the logs
    started = time.perf_counter()
    open_page(browser, tmp_path / "report" / "index.html")
    queries = json.loads(result.read_text())["dataset"]["counts"]["captions"]
    assert _wait_for_rows(browser) == min(100, queries)
    assert _run(browser, "return document.getElementById('count').textContent") == f"{queries} of {queries} queries"
    ranks = _run(
        browser, "return [...document.querySelectorAll('#queries .rank')].map(e => +e.textContent.split(' ')[1])"
    )
    assert ranks == sorted(ranks, reverse=True)  # worst first
    # every thumbnail on screen loaded
    _settle(browser, 0.5)
    loaded = _run(
        browser,
        "return [...document.querySelectorAll('#queries img')].slice(0, 25).map(i => i.complete && i.naturalWidth)",
    )
    assert loaded and all(width and width > 0 for width in loaded)
    # only failures: the rank-1 queries disappear
    _run(browser, "const box = document.getElementById('failures'); box.click();")
    _settle(browser)
    failures = sum(1 for r in json.loads(result.read_text())["per_query"]["t2i_first_hit_rank"] if r > 1)
    assert _run(browser, "return document.getElementById('count').textContent").startswith(f"{failures} of ")
    _run(browser, "document.getElementById('failures').click();")
    # caption search
    word = "coat"
    _run(
        browser,
        f"const s = document.getElementById('search'); s.value = '{word}'; s.dispatchEvent(new Event('input'));",
    )
    _settle(browser)
    captions = _run(browser, "return [...document.querySelectorAll('#queries .caption')].map(e => e.textContent)")
    assert captions and all(word in caption.lower() for caption in captions)
    # image to text: each row lists captions
    _run(
        browser,
        "const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'));"
        "const d = document.getElementById('direction'); d.value = 'i2t'; d.dispatchEvent(new Event('change'));",
    )
    _settle(browser)
    assert _run(browser, "return document.querySelectorAll('#queries ol.captions li').length") > 0
    shot = browser.get_screenshot_as_png()
    elapsed = time.perf_counter() - started
    assert distinct_colours(shot) > 20
    assert all(url.startswith("file://") for url in network_requests(browser))
    assert console_errors(browser) == []
    assert _run(browser, "return document.querySelectorAll('svg.cmc polyline').length") == 2
    assert elapsed < 30


MALICIOUS = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def test_markup_in_captions_method_labels_and_file_names_stays_text(tmp_path, browser):
    root = tmp_path / "CUHK-PEDES"
    (root / "imgs").mkdir(parents=True)
    records = []
    for index in range(4):
        name = f"<b>{index}<i>.png"
        Image.fromarray(np.full((32, 16, 3), 60 * index, dtype=np.uint8)).save(root / "imgs" / name)
        caption = MALICIOUS if index == 0 else f"person {index} </script><script>window.pwned = 3</script>"
        records.append({"split": "test", "id": index, "file_path": name, "captions": [caption]})
    (root / "reid_raw.json").write_text(json.dumps(records))
    scores = tmp_path / "scores.npz"
    np.savez(scores, similarity=np.eye(4)[::-1].copy(), text_ids=np.arange(4), image_ids=np.arange(4))
    out = tmp_path / "res"
    args = ["eval", "-m", "precomputed", "-d", "cuhk-pedes", "--data-root", str(tmp_path), "--save-rankings", "3"]
    args += ["--method-arg", f"file={scores}", "--method-arg", f"label={json.dumps(MALICIOUS)}", "--out", str(out)]
    assert main(args) == 0
    result = next(out.rglob("*_test.json"))
    assert main(["report", str(result), "--out", str(tmp_path / "report")]) == 0
    browser.get_log("browser")
    open_page(browser, tmp_path / "report" / "index.html")
    _settle(browser, 0.5)
    assert _run(browser, "return window.pwned === undefined")
    text = _run(browser, "return document.body.innerText")
    assert MALICIOUS in text  # the caption, shown as the characters it is
    assert _run(browser, "return document.querySelectorAll('b, i').length") == 0  # file names stay text too
    assert _run(browser, "return document.querySelectorAll('#queries img').length") > 0
    assert console_errors(browser) == []


def test_two_results_compared_disagreements_first(tmp_path, browser):
    first = _evaluated(tmp_path / "a", "random")
    second = _evaluated(tmp_path / "b", "random", "--method-arg", "seed=5")
    assert main(["report", str(first), str(second), "--out", str(tmp_path / "compare")]) == 0
    open_page(browser, tmp_path / "compare" / "index.html")
    _settle(browser, 0.3)
    pairs = _run(
        browser,
        "return [...document.querySelectorAll('#queries .query')].map(q => [...q.querySelectorAll('.rank')]"
        ".map(r => +r.lastChild.textContent.split(' ')[1]))",
    )
    assert all(len(pair) == 2 for pair in pairs)
    gaps = [abs(np.log(a) - np.log(b)) for a, b in pairs]
    assert all(a >= b - 1e-9 for a, b in zip(gaps, gaps[1:], strict=False))  # JS and numpy logs differ in the last bit
    assert _run(browser, "return document.querySelectorAll('svg.cmc polyline').length") == 4
    assert console_errors(browser) == []


def test_search_contact_sheet(tmp_path, browser, capsys):
    from tbps_datasets.toy import ensure_generated

    images = ensure_generated() / "imgs" / "test"
    out = tmp_path / "sheet"
    assert (
        main(["search", "-m", "random", "--images", str(images), "a woman in a red coat", "-k", "4", "--out", str(out)])
        == 0
    )
    open_page(browser, out / "index.html")
    _settle(browser, 0.5)
    assert _rows(browser) == 1
    widths = _run(
        browser, "return [...document.querySelectorAll('#queries img')].map(i => i.complete && i.naturalWidth)"
    )
    assert len(widths) == 4 and all(w > 0 for w in widths)
    assert console_errors(browser) == []
    capsys.readouterr()
    args = ["search", "-m", "random", "--images", str(images), "a man with a backpack"]
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    assert "image features from the cache" in capsys.readouterr().err  # only the sentence was encoded


ICFG_QUERIES = 19_848


def _large_report(tmp_path: Path) -> Path:
    """A result and rankings of ICFG-PEDES size (19,848 texts and images), images cycling through 40 files."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(40):
        Image.fromarray(np.full((64, 32, 3), index * 6, dtype=np.uint8)).save(folder / f"{index}.jpg")
    generator = torch.Generator().manual_seed(0)
    n = ICFG_QUERIES
    directions = {}
    for name in ("t2i", "i2t"):
        ranks = torch.randint(1, 50, (n,), generator=generator)
        directions[name] = DirectionResult(
            first_hit_rank=ranks,
            average_precision=1.0 / ranks.double(),
            inverse_negative_penalty=1.0 / ranks.double(),
            num_positives=torch.ones(n, dtype=torch.int64),
            ks=(1, 5, 10),
            skipped_queries=0,
        )
    result = build_result(
        run_id="20261203T000000-large",
        method={"name": "synthetic", "arguments": {}},
        dataset={"name": "icfg-pedes", "split": "test", "counts": {"images": n, "captions": n}},
        retrieval=RetrievalResult(t2i=directions["t2i"], i2t=directions["i2t"]),
        scoring="cosine",
        timings={},
        provenance={},
        partial=False,
    )
    rankings = Rankings.of(10, n, n)
    for collector in (rankings.t2i, rankings.i2t):
        collector.indices = torch.randint(0, n, (n, 10), generator=generator)
        collector.values = torch.sort(
            torch.rand(n, 10, generator=generator, dtype=torch.float64), descending=True
        ).values
    items = {
        "caption_ids": np.arange(n),
        "image_ids": np.arange(n),
        "image_files": np.array([f"{i % 40}.jpg" for i in range(n)]),
        "captions": np.array(
            [f"the person {i} wears a dark jacket, blue jeans and white shoes, carrying a bag" for i in range(n)]
        ),
        "image_root": np.array(str(folder)),
    }
    path = rankings_path(tmp_path / "results" / "icfg-pedes" / "synthetic" / "20261203T000000-large_test.json")
    write_rankings(path, rankings, items)
    from tbps_bench.fileio import sha256_file

    result["rankings"] = {"file": path.name, "sha256": sha256_file(path), "k": 10}
    return write_result(tmp_path / "results", result)


def test_a_report_of_icfg_pedes_size_opens_and_scrolls(tmp_path, browser):
    result = _large_report(tmp_path)
    started = time.perf_counter()
    assert main(["report", str(result), "--out", str(tmp_path / "report")]) == 0
    written = time.perf_counter() - started
    page = tmp_path / "report" / "index.html"
    size = page.stat().st_size
    started = time.perf_counter()
    open_page(browser, page)
    assert _wait_for_rows(browser) == 100
    loaded = time.perf_counter() - started
    for _ in range(3):  # scrolling renders the next rows
        _run(browser, "window.scrollTo(0, document.body.scrollHeight)")
        _settle(browser, 0.4)
    assert _rows(browser) > 100
    assert console_errors(browser) == []
    print(
        f"\nICFG-PEDES-size report: written in {written:.1f} s, index.html {size / 1e6:.1f} MB, "
        f"loaded in the browser in {loaded:.2f} s, {_rows(browser)} rows after 3 scrolls"
    )
    assert loaded < 20
