"""Archives listed in a manifest, results as Parquet, and --backend ray without Ray."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.manifest import ManifestError, load_source, read_manifest


def _images(folder: Path, n: int = 3) -> list[Path]:
    from engine.synth import synthesize

    synthesize(folder, "fundus", n=n, seed=7, size=96, classes=("normal",))
    return sorted(folder.rglob("*.png"))


def test_a_csv_manifest_lists_files_relative_to_itself_with_patient_and_eye(tmp_path):
    files = _images(tmp_path / "imgs")
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "path,patient,eye\n"
        f"{files[0].relative_to(tmp_path)},P1,OD\n"
        f"{files[1]},P2,l\n"
        f"{files[2].relative_to(tmp_path)},,\n"
        f"{files[0].relative_to(tmp_path)},P1,OD\n",  # listed twice: screened once
        encoding="utf-8",
    )
    src = load_source(manifest)
    assert src.paths == [files[0], files[1], files[2]]
    assert src.duplicates == 1
    facts = src.known_facts
    assert facts[str(files[0].resolve())] == {"patient": "P1", "eye": "right"}
    assert facts[str(files[1].resolve())] == {"patient": "P2", "eye": "left"}
    assert facts[str(files[2].resolve())] == {"patient": None, "eye": None}
    assert load_source(tmp_path / "imgs").paths == files  # a folder is still walked


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,patient\na.png,P1\n", "needs a 'path' column"),
        ("path,eye\na.png,middle\n", "row 2: eye 'middle'"),
        ("path\n\n,\n", "row 2: empty path"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_file_and_row(tmp_path, text, message):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match=message) as e:
        read_manifest(manifest)
    assert "bad.csv" in str(e.value)


def test_a_parquet_manifest_reads_like_a_csv_one(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    files = _images(tmp_path / "imgs", 2)
    rows = [{"path": str(files[0]), "patient": "P9", "eye": "OS"}, {"path": "imgs/x.png"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "list.parquet")
    src = read_manifest(tmp_path / "list.parquet")
    assert src.paths == [files[0], tmp_path / "imgs" / "x.png"]
    assert src.known_facts[str(files[0].resolve())] == {"patient": "P9", "eye": "left"}


def test_screening_a_manifest_into_a_workspace_keeps_its_patient_and_eye(
    tmp_path, tiny_model, capsys
):
    from engine.store import Workspace

    files = _images(tmp_path / "imgs", 2)
    manifest = tmp_path / "list.csv"
    # the file names say patient 0000/0001 and eye OI; the manifest knows better
    manifest.write_text(f"path,patient,eye\n{files[0]},P-17,R\n{files[1]},,\n", encoding="utf-8")
    ws = tmp_path / "ws"
    code = main(["screen", str(manifest), "--model", str(tiny_model), "--workspace", str(ws)])
    assert code == 0, capsys.readouterr().err
    with Workspace.open(ws, create=False) as w:
        by_path = {Path(i["path"]).name: i for i in w.images()}
        assert len(w.predictions()) == 2
    first, second = by_path[files[0].name], by_path[files[1].name]
    assert (first["patient"], first["eye"]) == ("P-17", "right")
    assert second["patient"] == files[1].name.split("_")[0]  # from the file name, as before


def test_results_as_parquet_keep_numbers_as_numbers(tmp_path, tiny_model, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    files = _images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "r.parquet"
    code = main(["screen", str(tmp_path / "imgs"), "--model", str(tiny_model), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    table = pq.read_table(out)
    assert table.num_rows == len(files) + 1
    assert str(table.schema.field("p_normal").type) == "double"
    assert str(table.schema.field("quality_ok").type) == "bool"
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    assert rows["empty.jpg"]["error"] == "file is empty (0 bytes)"
    assert rows["empty.jpg"]["p_normal"] is None
    good = rows[files[0].name]
    assert abs(good["p_normal"] + good["p_diabetic_retinopathy"] - 1) < 1e-5
    assert not list(tmp_path.glob(".r.parquet.*"))  # no temporary file left behind


def test_backend_ray_without_ray_installed_says_what_to_install(
    tmp_path, monkeypatch, capsys, synth_fundus
):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    argv = ["screen", str(synth_fundus), "--model", str(tmp_path / "m.safetensors")]
    code = main([*argv, "--out", str(tmp_path / "r.csv"), "--backend", "ray"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.count("\n") == 0
    assert "pip install 'eyetriage[cluster]'" in err and "--backend ray" in err
    assert not (tmp_path / "r.csv").exists()


def test_ray_options_without_the_ray_backend_are_refused(tmp_path, capsys, synth_fundus):
    argv = ["screen", str(synth_fundus), "--model", str(tmp_path / "m.safetensors")]
    code = main([*argv, "--out", str(tmp_path / "r.csv"), "--model-workers", "2"])
    assert code == 1
    assert "--model-workers only apply with --backend ray" in capsys.readouterr().err
