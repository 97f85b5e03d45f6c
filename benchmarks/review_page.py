"""How fast the review app shows a real slide: a 400-cell sample's page, in Chromium.

    python benchmarks/review_page.py --cells ../shared/data/pbc --n 400 --repeats 5

Processes one sample of ``--n`` real single-cell images (taken evenly from the class folders under
``--cells``) with the model in use, serves the report with the review app on a loopback port, and opens the
slide view in headless Chromium (Debian's, through chromium-driver) as a logged-in signer.  Printed: the
server's time for the page (HTML with the cells' state) and for the state JSON, and in the browser the time
from navigation to the gallery drawn and to every thumbnail loaded - first visit (thumbnails read from the
workbook) and a reload (thumbnails from the browser's cache), median of ``--repeats``.  Also the time of one
save (a reclassified cell, answered with the recomputed differential).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _machine import machine
from helpers import served

from wbcproc.pipeline import process_sample
from wbcproc.review.accounts import add_account
from wbcproc.review.app import ReviewConfig, create_app

PASSWORD = "benchmark password"


def sample_of(cells: Path, n: int, dest: Path) -> Path:
    classes = sorted(d for d in cells.iterdir() if d.is_dir())
    per = [sorted(d.glob("*.jpg")) + sorted(d.glob("*.png")) for d in classes]
    picked: list[Path] = []
    i = 0
    while len(picked) < n and any(i < len(p) for p in per):
        picked += [p[i] for p in per if i < len(p)]
        i += 1
    dest.mkdir(parents=True)
    for k, f in enumerate(picked[:n]):
        shutil.copy(f, dest / f"{k:04d}_{f.name}")
    return dest


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


DRAWN = """const done = arguments[0];
function check() {
  const all = [...document.querySelectorAll('#gallery img')];
  const seen = all.filter((i) => i.getBoundingClientRect().top < window.innerHeight);  // the rest load lazily
  if (seen.length && seen.every((i) => i.complete && i.naturalWidth > 0)) {
    const nav = performance.getEntriesByType('navigation')[0];
    done({dom: nav.domContentLoadedEventEnd, images: performance.now(), n: seen.length, cells: all.length});
  } else setTimeout(check, 5);
}
check();"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=Path, required=True, help="class folders of single-cell images")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sample = sample_of(args.cells, args.n, root / "S-400")
        t = time.perf_counter()
        paths = process_sample(sample, root / "reports", model=args.model)
        report = json.loads(paths["json"].read_text())
        print(
            f"processed {len(report['cells'])} cells in {time.perf_counter() - t:.1f} s ({report['model']['version']})"
        )
        add_account(root / "accounts.json", "bench", PASSWORD, role="signer")
        app = create_app(ReviewConfig(reports=root / "reports", accounts=root / "accounts.json"))
        with served(app) as url:
            measure(url, report, args.repeats)


def measure(url: str, report: dict, repeats: int) -> None:
    rid = report["report_id"]
    web = httpx.Client(base_url=url, timeout=60)
    web.post("/login", data={"name": "bench", "password": PASSWORD})
    page, state = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        web.get(f"/slides/{rid}").raise_for_status()
        page.append(time.perf_counter() - t)
        t = time.perf_counter()
        web.get(f"/slides/{rid}/state").raise_for_status()
        state.append(time.perf_counter() - t)
    print(f"server: slide page {statistics.median(page) * 1000:.0f} ms, state JSON {statistics.median(state) * 1000:.0f} ms"
          f" (median of {repeats})")  # fmt: skip
    drv = browser()
    try:
        drv.get(url + "/login")
        drv.find_element("id", "name").send_keys("bench")
        drv.find_element("id", "password").send_keys(PASSWORD)
        drv.find_element("id", "login").click()
        first, again = [], []
        for i in range(repeats):
            drv.get(f"{url}/slides/{rid}")
            (first if i == 0 else again).append(drv.execute_async_script(DRAWN))
        f = first[0]
        print(f"browser, first visit ({f['cells']} cells): page ready {f['dom']:.0f} ms, the {f['n']} thumbnails on "
              f"screen drawn {f['images']:.0f} ms")  # fmt: skip
        print(f"browser, visits after: page ready {statistics.median(a['dom'] for a in again):.0f} ms, thumbnails on "
              f"screen {statistics.median(a['images'] for a in again):.0f} ms (median of {len(again)})")  # fmt: skip
        csrf = web.get("/").text.split('name="csrf" value="')[1].split('"')[0]  # this client's own session
        saves = []
        for k in range(repeats):
            t = time.perf_counter()
            r = web.post(f"/slides/{rid}/draft", json={"base_version": k, "changes": {report["cells"][k]["file"]: "monocyte"}},
                         headers={"X-CSRF-Token": csrf})  # fmt: skip
            saves.append(time.perf_counter() - t)
        print(f"one save answered with the recomputed differential: {statistics.median(saves) * 1000:.0f} ms (median)"
              f"; last status {r.status_code}")  # fmt: skip
    finally:
        drv.quit()


if __name__ == "__main__":
    main()
