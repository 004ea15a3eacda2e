"""What a scientist sees in the Prefect UI, checked in a real browser (headless Chromium).

A small campaign runs through its deployment on the session's server (tests/prefect_lab.py); then
the run's page, its artifacts tab, every artifact of the server and the run form are opened in
Chromium. Every image must have loaded (a `file://` picture in an http page never does), the
summary must show its plots, and the SHAP table must show the signs of the effects as text.
Screenshots go to $SDFL_SCREENSHOTS when it is set (else a temporary folder) for a person to look at.

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
def campaign_run(lab) -> dict:
    """A 12-experiment optimization started through its deployment, as the UI's Run button does."""
    root = lab.data / "browser"
    reply = lab.trigger("optimize", {"campaign": "browser", "budget": 12, "platform": REACTOR,
                                     "data_root": str(root), "seed": 0})
    assert reply.status_code == 201, reply.text
    run = reply.json()
    state = lab.wait(run["id"], timeout_s=300)
    assert state["type"] == "COMPLETED", lab.logs(run["id"])[-3000:]
    return {**run, "root": root}


def ui(lab) -> str:
    return lab.api.removesuffix("/api")


def open_page(browser, url: str, shot: Path, height: int = 1000):
    """Open `url`, wait until every image is complete, take a full screenshot; returns the page."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(url, wait_until="networkidle")
    page.wait_for_timeout(1000)  # the UI renders after its API calls return
    page.wait_for_function(IMAGES_LOADED, timeout=20_000)
    page.screenshot(path=str(shot), full_page=True)
    return page


def artifacts_of(lab, run_id: str | None = None) -> list[dict]:
    query = {"artifacts": {"flow_run_id": {"any_": [run_id]}}} if run_id else {}
    return lab.http.post("/artifacts/filter", json={**query, "limit": 200}).json()


def test_no_artifact_points_at_a_file_on_the_workers_disk(lab, campaign_run):
    """A browser never loads file: images into an http page: every picture travels in the artifact."""
    for artifact in artifacts_of(lab):
        text = str(artifact["data"])
        assert not (artifact["type"] == "image" and not text.startswith(("http://", "https://", "data:"))), artifact
        assert "](file:" not in text and "src=\"file:" not in text, artifact["key"]


def test_every_image_of_every_artifact_loads_in_the_browser(lab, campaign_run, browser, shots):
    artifacts = [a for a in artifacts_of(lab) if a["type"] in ("markdown", "image")]
    keys = {a["key"] for a in artifacts}
    assert {"browser-summary", "browser-best-so-far", "browser-best-spectra", "browser-shap",
            "browser-response-surface", "browser-latest-spectra"} <= keys
    checked = set()
    for artifact in artifacts:
        if artifact["key"] in checked:  # one version of each key is enough
            continue
        checked.add(artifact["key"])
        page = open_page(browser, f"{ui(lab)}/artifacts/artifact/{artifact['id']}", shots / f"{artifact['key']}.png",
                         height=4000)
        widths = page.evaluate(IMAGE_WIDTHS)
        page.close()
        embedded = str(artifact["data"]).count("data:image/png;base64,")
        assert len(widths) >= embedded, (artifact["key"], widths)
        assert all(width > 0 for _, width in widths), (artifact["key"], widths)


def test_the_summary_shows_its_plots_and_a_caveat_for_a_small_campaign(lab, campaign_run, browser, shots):
    summary = next(a for a in artifacts_of(lab, campaign_run["id"]) if a["key"] == "browser-summary")
    page = open_page(browser, f"{ui(lab)}/artifacts/artifact/{summary['id']}", shots / "summary-full.png", 5000)
    text = page.inner_text("main") if page.query_selector("main") else page.inner_text("body")
    widths = page.evaluate(IMAGE_WIDTHS)
    page.close()
    titles = ["Objective per experiment", "Spectra of the best experiment", "How each input acts (SHAP)",
              "Which inputs matter", "Model response over the two most important inputs"]
    assert all(title in text for title in titles), text[:3000]
    assert len(widths) == len(titles) and all(w > 0 for _, w in widths), widths
    assert "not to be trusted yet: only 12 experiments for 7 inputs" in text  # 12 < 21: said in words


def test_the_shap_table_shows_the_sign_of_each_effect(lab, campaign_run, browser, shots):
    shap = next(a for a in artifacts_of(lab, campaign_run["id"]) if a["key"] == "browser-shap")
    page = open_page(browser, f"{ui(lab)}/artifacts/artifact/{shap['id']}", shots / "shap-table.png", 3000)
    cells = page.eval_on_selector_all("table tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText))")
    page.close()
    ranking = pd.read_csv(campaign_run["root"] / "campaigns" / "browser" / "shap_ranking.csv")
    effects = [row[-1].strip() for row in cells[1:]]
    assert len(effects) == len(ranking), cells
    expected = {"+": "+ (a higher value raises it)", "-": "- (a higher value lowers it)", "mixed": "mixed"}
    assert effects == [expected[d] for d in ranking["direction"]]
    assert any(e.startswith("+") for e in effects) and any(e.startswith("-") for e in effects), effects


def test_the_runs_page_lists_its_artifacts(lab, campaign_run, browser, shots):
    page = open_page(browser, f"{ui(lab)}/runs/flow-run/{campaign_run['id']}", shots / "run.png")
    page.locator("[role=tablist] li", has_text="Artifacts").click()
    page.wait_for_timeout(1500)
    page.wait_for_function(IMAGES_LOADED, timeout=20_000)
    page.screenshot(path=str(shots / "run-artifacts.png"), full_page=True)
    text = page.inner_text("body")
    page.close()
    for key in ("browser-summary", "browser-trials", "browser-shap", "browser-best-spectra"):
        assert key in text, text[:2000]


def test_the_run_form_shows_ranges_and_no_type_noise(lab, browser, shots):
    for flow in ("optimize", "run-experiment"):
        deployment = lab.deployment(flow)
        page = open_page(browser, f"{ui(lab)}/deployments/deployment/{deployment['id']}/run",
                         shots / f"form-{flow}.png", 3500)
        text = page.inner_text("body")
        page.close()
        assert 'Property is type "None"' not in text, text[:3000]
        assert "at least 1 and at most 10000" in text or flow != "optimize", text[:3000]
