"""The atlas site in a real headless Chromium (driven by Playwright): built by the CLI on the
default model (two layers, the second added to the first's site), every page crawled from
``file://`` with the network cut off, sorting and filtering clicked, and the numbers on the
unit pages compared with the results in the store."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

import pyanalyzer as pa
from pyanalyzer.data.broden import BrodenDataset
from tests.report.conftest import find_browser

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "default.onnx"
SETTINGS = ["--n-images", "120", "--steps", "8", "--invert-steps", "5", "--samples", "2"]
UNITS = {"relu5": list(range(10)), "relu6": list(range(6))}


def atlas_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYANALYZER_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "pyanalyzer", "atlas", *args],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"atlas {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("atlas-site")
    store, out = d / "store", d / "site"
    common = [str(MODEL), "--store", str(store), "--out", str(out)]
    first = atlas_cli(*common, "--layer", "relu5", "--units", "0-9", *SETTINGS, "--json")
    # the second layer is added to the site: its settings come from the site's manifest
    second = atlas_cli(*common, "--layer", "relu6", "--units", "0-5", "--json")
    return {
        "dir": d, "out": out, "store": store, "common": common,
        "first": json.loads(first.stdout), "second": json.loads(second.stdout),
    }  # fmt: skip


@pytest.fixture(scope="module")
def chromium():
    playwright = pytest.importorskip("playwright.sync_api")
    exe = find_browser()
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield browser
        browser.close()


class Watched:
    """A page whose console messages, failed requests and network attempts are recorded."""

    def __init__(self, browser, width: int = 375, height: int = 800, js: bool = True):
        self.context = browser.new_context(
            viewport={"width": width, "height": height}, java_script_enabled=js
        )
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.external: list[str] = []

        def route(r):
            if r.request.url.startswith("file:"):
                r.continue_()
            else:  # offline: nothing may leave the machine
                self.external.append(r.request.url)
                r.abort()

        self.context.route("**/*", route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type in ("error", "warning") and
                     self.errors.append(f"console {m.type}: {m.text}"))  # fmt: skip
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        # A lazy image that starts loading after the load event is aborted when the test moves
        # on to the next page (net::ERR_ABORTED, on a busy machine); a missing file fails
        # otherwise (net::ERR_FILE_NOT_FOUND) and is an error.
        self.page.on("requestfailed", lambda r: r.failure != "net::ERR_ABORTED" and
                     self.errors.append(f"failed: {r.url} ({r.failure})"))  # fmt: skip
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, path: Path) -> None:
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")

    def close(self) -> None:
        self.context.close()


def _local(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


def test_crawl_every_page(site, chromium):
    """From index.html, every link followed: every page loads with no console error, no failed
    or external request; every link and image resolves; every image has alt text and loads;
    nothing is wider than a 375 px window."""
    out = site["out"]
    w = Watched(chromium)
    seen: set[Path] = set()
    todo = deque([out / "index.html"])
    images_checked = 0
    try:
        while todo:
            page_path = todo.popleft().resolve()
            if page_path in seen:
                continue
            seen.add(page_path)
            w.open(page_path)
            page = w.page
            # load every image, lazy ones included, and wait for them
            page.evaluate("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
            page.wait_for_function("[...document.images].every(i => i.complete)")
            imgs = page.evaluate(
                "[...document.images].map(i => [i.src, i.alt, i.naturalWidth, i.naturalHeight])"
            )
            for src, alt, nw, nh in imgs:
                assert alt.strip(), f"an image without alt text on {page_path}: {src}"
                assert nw > 0 and nh > 0, f"{src} did not load on {page_path}"
                assert _local(src).is_file()
            images_checked += len(imgs)
            for href in page.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.href)"):
                assert href.startswith("file:"), f"an external link on {page_path}: {href}"
                target = _local(href)
                assert target.is_file(), f"a broken link on {page_path}: {href}"
                if target.suffix == ".html":
                    todo.append(target)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"{page_path} is {width} px wide at a 375 px window"
        assert w.errors == [] and w.external == []
    finally:
        w.close()
    pages = {p.resolve() for p in out.rglob("*.html")}
    assert seen == pages  # every page is reachable from the index
    assert len(pages) == 1 + 2 + len(UNITS["relu5"]) + len(UNITS["relu6"])
    for alias, units in UNITS.items():
        for u in units:  # the permalinks
            assert (out / "layers" / alias / "units" / f"{u}.html").is_file()
    assert images_checked > 200


def _cards(page) -> list[dict]:
    return page.evaluate(
        """[...document.querySelectorAll('#units .card')].map(c => ({
            unit: +c.dataset.unit, iou: +c.dataset.iou, label: c.dataset.label,
            category: c.dataset.category, detector: c.dataset.detector === '1',
            hidden: c.hidden, visible: c.offsetParent !== null}))"""
    )


def _stored_dissection(site, alias: str):
    model = pa.load_model(MODEL)
    store = pa.Store(site["store"])
    ds = BrodenDataset(site["dir"] / "concepts" / "synth-n120-s64-seed0")
    analysis = pa.Dissection(model, layers=[alias], store=store, progress=False)
    analysis.stored_only = True  # the stored result, nothing computed
    return model, store, ds, analysis.run(ds).layer(alias)


def test_sort_and_filter(site, chromium):
    _, _, _, d = _stored_dissection(site, "relu6")
    units = UNITS["relu6"]
    iou = {u: float(d.best_iou[u]) for u in units}
    label = {u: d.concept_names[int(d.best_concept[u])] if d.best_concept[u] else "" for u in units}
    category = {
        u: d.categories[int(d.concept_category[int(d.best_concept[u])])] if label[u] else ""
        for u in units
    }
    w = Watched(chromium, width=1000)
    try:
        w.open(site["out"] / "layers" / "relu6" / "index.html")
        page = w.page
        assert page.is_visible("#toolbar")
        assert [c["unit"] for c in _cards(page)] == units
        page.select_option("#sort", "iou")
        want = sorted(units, key=lambda u: (-iou[u], u))
        assert [c["unit"] for c in _cards(page)] == want
        page.select_option("#sort", "label")
        by_label = sorted(units, key=lambda u: (label[u] == "", label[u].lower(), -iou[u], u))
        assert [c["unit"] for c in _cards(page)] == by_label
        cats = sorted({c for c in category.values() if c})
        assert cats, "the test needs units with concepts"
        assert page.eval_on_selector_all("#category option", "o => o.map(x => x.value)") == [
            "",
            *cats,
        ]
        for cat in cats:
            page.select_option("#category", cat)
            shown = [c["unit"] for c in _cards(page) if c["visible"]]
            assert shown == [u for u in by_label if category[u] == cat]
            assert page.inner_text("#count") == f"{len(shown)} of {len(units)} units shown"
        page.select_option("#category", "")
        page.check("#detectors")
        shown = [c["unit"] for c in _cards(page) if c["visible"]]
        assert shown == [u for u in by_label if d.detectors[u]]
        # a link can ask for an order and a filter
        w.page.goto((site["out"] / "layers" / "relu6" / "index.html").as_uri() + "#sort=iou")
        w.page.reload()
        assert [c["unit"] for c in _cards(w.page)] == want
        assert w.errors == [] and w.external == []
    finally:
        w.close()


def test_without_javascript_every_card_shows(site, chromium):
    w = Watched(chromium, js=False)
    try:
        w.open(site["out"] / "layers" / "relu5" / "index.html")
        cards = _cards_no_js(w.page)
        assert cards == UNITS["relu5"]
        assert not w.page.is_visible("#toolbar")
    finally:
        w.close()


def _cards_no_js(page) -> list[int]:
    return [int(e.get_attribute("data-unit")) for e in page.locator("#units .card").all()]


def test_lazy_loading(site, chromium):
    """A page of a large layer fetches the images near the first screen only: a site of all
    128 units of relu6 (cheap settings), seen in a 375 x 500 window."""
    out = site["dir"] / "big"
    cheap = ["--steps", "2", "--samples", "0", "--projection", "none", "--top-k", "1"]
    atlas_cli(str(MODEL), "--store", str(site["store"]), "--out", str(out), "--layer", "relu6",
              "--n-images", "120", *cheap)  # fmt: skip
    w = Watched(chromium, width=375, height=500)
    try:
        w.open(out / "layers" / "relu6" / "index.html")
        w.page.wait_for_timeout(300)
        total = w.page.evaluate("document.querySelectorAll('#units img').length")
        fetched = [u for u in w.requests if "/img/" in u and u.endswith(".png")]
        assert total == 2 * 128
        assert 0 < len(fetched) < total / 2
        # scrolled to the end, the last cards' images arrive
        w.page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        w.page.wait_for_function(
            "[...document.querySelectorAll('#units .card:last-child img')].every("
            "i => i.complete && i.naturalWidth > 0)"
        )
        assert w.errors == []
    finally:
        w.close()


def test_unit_pages_show_the_stored_numbers(site, chromium):
    model, store, ds, d = _stored_dissection(site, "relu5")
    patches = pa.TopPatches(model, layer="relu5", units=UNITS["relu5"], k=9,
                            projection="deconv", store=store, progress=False)  # fmt: skip
    patches.stored_only = True
    top = patches.run(ds)
    act = pa.ActivationMaximization(model, layer="relu5", units=UNITS["relu5"], steps=8,
                                    store=store, progress=False)  # fmt: skip
    act.stored_only = True
    maxed = act.run()
    w = Watched(chromium, width=1000)
    try:
        for row, u in enumerate(UNITS["relu5"]):
            w.open(site["out"] / "layers" / "relu5" / "units" / f"{u}.html")
            s = w.page.eval_on_selector("#summary", "e => ({...e.dataset})")
            assert int(s["unit"]) == u
            assert float(s["iou"]) == float(d.best_iou[u])
            assert float(s["threshold"]) == float(d.thresholds[u])
            assert bool(int(s["detector"])) == bool(d.detectors[u])
            assert float(s["actmax"]) == float(maxed.reached[row])
            want = d.concept_names[int(d.best_concept[u])] if d.best_concept[u] else ""
            assert s["label"] == want
            concepts = w.page.eval_on_selector_all(
                "table.concepts tr[data-concept]",
                "r => r.map(x => [x.dataset.concept, +x.dataset.iou])",
            )
            row_iou = d.iou[u]
            order = [c for c in np.argsort(-row_iou, kind="stable")[:5] if row_iou[c] > 0]
            assert concepts == [[d.concept_names[c], float(row_iou[c])] for c in order]
            figs = w.page.eval_on_selector_all(
                "#patches figure", "f => f.map(x => [+x.dataset.image, +x.dataset.value])"
            )
            n = top.count(u)
            assert figs == [[int(top.images[u, j]), float(top.values[u, j])] for j in range(n)]
            masks = w.page.eval_on_selector_all(
                "#masks figure", "f => f.map(x => +x.dataset.image)"
            )
            assert masks == [int(i) for i in d.top_images[u, :5] if i >= 0]
            # the PNGs are the stored arrays
            unit_dir = site["out"] / "layers" / "relu5" / "img" / str(u)
            shown = np.asarray(Image.open(unit_dir / "actmax.png").convert("RGB"))
            np.testing.assert_array_equal(shown, maxed.images[row])
            t, left, b, r = top.box(u, 0)
            proj = np.asarray(Image.open(unit_dir / "proj-0.png").convert("RGB"))
            np.testing.assert_array_equal(proj, top.projections[u][0][t:b, left:r])
        assert w.errors == []
    finally:
        w.close()


def test_screenshots_are_not_blank(site, chromium):
    out = site["out"]
    w = Watched(chromium, width=1000, height=800)
    try:
        for page in (out / "index.html", out / "layers/relu6/index.html",
                     out / "layers/relu5/units/3.html"):  # fmt: skip
            w.open(page)
            shot = np.asarray(Image.open(io.BytesIO(w.page.screenshot())).convert("RGB"))
            assert shot.std() > 20, page
            assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 200, page
    finally:
        w.close()


def test_rebuilding_is_idempotent_and_computes_nothing(site):
    out = site["out"]
    before = tree_digest(out)
    again = json.loads(atlas_cli(*site["common"], "--json").stdout)
    assert [p for p in again["summary"]["parts"] if not p["from_store"]] == []
    assert tree_digest(out) == before
    # the first build computed everything; adding relu6 computed relu6 only
    assert all(not p["from_store"] for p in site["first"]["summary"]["parts"])
    computed = [p for p in site["second"]["summary"]["parts"] if not p["from_store"]]
    assert {p["layer"] for p in computed} == {"relu6"} and len(computed) == 4
    manifest = json.loads((out / "atlas.json").read_text())
    assert [(x["alias"], x["units"]) for x in manifest["layers"]] == list(UNITS.items())
    assert manifest["settings"]["steps"] == 8  # remembered from the first build


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--units", "0"], "--units applies to the --layer"),
        (["--layer", "nope"], "nope"),
        (["--layer", "relu5", "--units", "64"], "out of range"),
    ],
)
def test_cli_errors_on_an_existing_site(site, args, message):
    before = tree_digest(site["out"])
    proc = atlas_cli(*site["common"], *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert tree_digest(site["out"]) == before


def test_cli_refuses_other_folders(site, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    proc = atlas_cli(str(MODEL), "--layer", "relu5", "--out", str(other), check=False)
    assert proc.returncode == 2 and "holds no atlas" in proc.stderr
    assert sorted(os.listdir(other)) == ["notes.txt"]
    proc = atlas_cli(str(MODEL), "--out", str(tmp_path / "new"), check=False)
    assert proc.returncode == 2 and "give at least one --layer" in proc.stderr
    assert not (tmp_path / "new").exists()
    # the same network in another file (another digest) may not write into this site
    import onnx

    proto = onnx.load(MODEL)
    proto.doc_string = "a copy"
    onnx.save(proto, tmp_path / "copy.onnx")
    before = tree_digest(site["out"])
    proc = atlas_cli(str(tmp_path / "copy.onnx"), "--out", str(site["out"]), "--layer", "relu5",
                     "--store", str(site["store"]), check=False)  # fmt: skip
    assert proc.returncode == 2 and "holds the atlas of another model" in proc.stderr
    assert tree_digest(site["out"]) == before


def test_an_interrupted_atlas_keeps_its_finished_parts(tmp_path):
    """Ctrl-C in the middle: exit 130, no site written, and the next run takes the finished
    parts from the store."""
    import signal
    import time

    store, out = tmp_path / "store", tmp_path / "site"
    args = [sys.executable, "-m", "pyanalyzer", "atlas", str(MODEL), "--layer", "relu5",
            "--units", "0-3", "--store", str(store), "--out", str(out), "--n-images", "60",
            "--steps", "4000", "--samples", "0", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until the top patches are stored
            if proc.poll() is not None:
                break
            methods = [e.key.method for e in pa.Store(store).entries() if not e.key.is_partial]
            if methods.count("patches") == 2:  # the scan and the projections
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        time.sleep(1.0)  # into the activation maximization (4,000 steps)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert not (out / "index.html").exists()
    again = atlas_cli(str(MODEL), "--layer", "relu5", "--units", "0-3", "--store", str(store),
                      "--out", str(out), "--n-images", "60", "--steps", "4", "--samples", "0",
                      "--json")  # fmt: skip
    parts = {p["method"]: p["from_store"] for p in json.loads(again.stdout)["summary"]["parts"]}
    assert parts == {"dissect": True, "patches": True, "actmax": False}
    assert (out / "layers" / "relu5" / "units" / "3.html").is_file()
