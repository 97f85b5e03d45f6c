"""The review app in a real browser: Debian's Chromium, headless, driven by Selenium through Debian's
chromium-driver (nothing downloads a browser).  A signer logs in, opens a processed sample, moves three
cells by keyboard, confirms the REVIEW cells, signs, and the final JSON/FHIR say so; a reviewer has no sign
action and a forged CSRF token is refused.  With ``WBC_SCREENSHOTS=DIR`` the worklist and slide view are
saved there as PNG (docs/images/ is made this way).  Skipped, with the reason, where Chromium or its driver
is not installed (``.ci/run`` installs both)."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import CELLS, served

from wbcproc.classes import CLASSES
from wbcproc.pipeline import process_sample
from wbcproc.review.accounts import add_account
from wbcproc.review.app import ReviewConfig, create_app

PASSWORD = "a long enough password"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="Chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def _login(driver, url: str, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(url + "/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login").click()
    assert driver.find_element(By.ID, "awaiting")


def _shot(driver, name: str) -> None:
    folder = os.environ.get("WBC_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def _wait(driver, condition, seconds: float = 15):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(condition)


def _press(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def _settled(driver) -> None:
    """Every save sent and answered (the page's queue of saves is empty)."""
    _wait(
        driver, lambda d: d.execute_async_script("const done = arguments[0]; window.WBC.idle().then(() => done(true));")
    )


def test_review_three_cells_by_keyboard_confirm_and_sign(tmp_path, sample, tiny_model, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    reports = tmp_path / "reports"
    process_sample(sample, reports, model=tiny_model)
    prelim = json.loads((reports / "S-001.json").read_text())
    accounts = tmp_path / "accounts.json"
    add_account(accounts, "ana", PASSWORD, role="signer", display="Dr A. Example")
    add_account(accounts, "rob", PASSWORD, role="reviewer")
    with served(create_app(ReviewConfig(reports=reports, accounts=accounts))) as url:
        _login(browser, url, "ana")
        _shot(browser, "review-worklist.png")
        browser.find_element(By.CSS_SELECTOR, "#awaiting a.open").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".cell.focus"))
        moved: list[tuple[str, str]] = []
        for _ in range(3):  # reclassify the focused cell by its number key (the focus steps on by itself)
            cell = browser.find_element(By.CSS_SELECTOR, ".cell.focus")
            while cell.get_attribute("data-file") in {f for f, _ in moved}:  # a moved cell: the arrow key on
                _press(browser, Keys.ARROW_RIGHT)
                cell = browser.find_element(By.CSS_SELECTOR, ".cell.focus")
            file, was = (
                cell.get_attribute("data-file"),
                cell.find_element(By.XPATH, "../..").get_attribute("data-class"),
            )
            to = next(c for c in ("monocyte", "eosinophil", "basophil", "lymphocyte") if c != was)
            _press(browser, str(CLASSES.index(to) + 1))
            moved.append((file, to))
            _settled(browser)
        # confirm every REVIEW cell still open: select a cell of each class and confirm its marked cells at once
        for klass in [k.get_attribute("data-class") for k in browser.find_elements(By.CSS_SELECTOR, ".klass")]:
            browser.find_element(By.CSS_SELECTOR, f'.klass[data-class="{klass}"] .cell').click()
            ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
            _settled(browser)
        _wait(browser, lambda d: d.find_element(By.ID, "open").text == "0")
        assert browser.find_element(By.ID, "changed").text == "3"
        _shot(browser, "review-slide.png")
        browser.find_element(By.ID, "sign").click()
        browser.switch_to.alert.accept()
        _wait(browser, lambda d: d.find_element(By.ID, "signed").text.startswith("Signed:"))
        final = json.loads((reports / "S-001.final.json").read_text())
        assert final["status"] == "final" and final["verified_by"] == "Dr A. Example"
        assert {(c["file"], c["verified_class"]) for c in final["changes"]} == set(moved)
        assert all(c["reviewed"] for c in final["cells"] if c["file"] in {m[0] for m in moved})
        fhir = json.loads((reports / "S-001.final.fhir.json").read_text())
        report = next(e["resource"] for e in fhir["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
        assert report["status"] == "final"
        audit = [json.loads(line) for line in (reports / "audit.jsonl").read_text().splitlines()]
        assert audit[-1]["account"] == "ana" and audit[-1]["channel"] == "browser"

        # a reviewer: no sign action on the page, and the server refuses it too; a forged token is refused
        _login(browser, url, "rob")
        browser.get(f"{url}/slides/{prelim['report_id']}")
        assert not browser.find_elements(By.ID, "sign")
        post = """const [path, token, done] = arguments;
            fetch(path, {method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": token},
                         body: JSON.stringify({base_version: 0, changes: {}})}).then(r => done(r.status));"""
        base = f"/slides/{prelim['report_id']}"
        assert browser.execute_async_script(post, base + "/sign", browser.execute_script("return WBC.csrf")) == 403
        assert browser.execute_async_script(post, base + "/draft", "forged") == 403
        assert browser.execute_async_script(post, base + "/draft", browser.execute_script("return WBC.csrf")) == 200


def _processed(tmp_path, folder: Path, model) -> tuple[Path, str]:
    """``folder`` processed into ``tmp_path/reports``; that folder and the report's id."""
    reports = tmp_path / "reports"
    process_sample(folder, reports, model=model)
    return reports, json.loads((reports / f"{folder.name}.json").read_text())["report_id"]


@contextmanager
def _reviewer_on_slide(tmp_path, reports: Path, rid: str, browser):
    """The review app over ``reports``, a reviewer logged in on the slide ``rid`` with its cells shown."""
    from selenium.webdriver.common.by import By

    accounts = tmp_path / "accounts.json"
    add_account(accounts, "rob", PASSWORD, role="reviewer")
    with served(create_app(ReviewConfig(reports=reports, accounts=accounts))) as url:
        _login(browser, url, "rob")
        browser.get(f"{url}/slides/{rid}")
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".cell.focus"))
        yield url


def test_a_cell_dragged_onto_a_class_takes_that_class(tmp_path, sample, tiny_model, browser):
    """Drag and drop beside the keys: a cell dropped on the bar of classes (here a class with no cell on the
    slide) moves there at once and is saved as a draft on the server."""
    from selenium.webdriver.common.by import By

    from wbcproc.review.drafts import load_draft, reviewed_classes

    reports, rid = _processed(tmp_path, sample, tiny_model)
    with _reviewer_on_slide(tmp_path, reports, rid, browser):
        shown = {k.get_attribute("data-class") for k in browser.find_elements(By.CSS_SELECTOR, ".klass")}
        to = next(c for c in reversed(CLASSES) if c not in shown) if len(shown) < len(CLASSES) else CLASSES[0]
        cell = browser.find_element(By.CSS_SELECTOR, f'.klass:not([data-class="{to}"]) .cell')
        file = cell.get_attribute("data-file")
        target = browser.find_element(By.CSS_SELECTOR, f'.dropbar .drop[data-class="{to}"]')
        browser.execute_script(
            """const [cell, target] = arguments; const dt = new DataTransfer();
            cell.dispatchEvent(new DragEvent("dragstart", {bubbles: true, dataTransfer: dt}));
            target.dispatchEvent(new DragEvent("dragover", {bubbles: true, cancelable: true, dataTransfer: dt}));
            target.dispatchEvent(new DragEvent("drop", {bubbles: true, cancelable: true, dataTransfer: dt}));""",
            cell,
            target,
        )
        _settled(browser)
        moved = browser.find_elements(By.CSS_SELECTOR, f'.klass[data-class="{to}"] .cell[data-file="{file}"]')
        assert moved and "changed" in moved[0].get_attribute("class")
    assert reviewed_classes(load_draft(reports, rid)) == {file: to}


def test_the_enlarged_view_of_a_field_cell_shows_its_field_with_the_cell_outlined(tmp_path, tiny_model, browser):
    from selenium.webdriver.common.by import By

    fields = tmp_path / "F-1"
    shutil.copytree(CELLS.parent / "fields", fields)
    reports, rid = _processed(tmp_path, fields, tiny_model)
    with _reviewer_on_slide(tmp_path, reports, rid, browser):
        _press(browser, "z")
        overview = browser.find_element(By.CSS_SELECTOR, "#zoom .field .overview img")
        _wait(
            browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overview)
        )
        box = browser.find_element(By.CSS_SELECTOR, "#zoom .field .box")
        size = browser.execute_script(
            "const b = arguments[0].getBoundingClientRect(), i = arguments[1].getBoundingClientRect();"
            "return [b.width, b.height, b.left - i.left, b.top - i.top, i.width, i.height];",
            box,
            overview,
        )
        w, h, left, top, img_w, img_h = size
        assert w > 10 and h > 10 and left >= 0 and top >= 0 and left + w <= img_w + 1 and top + h <= img_h + 1
        assert "Field " in browser.find_element(By.CSS_SELECTOR, "#zoom figcaption").text
        _shot(browser, "review-field.png")
