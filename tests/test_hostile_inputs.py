"""Hostile and odd inputs: nothing hangs, nothing stops the batch, every file gets a reason.

Cases where the bug would be a hang run the command line in a child process with a
timeout, so a regression fails the test instead of stalling the suite.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "resources" / "demo-model.safetensors"
HANG_LIMIT = 240  # seconds: generous for a loaded 2-core machine; a hang never ends

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
needs_dev_zero = pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")


def cli(*argv: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``eyetriage`` in a child process; a run that does not end fails the test."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "QT_QPA_PLATFORM": "offscreen"}
    try:
        return subprocess.run(
            [sys.executable, "-m", "engine", *map(str, argv)],
            capture_output=True,
            text=True,
            timeout=HANG_LIMIT,
            env=env,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"eyetriage {' '.join(map(str, argv))} hung (no end in {HANG_LIMIT} s)")


def write_image(path: Path, seed: int = 0, size: int = 64) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def special_folder(tmp_path) -> Path:
    """Two real images, a FIFO and links to /dev/zero and /dev/urandom, all image-named."""
    if not hasattr(os, "mkfifo") or not Path("/dev/zero").exists():
        pytest.skip("needs named pipes and /dev/zero")
    folder = tmp_path / "clinic"
    folder.mkdir()
    write_image(folder / "good1.png", 1)
    write_image(folder / "good2.png", 2)
    os.mkfifo(folder / "pipe.png")
    os.symlink("/dev/zero", folder / "zero.jpg")
    os.symlink("/dev/urandom", folder / "random.jpg")
    return folder


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return {Path(r["path"]).name: r for r in csv.DictReader(handle)}


# --------------------------------------------------------------------------- hangs


def test_workspace_screen_refuses_special_files_instead_of_hanging(tmp_path, special_folder):
    ws = tmp_path / "ws"
    done = cli("screen", special_folder, "--model", DEMO_MODEL, "--workspace", ws)
    assert done.returncode == 0, done.stderr
    assert "error 3" in done.stdout  # the FIFO and both device links, counted


def test_csv_screen_names_the_kind_of_special_file(tmp_path, special_folder):
    out = tmp_path / "r.csv"
    done = cli("screen", special_folder, "--model", DEMO_MODEL, "--out", out)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert len(rows) == 5
    assert "named pipe" in rows["pipe.png"]["error"]
    assert "character device" in rows["zero.jpg"]["error"]
    assert "character device" in rows["random.jpg"]["error"]
    assert not rows["good1.png"]["error"] and not rows["good2.png"]["error"]
    assert all(r["triage"] == "error" for n, r in rows.items() if n.startswith(("pipe", "z", "r")))


@needs_fifo
def test_a_fifo_as_model_is_refused_in_one_line(tmp_path):
    write_image(tmp_path / "a.png")
    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    done = cli("screen", tmp_path / "a.png", "--model", fifo, "--out", tmp_path / "r.csv")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "m.safetensors" in lines[0] and "named pipe" in lines[0]


@needs_dev_zero
def test_a_link_to_dev_zero_as_model_is_refused(tmp_path):
    link = tmp_path / "zero.safetensors"
    os.symlink("/dev/zero", link)
    done = cli("info", link)
    assert done.returncode == 1
    assert "zero.safetensors" in done.stderr and "character device" in done.stderr


@needs_fifo
def test_a_fifo_as_review_csv_is_refused(tmp_path, special_folder):
    ws = tmp_path / "ws"
    assert cli("screen", special_folder, "--model", DEMO_MODEL, "--workspace", ws).returncode == 0
    fifo = tmp_path / "reviews.csv"
    os.mkfifo(fifo)
    done = cli("review", ws, "--from-csv", fifo, "--reviewer", "dr a")
    assert done.returncode == 1
    assert "reviews.csv" in done.stderr and "named pipe" in done.stderr


@needs_fifo
def test_a_fifo_as_training_label_csv_is_refused(tmp_path):
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    done = cli("train", tmp_path, "--labels", fifo, "--out", tmp_path / "m.safetensors")
    assert done.returncode == 1
    assert "labels.csv" in done.stderr and "named pipe" in done.stderr


@needs_fifo
def test_the_one_rule_refuses_special_files_before_opening_them(tmp_path):
    from engine.safefiles import UnreadableFile, check_regular, read_file, sha256_and_size

    fifo = tmp_path / "p.png"
    os.mkfifo(fifo)  # opening it for reading would block: the rule must not
    for reader in (check_regular, read_file, sha256_and_size):
        with pytest.raises(UnreadableFile, match="named pipe"):
            reader(fifo)
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(UnreadableFile, match="loop"):
        check_regular(tmp_path / "loop.png")
    (tmp_path / "broken.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(UnreadableFile, match="broken symbolic link"):
        check_regular(tmp_path / "broken.png")
    real = tmp_path / "ok.bin"
    real.write_bytes(b"abc")
    assert read_file(real) == b"abc"
    assert sha256_and_size(real)[1] == 3


def test_a_stalled_read_ends_with_a_reason(tmp_path):
    import threading

    from engine.safefiles import UnreadableFile, with_deadline

    never = threading.Event()
    with pytest.raises(UnreadableFile, match="stalled"):
        with_deadline(tmp_path / "share.png", lambda progress: never.wait(5), timeout=0.2)
    never.set()


# --------------------------------------------------------------------------- one file, not the batch


def run(capsys, *argv: object) -> tuple[int, str, str]:
    from engine.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def odd_names_folder(tmp_path) -> Path:
    """Good images, one named with a byte that is not UTF-8 (0xE9), a symlink loop."""
    folder = tmp_path / "odd"
    folder.mkdir()
    write_image(folder / "good1.png", 1)
    write_image(folder / "good2.png", 2)
    latin1 = folder / os.fsdecode(b"caf\xe9.png")
    try:
        write_image(latin1, 3)
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take names that are not UTF-8")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    return folder


def test_a_name_that_is_not_utf8_is_screened_and_written_in_csv_mode(
    capsys, tmp_path, odd_names_folder
):
    out = tmp_path / "r.csv"
    code, _, err = run(capsys, "screen", odd_names_folder, "--model", DEMO_MODEL, "--out", out)
    assert code == 0, err
    rows = read_rows(out)
    assert set(rows) == {"good1.png", "good2.png", "caf\\xe9.png", "loop.jpg"}
    assert not rows["caf\\xe9.png"]["error"] and rows["caf\\xe9.png"]["label"]
    assert "loop" in rows["loop.jpg"]["error"]


def test_a_name_that_is_not_utf8_and_a_link_loop_do_not_stop_a_workspace_run(
    capsys, tmp_path, odd_names_folder
):
    ws = tmp_path / "ws"
    code, _, err = run(capsys, "screen", odd_names_folder, "--model", DEMO_MODEL, "--workspace", ws)
    assert code == 0, err
    out = tmp_path / "e.csv"
    assert run(capsys, "export", ws, "--out", out)[0] == 0
    rows = read_rows(out)
    assert rows["caf\\xe9.png"]["label"]  # screened, stored and exported as readable text
    assert rows["good1.png"]["label"] and rows["good2.png"]["label"]


def test_a_stored_escaped_name_still_opens_its_file(odd_names_folder):
    from engine.images import load_display_image
    from engine.store.common import normalise_path

    stored = normalise_path(odd_names_folder / os.fsdecode(b"caf\xe9.png"))
    assert stored.endswith("caf\\xe9.png")
    stored.encode("utf-8")  # storable as text
    assert load_display_image(stored).size == (64, 64)


# --------------------------------------------------------------------------- nothing vanishes


def export_rows(capsys, ws: Path, out: Path) -> dict[str, dict[str, str]]:
    assert run(capsys, "export", ws, "--out", out)[0] == 0
    return read_rows(out)


def test_unreadable_files_are_in_the_workspace_export_with_their_reason(capsys, tmp_path):
    folder = tmp_path / "clinic"
    folder.mkdir()
    write_image(folder / "good.png", 1)
    (folder / "broken.png").symlink_to(folder / "gone.png")
    (folder / "empty.jpg").write_bytes(b"")
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.png")
    ws = tmp_path / "ws"
    code, out, err = run(capsys, "screen", folder, "--model", DEMO_MODEL, "--workspace", ws)
    assert code == 0, err
    rows = export_rows(capsys, ws, tmp_path / "e.csv")
    found = {p.name for p in folder.iterdir()}
    assert set(rows) == found  # one row per file found, none missing
    assert rows["broken.png"]["triage"] == "error"
    assert "broken symbolic link" in rows["broken.png"]["triage_reason"]
    assert "empty" in rows["empty.jpg"]["triage_reason"]
    if "pipe.png" in rows:
        assert "named pipe" in rows["pipe.png"]["triage_reason"]
    assert rows["good.png"]["triage"] not in ("", "error")


def test_a_copy_of_a_screened_file_added_later_gets_its_own_triage(capsys, tmp_path):
    folder = tmp_path / "clinic"
    folder.mkdir()
    write_image(folder / "first.png", 1)
    write_image(folder / "second.png", 2)
    ws = tmp_path / "ws"
    assert run(capsys, "screen", folder, "--model", DEMO_MODEL, "--workspace", ws)[0] == 0
    (folder / "copy_of_first.png").write_bytes((folder / "first.png").read_bytes())
    code, out, _ = run(capsys, "screen", folder, "--model", DEMO_MODEL, "--workspace", ws)
    assert code == 0
    assert "2 images already screened" in out  # the two originals, not the new copy
    rows = export_rows(capsys, ws, tmp_path / "e.csv")
    assert len(rows) == 3
    assert rows["copy_of_first.png"]["triage"] == rows["first.png"]["triage"] != ""
    assert rows["copy_of_first.png"]["label"] == rows["first.png"]["label"] != ""


# --------------------------------------------------------------------------- formula injection

HYPERLINK = '=HYPERLINK("http:evil.example","click").jpg'


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("=1+1", "'=1+1"),
        ("+cmd", "'+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-0.2500", "-0.2500"),  # numbers stay numbers
        ("+1e-3", "+1e-3"),
        ("normal", "normal"),
        ("", ""),
    ],
)
def test_a_cell_that_would_be_a_formula_is_written_as_text(text, safe):
    from engine.csvsafe import formula_safe

    assert formula_safe(text) == safe
    assert formula_safe(0.5) == 0.5 and formula_safe(None) is None


def test_every_csv_writer_in_the_program_is_the_safe_one():
    """One home for the rule: no module but engine.csvsafe makes a raw csv writer."""
    offenders = []
    for package in ("engine", "desktop"):
        for source in (REPO / package).rglob("*.py"):
            if source.name == "csvsafe.py":
                continue
            text = source.read_text(encoding="utf-8")
            if "csv.writer(" in text or "csv.DictWriter(" in text:
                offenders.append(str(source.relative_to(REPO)))
    assert offenders == []


def test_a_file_name_formula_is_neutralised_in_csv_results_and_workspace_export(
    capsys, tmp_path, monkeypatch
):
    folder = tmp_path / "clinic"
    folder.mkdir()
    write_image(folder / HYPERLINK, 1)
    write_image(folder / "@SUM(1+1).png", 2)
    monkeypatch.chdir(folder)  # `screen . --out r.csv`: the path cell is the bare name
    out = tmp_path / "r.csv"
    assert run(capsys, "screen", ".", "--model", DEMO_MODEL, "--out", out)[0] == 0
    cells = [r["path"] for r in csv.DictReader(out.open(encoding="utf-8", newline=""))]
    assert sorted(cells) == sorted(["'" + HYPERLINK, "'@SUM(1+1).png"])
    ws = tmp_path / "ws"
    assert run(capsys, "screen", ".", "--model", DEMO_MODEL, "--workspace", ws)[0] == 0
    image = str(folder / HYPERLINK)
    code = run(
        capsys, "review", ws, image, "--label", "glaucoma", "--reviewer", "=cmd|'/c calc'!A1"
    )
    assert code[0] == 0
    exported = tmp_path / "e.csv"
    assert run(capsys, "export", ws, "--out", exported)[0] == 0
    for row in csv.DictReader(exported.open(encoding="utf-8", newline="")):
        for value in row.values():
            assert not value.startswith(("=", "+", "@", "\t", "\r")), value
            if value.startswith("-"):
                float(value)  # only numbers may start with a minus
    reviewed = [r for r in csv.DictReader(exported.open(encoding="utf-8")) if r["reviewer"]]
    assert reviewed[0]["reviewer"] == "'=cmd|'/c calc'!A1"


def test_a_neutralised_export_reads_back_as_the_original_values(capsys, tmp_path):
    """Review CSVs written by a spreadsheet from an export keep their names and labels."""
    folder = tmp_path / "clinic"
    folder.mkdir()
    write_image(folder / "+first.png", 1)
    ws = tmp_path / "ws"
    assert run(capsys, "screen", folder, "--model", DEMO_MODEL, "--workspace", ws)[0] == 0
    sheet = tmp_path / "reviews.csv"
    sheet.write_text("path,label,reviewer\n'+first.png,normal,'@dr a\n", encoding="utf-8")
    code, out, err = run(capsys, "review", ws, "--from-csv", sheet)
    assert code == 0, err
    from engine.store import Workspace

    with Workspace.open(ws, create=False) as w:
        reviews = w.reviews()
    assert [r["reviewer"] for r in reviews] == ["@dr a"]


# --------------------------------------------------------------------------- model files


def _rewrite_model(src: Path, out: Path, spec_change=None, tensor_change=None) -> Path:
    """A copy of ``src`` with its description or tensors altered, written without the
    checks of ``save_model_file`` (as a hostile or damaged file would be)."""
    from safetensors.torch import load, save

    from engine.modelfile import METADATA_KEY, read_spec

    spec = read_spec(src)
    tensors = load(src.read_bytes())
    if spec_change:
        spec_change(spec)
    if tensor_change:
        tensor_change(tensors)
    out.write_bytes(save(tensors, metadata={METADATA_KEY: spec.to_json()}))
    return out


def test_a_model_with_nan_weights_is_refused_at_load(tmp_path):
    from engine.modelfile import ModelFileError, load_model_file

    def poison(tensors):
        name = next(k for k, t in tensors.items() if k.startswith("model.") and t.numel() > 1)
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = float("nan")

    bad = _rewrite_model(DEMO_MODEL, tmp_path / "nan.safetensors", tensor_change=poison)
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        load_model_file(bad)


@pytest.mark.parametrize("key", ["threshold", "m_ref"])
def test_infinite_ood_statistics_are_refused_not_silently_ignored(tmp_path, key):
    from engine.modelfile import ModelFileError, read_spec

    def infinite(spec):
        spec.ood[key] = float("inf")

    bad = _rewrite_model(DEMO_MODEL, tmp_path / "inf.safetensors", spec_change=infinite)
    with pytest.raises(ModelFileError, match="out-of-distribution"):
        read_spec(bad)


def test_a_model_with_infinite_ood_threshold_is_refused_in_one_line(capsys, tmp_path):
    def infinite(spec):
        spec.ood["threshold"] = float("inf")

    bad = _rewrite_model(DEMO_MODEL, tmp_path / "inf.safetensors", spec_change=infinite)
    write_image(tmp_path / "a.png")
    code, _, err = run(
        capsys, "screen", tmp_path / "a.png", "--model", bad, "--out", tmp_path / "r.csv"
    )
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "inf.safetensors" in err


# --------------------------------------------------------------------------- review labels


@pytest.fixture
def screened_workspace(capsys, tmp_path) -> tuple[Path, Path]:
    folder = tmp_path / "clinic"
    folder.mkdir()
    write_image(folder / "a.png", 1)
    write_image(folder / "b.png", 2)
    ws = tmp_path / "ws"
    assert run(capsys, "screen", folder, "--model", DEMO_MODEL, "--workspace", ws)[0] == 0
    return ws, folder


@pytest.mark.parametrize("label", ["banana", "normal;glaucoma", "dme"])
def test_a_review_label_the_model_does_not_give_is_refused(capsys, screened_workspace, label):
    ws, folder = screened_workspace
    code, _, err = run(
        capsys, "review", ws, folder / "a.png", "--label", label, "--reviewer", "dr a"
    )
    assert code == 1
    assert "label" in err and len(err.strip().splitlines()) == 1
    from engine.store import Workspace

    with Workspace.open(ws, create=False) as w:
        assert w.reviews() == []


def test_a_known_label_is_recorded(capsys, screened_workspace):
    ws, folder = screened_workspace
    code, _, err = run(
        capsys, "review", ws, folder / "a.png", "--label", "glaucoma", "--reviewer", "dr a"
    )
    assert code == 0, err


def test_a_review_csv_with_an_unknown_label_imports_nothing(capsys, tmp_path, screened_workspace):
    ws, folder = screened_workspace
    sheet = tmp_path / "r.csv"
    sheet.write_text(
        "path,label,reviewer\na.png,normal,dr a\nb.png,banana,dr a\n", encoding="utf-8"
    )
    code, _, err = run(capsys, "review", ws, "--from-csv", sheet)
    assert code == 1 and "row 3" in err and "banana" in err
    from engine.store import Workspace

    with Workspace.open(ws, create=False) as w:
        assert w.reviews() == []


@pytest.mark.parametrize("arch", ["hf-hub:org/model", "local-dir:../configs"])
def test_an_architecture_from_an_outside_source_is_refused_without_network(
    tmp_path, monkeypatch, arch
):
    import socket

    from engine.modelfile import ModelFileError
    from engine.models import load_model

    def no_network(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)

    def outside(spec):
        spec.arch = arch

    bad = _rewrite_model(DEMO_MODEL, tmp_path / "hub.safetensors", spec_change=outside)
    with pytest.raises(ModelFileError, match="outside source"):
        load_model(bad, device="cpu")


def test_a_skip_imported_twice_is_recorded_once(capsys, tmp_path, screened_workspace):
    ws, folder = screened_workspace
    sheet = tmp_path / "skips.csv"
    sheet.write_text(
        "path,label,reviewer,action,note\na.png,,dr a,skip,come back later\n", encoding="utf-8"
    )
    code, out, err = run(capsys, "review", ws, "--from-csv", sheet)
    assert code == 0, err
    assert "recorded 1 review from" in out
    code, out, err = run(capsys, "review", ws, "--from-csv", sheet)
    assert code == 0, err
    assert "recorded 0 reviews" in out and "1 row already recorded" in out
    from engine.store import Workspace

    with Workspace.open(ws, create=False) as w:
        assert [r["action"] for r in w.reviews()] == ["skip"]


def test_importing_the_same_review_csv_twice_adds_nothing_the_second_time(
    capsys, tmp_path, screened_workspace
):
    ws, folder = screened_workspace
    sheet = tmp_path / "r.csv"
    sheet.write_text(
        "path,label,reviewer\na.png,normal,dr a\nb.png,glaucoma,dr a\nb.png,glaucoma,dr b\n",
        encoding="utf-8",
    )
    code, out, err = run(capsys, "review", ws, "--from-csv", sheet)
    assert code == 0, err
    assert "recorded 3 reviews" in out
    code, out, err = run(capsys, "review", ws, "--from-csv", sheet)
    assert code == 0, err
    assert "recorded 0 reviews" in out and "3 rows already recorded" in out
    from engine.store import Workspace

    with Workspace.open(ws, create=False) as w:
        assert len(w.reviews()) == 3
    # a changed opinion is a new review, not a duplicate
    sheet.write_text("path,label,reviewer\na.png,glaucoma,dr a\n", encoding="utf-8")
    assert "recorded 1 review from" in run(capsys, "review", ws, "--from-csv", sheet)[1]


# --------------------------------------------------------------------------- reasons


def _png_with_bad_crc(path: Path) -> None:
    import io
    import struct

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length] ^= 0xFF  # first byte of the IDAT checksum
    path.write_bytes(bytes(data))


def test_a_png_with_a_bad_checksum_is_refused_not_screened(tmp_path):
    from engine.images import ImageError, decode_for_model

    bad = tmp_path / "crc.png"
    _png_with_bad_crc(bad)
    with pytest.raises(ImageError, match="checksum"):
        decode_for_model(bad, 64)


def test_a_strip_shaped_image_gets_a_reason_in_words(tmp_path):
    from engine.images import ImageError, decode_for_model

    strip = tmp_path / "strip.png"
    Image.new("RGB", (10000, 10), (90, 40, 20)).save(strip)
    with pytest.raises(ImageError) as caught:
        decode_for_model(strip, 64)
    assert "10000×10" in caught.value.reason and "too narrow" in caught.value.reason
    assert "unexpected" not in caught.value.reason


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_large_jpeg_is_read_at_reduced_size_not_refused(tmp_path, monkeypatch):
    """Above Pillow's pixel limit a JPEG is drafted (as from a 12000×9000 camera); a format
    without reduced decoding is refused with its size. The limit is lowered to keep the
    test small."""
    from engine.images import ImageError, decode_for_model

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    big = Image.new("RGB", (1500, 1000), (0, 0, 0))
    big.save(tmp_path / "big.jpg", quality=80)
    big.save(tmp_path / "big.png")
    decoded = decode_for_model(tmp_path / "big.jpg", 64)
    assert decoded.original_size == (1500, 1000)
    with pytest.raises(ImageError, match="too large to decode safely"):
        decode_for_model(tmp_path / "big.png", 64)


# --------------------------------------------------------------------------- training data


def _class_folders(root: Path, counts: dict[str, int]) -> None:
    for n_class, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            write_image(root / name / f"{name}_{i}.png", 10 * n_class + i, size=16)


@pytest.mark.parametrize("rel", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_a_label_csv_cannot_lead_training_outside_the_data_folder(tmp_path, rel):
    from engine.data import DatasetError, load_csv_dataset

    data = tmp_path / "data"
    _class_folders(data, {"normal": 2, "glaucoma": 2})
    write_image(tmp_path / "outside.png", 9, size=16)
    if rel == "ABSOLUTE":
        rel = str(tmp_path / "outside.png")
    sheet = data / "labels.csv"
    sheet.write_text(f"file,label\nnormal/normal_0.png,normal\n{rel},glaucoma\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="outside the data folder"):
        load_csv_dataset(data, sheet)
    allowed = load_csv_dataset(data, sheet, allow_outside=True)
    assert len(allowed) == 2


def test_an_empty_class_folder_is_not_a_label_and_tiny_classes_are_named(tmp_path):
    from engine.data import load_folder_dataset

    data = tmp_path / "data"
    _class_folders(data, {"normal": 12, "glaucoma": 1, "cataract": 0})
    ds = load_folder_dataset(data)
    assert ds.labels == ["glaucoma", "normal"]
    assert ds.empty_classes == ["cataract"]
    assert ds.small_classes() == {"glaucoma": 1}


def test_a_read_only_workspace_opens_for_export_and_refuses_writes_in_words(
    capsys, tmp_path, screened_workspace, monkeypatch
):
    """Storage without write permission (tests may run as root, who may write anywhere, so
    the permission check is what is simulated; the database is opened read-only for real)."""
    import engine.store.base as base

    ws, folder = screened_workspace
    real_access = os.access
    monkeypatch.setattr(
        base.os,
        "access",
        lambda p, mode, **kw: False if mode & os.W_OK else real_access(p, mode, **kw),
    )
    out = tmp_path / "export.csv"
    code, stdout, err = run(capsys, "export", ws, "--out", out)
    assert code == 0, err
    assert len(read_rows(out)) == 2
    code, _, err = run(
        capsys, "review", ws, folder / "a.png", "--label", "normal", "--reviewer", "x"
    )
    assert code == 1 and "read-only" in err


# --------------------------------------------------------------------------- the corpus


def _check_rows(rows: dict[str, dict[str, str]], expected: dict[str, str | None]) -> None:
    assert set(rows) == set(expected)
    for name, phrase in expected.items():
        row = rows[name]
        if phrase is None:
            assert row["triage"] not in ("", "error"), (name, row["triage_reason"])
        else:
            assert row["triage"] == "error", name
            assert phrase in row["triage_reason"], (name, row["triage_reason"])


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="POSIX")
def test_the_bad_input_corpus_screens_in_both_modes_one_row_each_with_its_reason(tmp_path):
    from engine.safefiles import path_text

    from .hostile_corpus import write_corpus

    folder = tmp_path / "corpus"
    kinds = write_corpus(folder)
    assert len(kinds) >= 40
    expected = {path_text(k.name): k.expect for k in kinds}

    out = tmp_path / "r.csv"
    done = cli("screen", folder, "--model", DEMO_MODEL, "--out", out)  # bounded: see cli()
    assert done.returncode == 0, done.stderr
    _check_rows(read_rows(out), expected)

    ws = tmp_path / "ws"
    exported = tmp_path / "e.csv"
    done = cli("screen", folder, "--model", DEMO_MODEL, "--workspace", ws, "--out", exported)
    assert done.returncode == 0, done.stderr
    # a symbolic link to an image is that image (one identity), so it shares its row
    _check_rows(read_rows(exported), {k: v for k, v in expected.items() if k != "link_to_good.png"})


def test_a_screened_file_that_cannot_be_read_later_keeps_its_earlier_result(capsys, tmp_path):
    """A share gone offline must not turn screened images into errors."""
    folder = tmp_path / "clinic"
    folder.mkdir()
    write_image(folder / "a.png", 1)
    write_image(folder / "b.png", 2)
    ws = tmp_path / "ws"
    assert run(capsys, "screen", folder, "--model", DEMO_MODEL, "--workspace", ws)[0] == 0
    before = export_rows(capsys, ws, tmp_path / "before.csv")
    (folder / "a.png").unlink()
    os.mkfifo(folder / "a.png") if hasattr(os, "mkfifo") else (folder / "a.png").write_bytes(b"")
    code, out, err = run(capsys, "screen", folder, "--model", DEMO_MODEL, "--workspace", ws)
    assert code == 0, err
    assert "could not be read now and keep their earlier results" in out
    after = export_rows(capsys, ws, tmp_path / "after.csv")
    assert after["a.png"]["triage"] == before["a.png"]["triage"] != "error"
    assert after["a.png"]["sha256"] == before["a.png"]["sha256"]
