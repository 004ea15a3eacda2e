"""What a scientist sees in the Prefect UI, checked in a real browser (headless Chromium).

A small campaign, a residence-time study and a lot run through their deployments on the session's
server (`ui_lab.report_runs()`, tests/prefect_lab.py); then the campaign's page, its artifacts tab,
every artifact of the server and the run form are opened in Chromium. Every image must have loaded
(a `file://` picture in an http page never does), the summary must show its plots, and the SHAP
table must show the signs of the effects as text. Screenshots of whole pages go to $SDFL_SCREENSHOTS
when it is set, for a person to look at (else the first screen of each page goes to a temporary
folder).

`make test` installs Debian's chromium when it is missing; where it cannot (no root, no apt), the
test is skipped and says why.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from prefect_lab import BUDGET, CAMPAIGN

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WAIT_MS = 60_000
"""How long a page may take to show what a test waits for: on a busy machine the UI can take many seconds."""
IMAGES_LOADED = "() => Array.from(document.images).every(image => image.complete)"
IMAGE_WIDTHS = "() => Array.from(document.images).map(image => [image.src.slice(0, 60), image.naturalWidth])"
PICTURE = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")
"""A picture embedded in an artifact's markdown."""
NAVIGATE = "url => { history.pushState(null, '', url); dispatchEvent(new PopStateEvent('popstate')); }"
"""Go to another page of the UI as its own links do: the app stays loaded and its router draws the page."""
SHOWS_ARTIFACT = """([id, run, pictures]) => {
    const text = document.body.innerText, shown = new Set(Array.from(document.images, image => image.src));
    return text.includes(id) && (!run || text.includes(run)) && pictures.every(picture => shown.has(picture))
        && Array.from(document.images).every(image => image.complete);
}"""
"""The page shows this artifact: its id in the title, its flow run's name beside it, every picture it
embeds; and every image of the page is done loading (or has failed to)."""
MISSING_PICTURES = "pictures => pictures.filter(p => !Array.from(document.images).some(i => i.src === p)).length"


@pytest.fixture(scope="module")
def browser():
    """Chromium, and one browser context for the module's pages: they share its HTTP cache, so the
    UI's scripts are fetched once."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium when it runs as root with "
                    "apt-get); the browser checks of the Prefect UI did not run")
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package (dev extra) is missing")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = launched.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(WAIT_MS)
        yield context
        context.close()
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SDFL_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def runs(ui_lab) -> dict:
    """The flows that make plots, started at once through their deployments on the reactor,
    which they take in turn: a BUDGET-experiment optimization, a residence-time study and a 1 h lot
    (`ui_lab.report_runs()`: run once per session; test_deployments.py checks the optimization's
    records). (A target campaign's Pareto front is embedded the same way: tests/test_targets.py.)"""
    return ui_lab.report_runs()


@pytest.fixture(scope="module")
def campaign_run(runs) -> dict:
    return {**runs["optimize"], "root": runs["root"]}


def ui(ui_lab) -> str:
    return ui_lab.api.removesuffix("/api")


def new_page(browser, height: int = 1000):
    """A new tab, `height` pixels high when $SDFL_SCREENSHOTS asks for whole pages."""
    page = browser.new_page()
    if os.environ.get("SDFL_SCREENSHOTS"):
        page.set_viewport_size({"width": 1400, "height": height})
    return page


def screenshot(page, shot: Path) -> None:
    page.screenshot(path=str(shot), full_page=bool(os.environ.get("SDFL_SCREENSHOTS")))


def wait_until(page, condition: str, arg=None) -> None:
    """Wait until the JavaScript `condition` (a function of `arg`) holds on the page; the UI draws
    a page after its API calls return, which can take many seconds on a busy machine. After WAIT_MS
    it returns anyway: the test's assertion then says what the page shows instead."""
    try:
        page.wait_for_function(condition, arg=arg, timeout=WAIT_MS)
    except pytest.importorskip("playwright.sync_api").TimeoutError:
        pass


def open_page(browser, url: str, shot: Path, height: int = 1000, images: int = 0, texts: tuple[str, ...] = ()):
    """Open `url`, wait until it shows `texts` and `images` images, all complete, take a screenshot
    (the whole page when $SDFL_SCREENSHOTS asks for them); returns the page."""
    page = new_page(browser, height)
    page.goto(url, wait_until="load")
    if texts:
        wait_until(page, "texts => texts.every(text => document.body.innerText.includes(text))", list(texts))
    page.wait_for_function(f"() => document.images.length >= {images}", timeout=WAIT_MS)
    page.wait_for_function(IMAGES_LOADED, timeout=WAIT_MS)
    screenshot(page, shot)
    return page


def artifacts_of(ui_lab, run_id: str | None = None) -> list[dict]:
    """Every artifact of the server (or of one flow run), newest first, page by page."""
    query = {"artifacts": {"flow_run_id": {"any_": [run_id]}}} if run_id else {}
    found: list[dict] = []
    while page := ui_lab.http.post("/artifacts/filter", json={**query, "sort": "CREATED_DESC", "limit": 200,
                                                            "offset": len(found)}).json():
        found += page
    return found


def test_no_artifact_points_at_a_file_on_the_workers_disk(ui_lab, runs, campaign_run):
    """A browser never loads file: images into an http page: every picture travels in the artifact."""
    for artifact in artifacts_of(ui_lab):
        text = str(artifact["data"])
        assert not (artifact["type"] == "image" and not text.startswith(("http://", "https://", "data:"))), artifact
        assert "](file:" not in text and "src=\"file:" not in text, artifact["key"]


def test_every_image_of_every_artifact_loads_in_the_browser(ui_lab, runs, campaign_run, browser,
                                                             shots):
    """One tab: the first artifact's page is loaded by its address, the others are reached from it
    as the UI's links do (loading the whole app for each costs seconds of CPU per artifact)."""
    latest = ui_lab.http.post("/artifacts/latest/filter", json={"limit": 200}).json()  # one per key
    artifacts = [{**a, "id": a["latest_id"]} for a in latest if a["type"] in ("markdown", "image")]
    keys = {a["key"] for a in artifacts}
    assert {f"{CAMPAIGN}-summary", f"{CAMPAIGN}-best-so-far", f"{CAMPAIGN}-best-spectra", f"{CAMPAIGN}-shap",
            f"{CAMPAIGN}-response-surface", f"{CAMPAIGN}-latest-spectra",  # the campaign
            "residence-time-plot", f"lot-{CAMPAIGN}-lot-report", f"lot-{CAMPAIGN}-lot-control-charts"} <= keys, keys
    run_names = {run: ui_lab.http.get(f"/flow_runs/{run}").json()["name"]
                 for run in {a["flow_run_id"] for a in artifacts} - {None}}
    page = new_page(browser, 4000)
    try:
        for n, artifact in enumerate(artifacts):
            pictures = PICTURE.findall(str(artifact["data"]))
            address = f"/artifacts/artifact/{artifact['id']}"
            if n == 0:
                page.goto(ui(ui_lab) + address, wait_until="load")
            else:
                page.evaluate(NAVIGATE, address)
            wait_until(page, SHOWS_ARTIFACT, [artifact["id"], run_names.get(artifact["flow_run_id"]), pictures])
            screenshot(page, shots / f"{artifact['key']}.png")
            text = page.inner_text("body")
            missing = page.evaluate(MISSING_PICTURES, pictures)
            widths = page.evaluate(IMAGE_WIDTHS)
            assert artifact["id"] in text, (artifact["key"], text[:1000])  # the page shows this artifact
            assert missing == 0, (artifact["key"], f"{missing} of {len(pictures)} pictures not shown", widths)
            assert all(width > 0 for _, width in widths), (artifact["key"], widths)
    finally:
        page.close()


def test_the_summary_shows_its_plots_and_a_caveat_for_a_small_campaign(ui_lab, campaign_run, browser, shots):
    summary = next(a for a in artifacts_of(ui_lab, campaign_run["id"]) if a["key"] == f"{CAMPAIGN}-summary")
    page = open_page(browser, f"{ui(ui_lab)}/artifacts/artifact/{summary['id']}", shots / "summary-full.png", 5000,
                     images=5)
    text = page.inner_text("main") if page.query_selector("main") else page.inner_text("body")
    widths = page.evaluate(IMAGE_WIDTHS)
    page.close()
    titles = ["Objective per experiment", "Spectra of the best experiment", "How each input acts (SHAP)",
              "Which inputs matter", "Model response over the two most important inputs"]
    assert all(title in text for title in titles), text[:3000]
    assert len(widths) == len(titles) and all(w > 0 for _, w in widths), widths
    assert f"not to be trusted yet: only {BUDGET} experiments for 7 inputs" in text  # BUDGET < 21: said in words


def test_the_shap_table_shows_the_sign_of_each_effect(ui_lab, campaign_run, browser, shots):
    shap = next(a for a in artifacts_of(ui_lab, campaign_run["id"]) if a["key"] == f"{CAMPAIGN}-shap")
    ranking = pd.read_csv(campaign_run["root"] / "campaigns" / CAMPAIGN / "shap_ranking.csv")
    page = open_page(browser, f"{ui(ui_lab)}/artifacts/artifact/{shap['id']}", shots / "shap-table.png", 3000,
                     images=len(PICTURE.findall(str(shap["data"]))))
    wait_until(page, "rows => document.querySelectorAll('table tr').length > rows", len(ranking))  # and a header
    cells = page.eval_on_selector_all("table tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText))")
    page.close()
    effects = [row[-1].strip() for row in cells[1:]]
    assert len(effects) == len(ranking), cells
    expected = {"+": "+ (a higher value raises it)", "-": "- (a higher value lowers it)", "mixed": "mixed"}
    assert effects == [expected[d] for d in ranking["direction"]]
    assert any(e.startswith("+") for e in effects) and any(e.startswith("-") for e in effects), effects


def test_the_runs_page_lists_its_artifacts(ui_lab, campaign_run, browser, shots):
    page = open_page(browser, f"{ui(ui_lab)}/runs/flow-run/{campaign_run['id']}", shots / "run.png",
                     texts=(campaign_run["name"], "optimize"))  # the run's name, then its flow's
    page.locator("[role=tablist] li", has_text="Artifacts").click()
    keys = [f"{CAMPAIGN}-summary", f"{CAMPAIGN}-trials", f"{CAMPAIGN}-shap", f"{CAMPAIGN}-best-spectra"]
    wait_until(page, "keys => keys.every(key => document.body.innerText.includes(key))", keys)
    page.wait_for_function(IMAGES_LOADED, timeout=WAIT_MS)
    screenshot(page, shots / "run-artifacts.png")
    text = page.inner_text("body")
    page.close()
    for key in keys:
        assert key in text, text[:2000]


def test_the_run_form_shows_ranges_and_no_type_noise(ui_lab, browser, shots):
    shown = {"optimize": "experiments in total, failed ones included; at least 1 and at most 10000",
             "run-experiment": "reactor temperature (degC); at least 120 and at most 150"}  # a field per parameter
    for flow in ("optimize", "run-experiment"):
        deployment = ui_lab.deployment(flow)
        page = open_page(browser, f"{ui(ui_lab)}/deployments/deployment/{deployment['id']}/run",
                         shots / f"form-{flow}.png", 3500, texts=(shown[flow],))  # the form can take seconds to render
        text = page.inner_text("body")
        page.close()
        assert 'Property is type "None"' not in text, text[:3000]
        assert shown[flow] in text, text[:3000]


def test_every_experiment_records_the_flow_run_that_ran_it(campaign_run):
    rows = pd.read_parquet(campaign_run["root"] / "experiments" / f"campaign={CAMPAIGN}")
    assert len(rows) == BUDGET and set(rows["flow_run_id"]) == {campaign_run["id"]}
