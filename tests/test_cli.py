"""The ``wbc`` console script end to end on real cell images with a real (tiny) ONNX model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CELLS, copy_cells
from openpyxl import load_workbook

WBC = str(Path(sys.executable).parent / "wbc")


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    e.update(env or {})
    return subprocess.run([WBC, *args], capture_output=True, text=True, env=e, timeout=300)


def test_version_and_info(tiny_model):
    from wbcproc import __version__

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"wbc {__version__}"
    r = run("info", "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr
    assert "tiny-test-model 0.0.1-test" in r.stdout and "CPUExecutionProvider" in r.stdout
    assert "input:      32x32 RGB" in r.stdout


def test_process_uses_the_shipped_model_by_default(tmp_path, sample):
    """No --model, no $WBC_MODEL, empty registry: the model in models/ is used, end to end (the 24 PBC
    fixture cells may be training images: this checks the wiring, models/card.md has held-out figures)."""
    r = run("process", str(sample), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "o" / "S-001.json").read_text())
    shipped = json.loads((Path(__file__).resolve().parents[1] / "models" / "model.json").read_text())
    assert report["model"]["name"] == "wbc-resnet50" and report["model"]["version"] == shipped["version"]
    assert report["model"]["sha256"] == shipped["sha256"]
    right = sum(Path(c["file"]).stem in {p.stem for p in (CELLS / c["class"]).glob("*")} for c in report["cells"])
    assert right >= 22 and len(report["cells"]) == 24
    assert not any(f["code"] == "DOMAIN_SHIFT" for f in report["flags"])  # in-domain cells


def test_cells_cropped_past_the_camera_edge_are_counted_noted_and_classified(tmp_path):
    """A slide whose export padded the cells near the camera's edge (black or white): every cell counted, the
    padded ones noted in the JSON and classified as their unpadded originals are (the shipped model)."""
    import cv2
    import numpy as np

    sample = tmp_path / "S-PAD"
    sample.mkdir()
    padded = {}
    for i, f in enumerate(sorted(CELLS.glob("*/*"))):
        bgr = cv2.imread(str(f))
        if i % 4 == 0:  # 6 of the 24: the left 15 % lies past the camera image
            k = int(0.15 * bgr.shape[1])
            out = np.full_like(bgr, 0 if i % 8 == 0 else 255)
            out[:, k:] = bgr[:, :-k]
            name = f"{f.parent.name}-{f.stem}-edge.png"
            cv2.imwrite(str(sample / name), out)
            padded[name] = f.parent.name
        else:
            cv2.imwrite(str(sample / f"{f.parent.name}-{f.stem}.png"), bgr)
    r = run("process", str(sample), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "o" / "S-PAD.json").read_text())
    assert len(report["cells"]) == 24 and not report["rejected"]
    for c in report["cells"]:
        noted = [n for n in c.get("notes", []) if "outside the camera image" in n]
        assert bool(noted) == (c["file"] in padded), (c["file"], c.get("notes"))
    right = sum(c["class"] == padded[c["file"]] for c in report["cells"] if c["file"] in padded)
    assert right >= 5, [(c["file"], c["class"]) for c in report["cells"] if c["file"] in padded]


def test_missing_explicit_model_says_what_to_do(tmp_path, sample):
    r = run("process", str(sample), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "none.onnx"))
    assert r.returncode == 1
    assert "none.onnx" in r.stderr
    assert not (tmp_path / "o").exists()


def test_process_end_to_end(tmp_path, tiny_model):
    a, b = tmp_path / "A-1", tmp_path / "B-2"
    copy_cells(a)
    copy_cells(b, 10)
    (b / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    r = run("process", str(a), str(b), "--out", str(out), "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("A-1: 24 WBC")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "A-1.fhir.json",
        "A-1.json",
        "A-1.xlsx",
        "B-2.fhir.json",
        "B-2.json",
        "B-2.xlsx",
        "batch-summary.xlsx",
    ]
    rb = json.loads((out / "B-2.json").read_text())
    assert rb["cells_classified"] == 10 and rb["rejected"][0]["file"] == "broken.jpg"
    ws = load_workbook(out / "batch-summary.xlsx")["Batch"]
    assert [ws.cell(row=i, column=1).value for i in (2, 3)] == ["A-1", "B-2"]


def test_one_failing_folder_gives_exit_1(tmp_path, sample, tiny_model):
    r = run(
        "process",
        str(sample),
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path / "o"),
        "--model",
        str(tiny_model),
    )
    assert r.returncode == 1
    assert "does not exist" in r.stderr
    assert (tmp_path / "o" / "S-001.json").is_file()


def test_usage_errors_give_exit_2(tmp_path, sample):
    assert run("process", str(sample)).returncode == 2  # --out missing
    assert run("frobnicate").returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[flags]\nnope = 1\n")
    r = run("process", str(sample), "--out", str(tmp_path / "o"), "--config", str(bad))
    assert r.returncode == 2 and "unknown keys" in r.stderr


def test_classify_jsonl(tmp_path, tiny_model):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    r = run(
        "classify",
        str(CELLS / "ig"),
        str(CELLS / "basophil" / "BA_10622.jpg"),
        str(bad),
        "--json",
        "--model",
        str(tiny_model),
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 5
    ok = [x for x in lines if x["label"] is not None]
    assert len(ok) == 4 and all(set(x) == {"file", "label", "confidence"} for x in ok)
    assert all(0 <= x["confidence"] <= 1 for x in ok)
    err = [x for x in lines if x["label"] is None]
    assert err == [{"file": str(bad), "label": None, "error": "not an image: content is not JPEG, PNG, BMP or TIFF"}]


@pytest.mark.slow
def test_installed_wheel_finds_packaged_model(tmp_path, tiny_model):
    """A non-editable install carries models/ as wbcproc/_models (checked on the built wheel)."""
    import zipfile

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(repo),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("wbc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "wbcproc/_models/README.md" in names
    assert "wbcproc/data/reference_intervals.toml" in names
    assert any(n.startswith("flows/") for n in names) and any(n.startswith("training/") for n in names)


def test_first_contact_papercuts_each_get_a_one_line_cause_and_an_exit_code(tmp_path, tiny_model):
    """Tried as a new user would."""
    import socket

    r = run("--help")
    assert r.returncode == 0 and "<bool>" not in r.stdout
    train = run("train", "--help")
    assert "card (needs [train])" in " ".join(train.stdout.split())  # markup no longer eats "[train]"
    assert "{FOLDERS}..." in run("process", "--help").stdout
    r = run("classify", "/nonexistent.jpg", "--model", str(tiny_model))
    assert r.returncode == 1 and "/nonexistent.jpg: no such file or folder" in r.stdout
    (tmp_path / "empty").mkdir()
    r = run("classify", str(tmp_path / "empty"), "--model", str(tiny_model))
    assert r.returncode == 1 and f"wbc: no image found in {tmp_path / 'empty'}" in r.stderr
    (tmp_path / "a-file").write_text("x")
    r = run("serve", "--inbox", str(tmp_path / "a-file"), "--out", str(tmp_path / "o"), "--model", str(tiny_model))
    assert r.returncode == 2 and "is a file; give a folder" in r.stderr and "Traceback" not in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run("serve", "--inbox", str(tmp_path / "i"), "--out", str(tmp_path / "o"), "--port", str(port),
                "--model", str(tiny_model), env={"WBC_HOME": str(tmp_path / "home")})  # fmt: skip
    assert r.returncode == 1 and f"port {port} on 127.0.0.1 is already in use" in r.stderr
    assert f"--port {port + 1}" in r.stderr and "Traceback" not in r.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name in ("home", "i", "o")]  # nothing left behind


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('[input]\nmarker_files = "READY"\n', """[input] marker_files = 'READY'; expected a list, e.g. ["READY"]"""),
        ('[inference]\nthreads = "two"\n', "[inference] threads = 'two'; expected an integer"),
        ('[inference]\nbatch_size = "big"\n', "[inference] batch_size = 'big'; expected an integer"),
        ('[flags]\nmax_review_share = "ten percent"\n', "[flags] max_review_share = 'ten percent'; expected a number"),
        ("[flags]\nmax_review_share = 10\n", "[flags] max_review_share = 10; expected a number <= 1.0"),
        ("[inference]\nbatch_size = 0\n", "[inference] batch_size = 0; expected a number > 0"),
        ('[input]\nmarker_files = ["READY", 3]\n', "[input] marker_files[1] = 3; expected a string"),
        ('[outputs]\nhl7 = "yes"\n', "[outputs] hl7 = 'yes'; expected true or false"),
    ],
)
def test_a_bad_config_value_is_one_line_naming_key_value_and_expectation_with_exit_2(tmp_path, sample, text, said):
    """A value of the wrong type or range never becomes something else (a string of markers split into letters)
    and never a traceback: one line, exit 2, nothing written."""
    cfg = tmp_path / "wbc.toml"
    cfg.write_text(text)
    r = subprocess.run(
        [WBC, "process", str(sample), "--out", str(tmp_path / "out"), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0] and str(cfg) in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_a_list_of_markers_is_read_as_markers(tmp_path):
    from wbcproc.config import load_settings

    cfg = tmp_path / "wbc.toml"
    cfg.write_text('[input]\nmarker_files = ["READY", "DONE.txt"]\n')
    assert load_settings(cfg).marker_files == ("READY", "DONE.txt")


def test_the_shipped_config_schema_is_generated_and_refuses_what_the_loader_refuses(tmp_path):
    """``wbcproc/data/config.schema.json`` is ``python -m wbcproc.config``'s output (regenerate it after a
    settings change); editors that read it reject the bad values ``wbc`` rejects, and accept the defaults."""
    import tomllib

    import jsonschema

    from wbcproc.config import config_schema

    shipped = Path(__file__).resolve().parents[1] / "wbcproc" / "data" / "config.schema.json"
    schema = json.loads(shipped.read_text())
    assert schema == config_schema(), "regenerate: python -m wbcproc.config > wbcproc/data/config.schema.json"
    validator = jsonschema.Draft202012Validator(schema)
    defaults = Path(__file__).resolve().parents[1] / "wbcproc" / "data" / "default_config.toml"
    validator.validate(tomllib.loads(defaults.read_text()))
    validator.validate({"flags": {"min_wbc": 200}})  # a user's file names only what it changes
    for bad in ('[input]\nmarker_files = "READY"\n', '[inference]\nthreads = "two"\n', "[flags]\nmax_review_share = 10\n",
                "[flags]\nmin_wbcs = 200\n"):  # fmt: skip
        assert not validator.is_valid(tomllib.loads(bad)), bad
    assert schema["properties"]["flags"]["properties"]["min_wbc"]["default"] == 100


def test_a_folder_without_images_is_refused_and_the_others_are_processed(tmp_path, sample, tiny_model):
    """A mistyped or empty folder is not a sample with no white cells: one line, no report (no FHIR
    DiagnosticReport for the LIS), exit 1; the real sample beside it is processed as usual."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("slide 12 scanned twice")
    out = tmp_path / "out"
    r = run("process", str(tmp_path / "empty"), str(tmp_path / "notes"), str(sample), "--out", str(out),
            "--model", str(tiny_model))  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert f"sample folder {str(tmp_path / 'empty')!r} is empty: no report written" in r.stderr
    assert "holds no image (bmp jpeg jpg png tif tiff), only notes.txt: no report written" in r.stderr
    assert not list(out.glob("empty*")) and not list(out.glob("notes*"))
    assert (out / f"{sample.name}.json").exists() and (out / f"{sample.name}.fhir.json").exists()


def test_every_listed_option_and_argument_has_help_text():
    """Every command `wbc --help` lists explains each of its options and arguments (hidden aliases aside)."""
    import click
    import typer

    from flows.cli import app

    missing: list[str] = []

    def walk(cmd: click.Command, path: str) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                if not sub.hidden:
                    walk(sub, f"{path} {name}")
            return
        for p in cmd.params:
            if not getattr(p, "hidden", False) and not getattr(p, "help", None):
                missing.append(f"{path}: {'/'.join(getattr(p, 'opts', [p.name]))}")

    root = typer.main.get_command(app)
    walk(root, "wbc")
    assert not missing, "options without help text:\n" + "\n".join(missing)
    assert len(root.commands) >= 10  # the walk saw the command tree, not an empty group


def test_closed_choices_are_listed_and_refused_in_one_line():
    """A closed choice is an Enum made from the values the code reads, so `--help` lists them and any other
    value is one line naming the command, with exit code 2."""
    from flows.cli._choices import Resize, Split
    from training.data import SPLITS
    from wbcproc.preprocess import RESIZE_RULES

    assert [e.value for e in Resize] == list(RESIZE_RULES)
    assert [e.value for e in Split] == ["all", *SPLITS]
    assert "--device <auto|cpu|cuda>" in run("train", "--help").stdout
    r = run("evaluate", "--model", "m.onnx", "--data", "d", "--split", "holdout")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "wbc evaluate: Invalid value for '--split': 'holdout' is not one of 'all', 'train', 'val', 'test'. "
        "(see wbc evaluate --help)"
    ]
    r = run("nosuch")
    assert r.returncode == 2 and r.stderr.splitlines() == ["wbc: No such command 'nosuch'. (see wbc --help)"]
    r = run("models")  # a group alone shows its help, unprefixed
    assert r.returncode == 2 and r.stderr.startswith("Usage: wbc models [OPTIONS] COMMAND") and "promote" in r.stderr
