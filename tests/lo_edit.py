"""Edit cells of a workbook *in LibreOffice Calc* (headless, through UNO) and save it as .xlsx.

Run with the system Python that has LibreOffice's ``uno`` module (Debian: python3-uno), not the project's
virtual environment:

    /usr/bin/python3 tests/lo_edit.py SRC.xlsx DEST.xlsx '[["Cells", "H2", "lymphocyte"], ...]' PROFILE_DIR

What a physician does in Calc: open the report, type into cells, save as Excel 2007-365.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import uno  # type: ignore[import-not-found]
from com.sun.star.beans import PropertyValue  # type: ignore[import-not-found]


def _prop(name: str, value) -> PropertyValue:
    p = PropertyValue()
    p.Name, p.Value = name, value
    return p


def main() -> None:
    src, dest, edits, profile = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    pipe = f"wbc_lo_{os.getpid()}"
    office = subprocess.Popen(
        [
            "soffice",
            f"-env:UserInstallation=file://{profile}",
            "--headless",
            "--invisible",
            "--norestore",
            f"--accept=pipe,name={pipe};urp;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        local = uno.getComponentContext()
        resolver = local.ServiceManager.createInstanceWithContext("com.sun.star.bridge.UnoUrlResolver", local)
        ctx = None
        for _ in range(240):
            try:
                ctx = resolver.resolve(f"uno:pipe,name={pipe};urp;StarOffice.ComponentContext")
                break
            except Exception:  # not listening yet
                time.sleep(0.25)
        if ctx is None:
            raise SystemExit("LibreOffice did not start")
        desktop = ctx.ServiceManager.createInstanceWithContext("com.sun.star.frame.Desktop", ctx)
        doc = desktop.loadComponentFromURL(uno.systemPathToFileUrl(os.path.abspath(src)), "_blank", 0,
                                           (_prop("Hidden", True),))  # fmt: skip
        for sheet, ref, value in edits:
            doc.Sheets.getByName(sheet).getCellRangeByName(ref).setString(value)
        doc.storeToURL(uno.systemPathToFileUrl(os.path.abspath(dest)), (_prop("FilterName", "Calc MS Excel 2007 XML"),))
        doc.close(True)
        with contextlib.suppress(Exception):  # the bridge closes as LibreOffice exits
            desktop.terminate()
    finally:
        try:
            office.wait(60)
        except subprocess.TimeoutExpired:
            office.kill()


if __name__ == "__main__":
    main()
