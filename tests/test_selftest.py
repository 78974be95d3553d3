"""``eyetriage --self-test``: passes on a working install, names the step that broke."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from engine import selftest
from engine.selftest import FAIL, OK, SKIP, SelfTest, StepSkipped, marks_for

REPO = Path(__file__).resolve().parents[1]
STEPS = [
    "torchvision compiled ops (nms)",
    "demo model (timm)",
    "synthesise demo images",
    "screen into workspace",
    "screening process (--worker screen)",
    "Grad-CAM (captum)",
    "review + export, read back",
    "fine-tuning libraries (peft)",
    "DICOM decoders (pydicom, pylibjpeg)",
    "Qt offscreen (PySide6)",
]


@pytest.mark.slow
def test_self_test_of_the_dev_install_passes_and_prints_every_check(tmp_path):
    code = "import sys; from desktop.launcher import main; sys.exit(main(['--self-test']))"
    env = {"PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for step in STEPS:
        assert any(step in line and line.startswith("✓") for line in lines), (step, out.stdout)
    assert "all 10 checks passed" in out.stdout
    screened = next(line for line in lines if "screen into workspace" in line)
    assert "with onnxruntime" in screened and "same answers as torch fp32" in screened


def test_missing_demo_model_fails_and_names_the_step(monkeypatch, capsys):
    missing = Path("/nonexistent/demo-model.safetensors")
    monkeypatch.setattr("engine.demo.demo_model_path", lambda: missing)
    code = selftest.main(["--no-gui"])
    out = capsys.readouterr().out
    assert code == 1
    assert "✗ demo model (timm)" in out
    assert "demo model not found" in out
    assert "✗ screen into workspace" in out and "not run: needs model" in out
    assert "✓ torchvision compiled ops (nms)" in out
    assert "FAILED" in out and "demo model (timm)" in out.splitlines()[-1]


def test_a_model_that_is_not_a_model_file_fails_cleanly(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert selftest.main(["--no-gui", "--model", str(bad)]) == 1
    assert "✗ demo model (timm)" in capsys.readouterr().out


def test_step_results_failures_skips_and_prerequisites():
    st = SelfTest(out=io.StringIO())

    def skipped() -> str:
        raise StepSkipped("no desktop here")

    def broken() -> str:
        raise ValueError("boom\nsecond line")

    assert st.step("fine", lambda: "detail")
    assert st.step("optional", skipped)
    assert not st.step("broken", broken)
    assert not st.step("dependent", lambda: "never", needs=("model",))
    assert [r.status for r in st.results] == [OK, SKIP, FAIL, FAIL]
    assert st.results[2].detail == "ValueError: boom"
    assert st.results[3].detail == "not run: needs model"
    assert [r.name for r in st.failed] == ["broken", "dependent"]
    text = st.out.getvalue()
    assert "✓ fine" in text and "- optional" in text and "skipped: no desktop here" in text


def test_a_console_that_cannot_print_check_marks_gets_ascii():
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    assert marks_for(ascii_out)[OK].strip() == "OK"
    assert marks_for(io.StringIO())[OK] == "✓"


def test_the_gui_check_runs_offscreen_and_checks_the_crash_log(qapp):
    from desktop import crash
    from desktop.selftest_gui import check_qt_offscreen

    detail = check_qt_offscreen()
    assert "PySide6" in detail and "crash log writes" in detail
    assert crash.log_path() is None  # the temporary handler was removed again


def test_dicom_step_reads_back_every_compression_and_names_a_missing_decoder(tmp_path, monkeypatch):
    detail = selftest.check_dicom_decoders(tmp_path)
    assert "JPEG-LS" in detail and "JPEG 2000" in detail
    monkeypatch.setattr(
        "engine.dicom.environment_summary", lambda: {"JPEG-LS Lossless Image Compression": False}
    )
    with pytest.raises(RuntimeError, match="no decoder for: JPEG-LS Lossless"):
        selftest.check_dicom_decoders(tmp_path / "again")
