"""The web leaderboard as a reader uses it, in headless Chromium: rows, sorting by a click on a
column header, filters, reported rows marked, CMC plots, report links, escaping."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tbps_bench.cli import main

from browser import chromium, console_errors, distinct_colours, network_requests, open_page
from paths import ROOT

COMMITTED = ROOT / "leaderboards"


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def _visible(browser, column: int) -> list[str]:
    return browser.execute_script(
        f"return [...document.querySelectorAll('#board tbody tr')].filter(r => !r.hidden)"
        f".map(r => r.cells[{column}].dataset.value ?? r.cells[{column}].textContent)"
    )


def test_the_committed_pages_sort_filter_and_mark_reported_rows(browser):
    network_requests(browser), browser.get_log("browser")
    open_page(browser, COMMITTED / "cuhk-pedes.html")
    frame = pd.read_csv(COMMITTED / "cuhk-pedes.csv")
    assert browser.execute_script("return document.querySelectorAll('#board tbody tr').length") == len(frame)
    reported = browser.execute_script("return document.querySelectorAll('#board tbody tr.reported').length")
    assert reported == int((frame["source"] != "this project").sum()) > 0
    header = browser.find_elements("css selector", "#board thead th")
    header[4].click()  # R@1
    values = [float(v) for v in _visible(browser, 4) if v != ""]
    assert values == sorted(values, reverse=True) and len(values) > 3
    header[4].click()
    values = [float(v) for v in _visible(browser, 4) if v != ""]
    assert values == sorted(values)
    browser.execute_script(
        "const s = document.querySelector('select[data-filter=direction]'); s.value = 'i2t';"
        "s.dispatchEvent(new Event('change'));"
    )
    directions = _visible(browser, 2)
    assert directions and set(directions) == {"i2t"}
    expected = int((frame["direction"] == "i2t").sum())
    assert (
        browser.execute_script("return document.getElementById('shown').textContent")
        == f"{expected} of {len(frame)} rows"
    )
    assert all(url.startswith("file://") for url in network_requests(browser))
    assert console_errors(browser) == []


def test_the_runs_page_shows_its_cmc_plots(browser):
    open_page(browser, COMMITTED / "toy-pedes.html")
    widths = browser.execute_script(
        "return [...document.querySelectorAll('.plots img')].map(i => i.complete && i.naturalWidth)"
    )
    assert len(widths) == 2 and all(w > 0 for w in widths)
    assert distinct_colours(browser.get_screenshot_as_png()) > 20
    open_page(browser, COMMITTED / "index.html")
    links = browser.execute_script("return [...document.querySelectorAll('#index a')].map(a => a.getAttribute('href'))")
    assert "cuhk-pedes.html" in links and all((COMMITTED / link).is_file() for link in links)


MALICIOUS = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def test_a_run_links_to_its_report_and_markup_stays_text(tmp_path, browser):
    from tbps_bench.harness import load_eval_split

    split = load_eval_split("toy-pedes", None, "test")
    scores = tmp_path / "scores.npz"
    similarity = np.random.default_rng(0).normal(size=(len(split.captions), len(split.image_paths)))
    np.savez(scores, similarity=similarity, text_ids=split.caption_pids.numpy(), image_ids=split.image_pids.numpy())
    results = tmp_path / "results"
    args = ["eval", "-m", "precomputed", "-d", "toy-pedes", "--save-rankings", "3", "--out", str(results)]
    assert main([*args, "--method-arg", f"file={scores}", "--method-arg", f"label={json.dumps(MALICIOUS)}"]) == 0
    result = next(results.rglob("*_test.json"))
    assert main(["report", str(result)]) == 0  # beside the result: <name>.report/
    out = tmp_path / "lb"
    assert (
        main(["leaderboard", "build", "--results", str(results), "--out", str(out), "--reported", str(tmp_path)]) == 0
    )
    assert (
        main(
            [
                "leaderboard",
                "build",
                "--results",
                str(results),
                "--out",
                str(out),
                "--reported",
                str(tmp_path),
                "--check",
            ]
        )
        == 0
    )
    open_page(browser, out / "toy-pedes.html")
    assert browser.execute_script("return window.pwned === undefined")
    assert MALICIOUS in browser.execute_script("return document.body.innerText")
    link = browser.execute_script("return document.querySelector('#board a').getAttribute('href')")
    assert (out / link).resolve() == (result.with_name(result.stem + ".report") / "index.html").resolve()
    browser.find_element("css selector", "#board a").click()
    assert browser.execute_script("return document.querySelectorAll('#queries .query').length") > 0
    assert console_errors(browser) == []
