"""`onnxplain audit`: thresholds and exit codes, partial reports on interrupt, and the HTML report in a real
headless Chromium (renders, every image loads, a header click sorts the rows; screenshot under test-artifacts/).

The browser test needs Debian's chromium and chromium-driver and selenium from PyPI; without them it fails
with the install line (set ONNXPLAIN_SKIP_BROWSER=1 to skip it deliberately).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

import helpers
from onnxplain import metrics
from onnxplain.audit import METRICS, Threshold, check_thresholds, parse_threshold, run_audit, AuditOptions
from onnxplain.cli import main
from onnxplain.cli.audit import audit_command
from onnxplain.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
CLI = main
INSTALL = ("apt-get install -y chromium chromium-driver && pip install selenium "
           "(or set ONNXPLAIN_SKIP_BROWSER=1 to skip this test)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three random 32x32 PNGs (one in a subfolder) and a boxes file for two of them."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    for path, image in zip(["a.png", "b.png", "sub/c.png"], helpers.random_images(3, seed=11)):
        cv2.imwrite(str(root / path), image)
    r0, r1, c0, c1 = helpers.REGION
    (root / "boxes.json").write_text(json.dumps({"a.png": [[c0, r0, c1, r1]], "sub/c.png": [[0, 0, 2, 2]]}))
    return root


def audit(*args: str):
    return CliRunner().invoke(CLI, ["audit", *args])


# ---- thresholds ----------------------------------------------------------------------------------
def test_parse_threshold():
    assert parse_threshold("insertion=0.3") == Threshold("insertion", None, 0.3, "under")
    assert parse_threshold("insertion:grad-cam=.25") == Threshold("insertion", "grad-cam", 0.25, "under")
    assert parse_threshold("deletion=0.2", "over") == Threshold("deletion", None, 0.2, "over")
    for text, bound, message in [("insertion", "under", "not METRIC=VALUE"), ("insertion=abc", "under", "not METRIC"),
                                 ("accuracy=0.5", "under", "unknown metric"), ("deletion=0.2", "under", "--fail-over"),
                                 ("top1_agreement:cam=1", "under", "one value")]:
        with pytest.raises(UserError, match=message):
            parse_threshold(text, bound)


def test_check_thresholds():
    summary = {"methods": {"a": {"insertion": 0.4, "pointing": None}, "b": {"insertion": 0.2}},
               "top1_agreement": 0.9}
    gates = [parse_threshold("insertion=0.3"), parse_threshold("insertion:a=0.3"), parse_threshold("pointing:a=0.5"),
             parse_threshold("top1_agreement=0.95")]
    assert check_thresholds(summary, gates) == [
        "insertion[b] = 0.2000 is under 0.3", "pointing[a] has no value (nothing was measured for it), required "
        "under limit 0.5", "top1_agreement = 0.9000 is under 0.95"]


def test_cli_baseline_choices_match_the_metrics():
    choices = next(p for p in audit_command.params if p.name == "deletion_baseline").type.choices
    assert tuple(choices) == metrics.BASELINES
    assert {"insertion", "deletion", "pointing", "top1_agreement"} <= set(METRICS)


# ---- the command -----------------------------------------------------------------------------------
def test_cli_exit_codes(region_model, folder, tmp_path):
    common = [str(region_model), str(folder), "--methods", "eigen-cam", "--preset", "raw01", "--no-sanity",
              "--steps", "8"]
    bad = audit(*common, "--out", str(tmp_path / "bad"), "--fail-under", "insertion=1.5",
                "--fail-under", "insertion:eigen-cam=0")
    assert bad.exit_code == 1, bad.output
    assert "FAIL insertion[eigen-cam]" in bad.output and "is under 1.5" in bad.output
    report = json.loads((tmp_path / "bad" / "audit.json").read_text())
    assert report["violations"] and report["complete"] and report["summary"]["images"] == 3
    good = audit(*common, "--out", str(tmp_path / "good"), "--fail-under", "insertion=0", "--fail-over",
                 "deletion=1", "--limit", "2")
    assert good.exit_code == 0, good.output
    assert json.loads((tmp_path / "good" / "audit.json").read_text())["summary"]["images"] == 2
    assert (tmp_path / "good" / "audit.html").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--fail-under", "insertion"], "is not METRIC=VALUE"),
    (["--fail-under", "deletion=0.3"], "--fail-over deletion=0.3"),
    (["--fail-under", "pointing=0.5"], "needs --boxes"),
    (["--methods", "no-such-method"], "Unknown method"),
    (["--boxes", "missing.json"], "does not exist"),
    (["-p", "eigen-cam:nope=1"], "no parameter 'nope'"),
])
def test_cli_user_errors_exit_2_with_one_sentence(region_model, folder, tmp_path, extra, message):
    args = [str(region_model), str(folder), "--methods", "eigen-cam", "--preset", "raw01", "--out",
            str(tmp_path / "out")]
    result = audit(*args, *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # checked before any work


def test_cli_full_audit_with_compare_boxes_and_sanity(region_model, folder, tmp_path):
    out = tmp_path / "out"
    result = audit(str(region_model), str(folder), "--methods", "eigen-cam", "--preset", "raw01", "--compare",
                   str(region_model), "--boxes", str(folder / "boxes.json"), "--out", str(out), "--steps", "8",
                   "--sanity-images", "1", "--fail-under", "top1_agreement=0.95", "--fail-under",
                   "drift_spearman=0.99")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "audit.json").read_text())
    summary = report["summary"]
    assert summary["top1_agreement"] == 1.0 and summary["top5_overlap"] == 1.0
    method = summary["methods"]["eigen-cam"]
    assert method["drift_spearman"] == pytest.approx(1.0) and method["pointing_images"] == 2
    assert {r["image"] for r in report["images"]} == {"a.png", "b.png", "sub/c.png"}
    a = next(r for r in report["images"] if r["image"] == "a.png")
    assert a["methods"]["eigen-cam"]["pointing"] is True  # RegionNet's maps peak inside REGION
    assert len(a["methods"]["eigen-cam"]["curves"]["deletion"]) == 9
    assert report["sanity"]["eigen-cam"]["steps"] and "passed" in report["sanity"]["eigen-cam"]


def test_interrupt_writes_the_partial_report(region_model, folder, tmp_path, monkeypatch):
    calls = []
    original = metrics.deletion_insertion

    def interrupt_on_second_image(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(metrics, "deletion_insertion", interrupt_on_second_image)
    out = tmp_path / "out"
    result = audit(str(region_model), str(folder), "--methods", "eigen-cam", "--preset", "raw01", "--steps", "4",
                   "--out", str(out))
    assert result.exit_code == 130, result.output
    assert "partial report" in result.output
    report = json.loads((out / "audit.json").read_text())
    assert report["complete"] is False and report["summary"]["images"] == 1
    assert "Incomplete" in (out / "audit.html").read_text()


# ---- the report's escaping ----------------------------------------------------------------------
HOSTILE = "<script>alert(1)</script>"


def test_report_escapes_file_and_method_names(region_model, tmp_path):
    """An image file named like an HTML tag and a method name holding <script> (in table headers, the summary,
    the curves' captions and the thresholds banner) come out as text: the report's only script element is its
    own sorting code."""
    from html.parser import HTMLParser

    from onnxplain.report import render_html

    folder = tmp_path / "images"
    folder.mkdir()
    name = "<img src=x onerror=alert(1)>.png"
    cv2.imwrite(str(folder / name), helpers.random_images(1, seed=3)[0])
    out = tmp_path / "out"
    run_audit(region_model, folder, out, AuditOptions(methods=("eigen-cam",), steps=4, sanity_images=0),
              preset="raw01", quiet=True)
    report = json.loads((out / "audit.json").read_text())
    assert [r["image"] for r in report["images"]] == [name]
    # the method renamed to a hostile name everywhere the report names it
    report["options"]["methods"] = [HOSTILE]
    report["summary"]["methods"] = {HOSTILE: report["summary"]["methods"]["eigen-cam"]}
    for record in report["images"]:
        record["methods"] = {HOSTILE: record["methods"]["eigen-cam"]}
    report["thresholds"], report["violations"] = [{"metric": f"insertion[{HOSTILE}]", "bound": "under",
                                                   "value": 0.0}], []
    page = render_html(report, {})

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.tags, self.headers, self.in_th = [], [], False

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.in_th = tag == "th"

        def handle_data(self, data):
            if self.in_th:
                self.headers.append(data)

    parsed = Tags()
    parsed.feed(page)
    assert parsed.tags.count("script") == 1 and "img" not in parsed.tags  # no thumbnails given: no img at all
    assert f"{HOSTILE} deletion" in parsed.headers and HOSTILE in parsed.headers
    assert f"&lt;script&gt;alert(1)&lt;/script&gt; deletion</th>" in page
    assert "&lt;img src=x onerror=alert(1)&gt;.png</td>" in page
    assert "All thresholds met (insertion[&lt;script&gt;alert(1)&lt;/script&gt;] &ge; 0)." in page


# ---- the report in a real browser ----------------------------------------------------------------
def chromium_driver():
    """A headless Chromium driven by chromedriver, or pytest.fail naming what to install."""
    if os.environ.get("ONNXPLAIN_SKIP_BROWSER") == "1":
        pytest.skip("ONNXPLAIN_SKIP_BROWSER=1")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed; install the browser test's needs: {INSTALL}")
    if not browser or not driver_path:
        pytest.fail(f"chromium or chromedriver is not on PATH; install them: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,2000",
                f"--user-data-dir={tempfile.mkdtemp(prefix='onnxplain-chromium-')}"]:
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_report_in_headless_chromium(region_model, folder, tmp_path):
    from selenium.webdriver.common.by import By
    out = tmp_path / "out"
    run_audit(region_model, folder, out, AuditOptions(methods=("eigen-cam",), steps=8, sanity_images=1),
              compare=region_model, boxes=folder / "boxes.json", preset="raw01", quiet=True)
    driver = chromium_driver()
    try:
        driver.get((out / "audit.html").resolve().as_uri())
        assert driver.title == "onnxplain audit"
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert len(images) >= 3 * 2 + 1 and all(done and width > 0 for done, width in images)
        table = driver.find_element(By.ID, "images-table")
        header = next(th for th in table.find_elements(By.CSS_SELECTOR, "thead th") if th.text == "confidence")
        column = header.get_attribute("cellIndex")

        def values():
            return driver.execute_script(
                "return Array.from(document.querySelectorAll('#images-table tbody tr')).map("
                "r => [r.getAttribute('data-image'), Number(r.cells[arguments[0]].getAttribute('data-value'))])",
                int(column))

        before = values()
        header.click()
        ascending = values()
        header.click()
        descending = values()
        assert [v for _, v in ascending] == sorted(v for _, v in before)
        assert [v for _, v in descending] == sorted((v for _, v in before), reverse=True)
        assert len({v for _, v in before}) == 3  # distinct values: the two orders are each other's reverse
        assert [n for n, _ in ascending] == [n for n, _ in descending][::-1]
        assert ascending != descending  # each click reorders the rows
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        assert driver.save_screenshot(str(artifacts / "audit-report.png"))
    finally:
        driver.quit()


# ---- streaming: the log, thumbnail files, the plan --------------------------------------------------
def test_audit_streams_to_a_log_and_plans_its_cost_first(region_model, folder, tmp_path, capsys):
    """Records go to audit.log.jsonl as they are made (the report is built from it once), thumbnails to
    thumbs/*.png; the plan printed first counts forwards: eigen-cam 2 per image, 2 (steps + 1) per curve pair."""
    out = tmp_path / "out"
    report = run_audit(region_model, folder, out, AuditOptions(methods=("eigen-cam",), steps=8, sanity_images=1,
                                                               sanity_steps=2), preset="raw01", quiet=False)
    lines = (out / "audit.log.jsonl").read_text().splitlines()
    assert [json.loads(line)["image"] for line in lines] == ["a.png", "b.png", "sub/c.png"]
    assert [r["image"] for r in report["images"]] == ["a.png", "b.png", "sub/c.png"]
    thumbs = sorted(p.name for p in (out / "thumbs").glob("*.png"))
    assert {"0__image.png", "0__eigen-cam.png", "2__eigen-cam.png", "sanity__eigen-cam__original.png"} <= set(thumbs)
    cost = report["cost"]
    # measured on the first image: one forward plus the auto layer's one-off probe, times 3 images
    assert cost["forwards"]["explain"] == {"eigen-cam": 6}
    assert cost["forwards"]["deletion_insertion"] == {"eigen-cam": 3 * 18}
    assert cost["sanity_models"] == 4 and cost["forwards"]["sanity"] == {"eigen-cam": 8}  # each twin probes once
    assert cost["total_forwards"] == 6 + 54 + 8
    assert "audit plan: 3 images, 68 forward passes" in capsys.readouterr().err
    seconds = cost["seconds"]   # each step: its runs times its variant's measured unit
    assert seconds["explain"]["eigen-cam"] == pytest.approx(3 * cost["seconds_per_image"]["eigen-cam"])
    assert seconds["compare"] == {} and seconds["sanity"]["eigen-cam"] > cost["seconds_per_image"]["eigen-cam"]
    assert cost["estimated_seconds"] == round(sum(sum(step.values()) for step in seconds.values()), 1)
    html = (out / "audit.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 * 2 + 1


def test_report_curves_have_axes_ticks_units_and_a_legend(region_model, tmp_path):
    """Each mean-curve chart carries an x axis in percent of pixels (ticks 0, 50, 100), a y axis naming the
    score's unit with ticks at the range's ends (min(0, lowest) .. max(1, highest)), and a legend per curve."""
    import re

    from onnxplain.report import render_html, y_ticks

    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), helpers.random_images(1, seed=4)[0])
    out = tmp_path / "out"
    run_audit(region_model, folder, out, AuditOptions(methods=("eigen-cam",), steps=4, sanity_images=0),
              preset="raw01", quiet=True)
    report = json.loads((out / "audit.json").read_text())
    page = render_html(report, {})
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert "pixels deleted / inserted (%)" in svg and "target probability" in svg
    assert [t for t in re.findall(r'class="tick"[^>]*>([^<]+)<', svg)][-3:] == ["0", "50", "100"]
    assert re.findall(r'class="legend"[^>]*fill="(#\w+)">(\w+)<', svg) == [("#c0392b", "deletion"),
                                                                          ("#2460a7", "insertion")]
    assert [label for label, _ in y_ticks({"deletion": [0.2, 1.4]}, 100, 5)] == ["0", "0.7", "1.4"]
    assert [y for _, y in y_ticks({"deletion": [0.2, 0.4]}, 100, 5)] == ["95.0", "50.0", "5.0"]


def test_plan_seconds_scale_with_each_variants_runs():
    """Seconds per step are the step's runs times the unit measured on the model that runs it: the first model's
    explanations and curves per image, the second model's own time per image, and per randomised twin its
    build and first image plus the other sanity images at the first model's rate (and the original maps once)."""
    from onnxplain.audit_log import plan_seconds
    units = {"explain": {"a": 0.5, "b": 2.0}, "deletion_insertion": {"a": 0.25, "b": 0.25}, "compare": {"a": 3.0},
             "twin": {"a": 1.0, "b": 4.0}}
    three, six = plan_seconds(units, 3, 4, 2), plan_seconds(units, 6, 4, 2)
    assert three["explain"] == {"a": 1.5, "b": 6.0} and six["explain"] == {"a": 3.0, "b": 12.0}
    assert three["deletion_insertion"] == {"a": 0.75, "b": 0.75} and six["deletion_insertion"] == {"a": 1.5, "b": 1.5}
    assert three["compare"] == {"a": 9.0} and six["compare"] == {"a": 18.0}   # the second model's rate, not the first's
    assert three["sanity"] == six["sanity"] == {"a": 2 * 0.5 + 4 * (1.0 + 0.5), "b": 2 * 2.0 + 4 * (4.0 + 2.0)}
    assert plan_seconds(units, 3, 8, 2)["sanity"] == {"a": 1.0 + 8 * 1.5, "b": 4.0 + 8 * 6.0}   # twice the twins
