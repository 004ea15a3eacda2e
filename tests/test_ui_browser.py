"""What a scientist sees in the Prefect UI, checked in a real browser (headless Chromium).

A small campaign runs through its deployment on the session's server (tests/prefect_lab.py); then
the run's page, its artifacts tab, every artifact of the server and the run form are opened in
Chromium. Every image must have loaded (a `file://` picture in an http page never does), the
summary must show its plots, and the SHAP table must show the signs of the effects as text.
Screenshots of whole pages go to $SDFL_SCREENSHOTS when it is set, for a person to look at (else
the first screen of each page goes to a temporary folder).

`make test` installs Debian's chromium when it is missing; where it cannot (no root, no apt), the
test is skipped and says why.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from prefect_lab import REACTOR

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IMAGES_LOADED = "() => Array.from(document.images).every(image => image.complete)"
IMAGE_WIDTHS = "() => Array.from(document.images).map(image => [image.src.slice(0, 60), image.naturalWidth])"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium when it runs as root with "
                    "apt-get); the browser checks of the Prefect UI did not run")
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package (dev extra) is missing")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SDFL_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def runs(ui_lab) -> dict:
    """The flows that make plots, started at once through their deployments on the reactor,
    which they take in turn: a 12-experiment optimization, a residence-time study and a 1 h lot.
    (A target campaign's Pareto front is embedded the same way: tests/test_targets.py.)"""
    root = ui_lab.data / "browser"
    started = {}
    for flow, parameters in (
            ("optimize", {"campaign": "browser", "budget": 12, "seed": 0}),
            ("residence-time-study", {"reaction_times_s": [25.0, 42.0], "follow_tau": 2.0}),
            ("manufacture", {"lot": "browser-lot", "recipe": {"temperature_c": 145.0}, "duration_h": 1.0,
                             "qualification_min": 20.0, "qualification_points": 10, "qc_every_min": 5.0,
                             "on_alarm": "continue", "auto_refill": True})):
        reply = ui_lab.trigger(flow, {**parameters, "platform": REACTOR, "data_root": str(root)})
        assert reply.status_code == 201, reply.text
        started[flow] = reply.json()
    for flow, run in started.items():
        state = ui_lab.wait(run["id"], timeout_s=400)
        assert state["type"] == "COMPLETED", (flow, ui_lab.logs(run["id"])[-3000:])
    return {**started, "root": root}


@pytest.fixture(scope="module")
def campaign_run(runs) -> dict:
    return {**runs["optimize"], "root": runs["root"]}


def ui(ui_lab) -> str:
    return ui_lab.api.removesuffix("/api")


def open_page(browser, url: str, shot: Path, height: int = 1000, images: int = 0):
    """Open `url`, wait until its `images` are there and complete, take a screenshot (the whole
    page when $SDFL_SCREENSHOTS asks for them); returns the page."""
    page = browser.new_page(viewport={"width": 1400, "height": height if os.environ.get("SDFL_SCREENSHOTS") else 1000})
    page.goto(url, wait_until="load" if images else "networkidle")  # the UI polls: idle takes seconds
    if images:
        page.wait_for_function(f"() => document.images.length >= {images}", timeout=20_000)
    else:
        page.wait_for_timeout(1000)  # the UI renders after its API calls return
    page.wait_for_function(IMAGES_LOADED, timeout=20_000)
    page.screenshot(path=str(shot), full_page=bool(os.environ.get("SDFL_SCREENSHOTS")))
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
    latest = ui_lab.http.post("/artifacts/latest/filter", json={"limit": 200}).json()  # one per key
    artifacts = [{**a, "id": a["latest_id"]} for a in latest if a["type"] in ("markdown", "image")]
    keys = {a["key"] for a in artifacts}
    assert {"browser-summary", "browser-best-so-far", "browser-best-spectra", "browser-shap",
            "browser-response-surface", "browser-latest-spectra",  # the campaign
            "residence-time-plot", "lot-browser-lot-report", "lot-browser-lot-control-charts"} <= keys, keys
    for artifact in artifacts:
        embedded = str(artifact["data"]).count("data:image/png;base64,")
        page = open_page(browser, f"{ui(ui_lab)}/artifacts/artifact/{artifact['id']}", shots / f"{artifact['key']}.png",
                         height=4000, images=embedded)
        widths = page.evaluate(IMAGE_WIDTHS)
        page.close()
        assert len(widths) >= embedded, (artifact["key"], widths)
        assert all(width > 0 for _, width in widths), (artifact["key"], widths)


def test_the_summary_shows_its_plots_and_a_caveat_for_a_small_campaign(ui_lab, campaign_run, browser, shots):
    summary = next(a for a in artifacts_of(ui_lab, campaign_run["id"]) if a["key"] == "browser-summary")
    page = open_page(browser, f"{ui(ui_lab)}/artifacts/artifact/{summary['id']}", shots / "summary-full.png", 5000,
                     images=5)
    text = page.inner_text("main") if page.query_selector("main") else page.inner_text("body")
    widths = page.evaluate(IMAGE_WIDTHS)
    page.close()
    titles = ["Objective per experiment", "Spectra of the best experiment", "How each input acts (SHAP)",
              "Which inputs matter", "Model response over the two most important inputs"]
    assert all(title in text for title in titles), text[:3000]
    assert len(widths) == len(titles) and all(w > 0 for _, w in widths), widths
    assert "not to be trusted yet: only 12 experiments for 7 inputs" in text  # 12 < 21: said in words


def test_the_shap_table_shows_the_sign_of_each_effect(ui_lab, campaign_run, browser, shots):
    shap = next(a for a in artifacts_of(ui_lab, campaign_run["id"]) if a["key"] == "browser-shap")
    page = open_page(browser, f"{ui(ui_lab)}/artifacts/artifact/{shap['id']}", shots / "shap-table.png", 3000)
    cells = page.eval_on_selector_all("table tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText))")
    page.close()
    ranking = pd.read_csv(campaign_run["root"] / "campaigns" / "browser" / "shap_ranking.csv")
    effects = [row[-1].strip() for row in cells[1:]]
    assert len(effects) == len(ranking), cells
    expected = {"+": "+ (a higher value raises it)", "-": "- (a higher value lowers it)", "mixed": "mixed"}
    assert effects == [expected[d] for d in ranking["direction"]]
    assert any(e.startswith("+") for e in effects) and any(e.startswith("-") for e in effects), effects


def test_the_runs_page_lists_its_artifacts(ui_lab, campaign_run, browser, shots):
    page = open_page(browser, f"{ui(ui_lab)}/runs/flow-run/{campaign_run['id']}", shots / "run.png")
    page.locator("[role=tablist] li", has_text="Artifacts").click()
    page.wait_for_timeout(1500)
    page.wait_for_function(IMAGES_LOADED, timeout=20_000)
    page.screenshot(path=str(shots / "run-artifacts.png"), full_page=True)
    text = page.inner_text("body")
    page.close()
    for key in ("browser-summary", "browser-trials", "browser-shap", "browser-best-spectra"):
        assert key in text, text[:2000]


def test_the_run_form_shows_ranges_and_no_type_noise(ui_lab, browser, shots):
    for flow in ("optimize", "run-experiment"):
        deployment = ui_lab.deployment(flow)
        page = open_page(browser, f"{ui(ui_lab)}/deployments/deployment/{deployment['id']}/run",
                         shots / f"form-{flow}.png", 3500)
        text = page.inner_text("body")
        page.close()
        assert 'Property is type "None"' not in text, text[:3000]
        shown = {"optimize": "experiments in total, failed ones included; at least 1 and at most 10000",
                 "run-experiment": "reactor temperature (degC); at least 120 and at most 150"}  # a field per parameter
        assert shown[flow] in text, text[:3000]


def test_every_experiment_records_the_flow_run_that_ran_it(campaign_run):
    rows = pd.read_parquet(campaign_run["root"] / "experiments" / "campaign=browser")
    assert len(rows) == 12 and set(rows["flow_run_id"]) == {campaign_run["id"]}
