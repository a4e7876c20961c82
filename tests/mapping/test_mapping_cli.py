"""``hisbridge map`` and ``hisbridge test``, as integrators run them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = SHARED / "samples" / "hl7"


STANDARD = ("adt_to_fhir", "orders_to_servicerequest", "oru_to_diagnosticreport",
            "dft_to_chargeitem", "dft_to_nhsa_2204", "patient_to_adt_a08")
LOOKUPS = ("hospitals.csv", "coding_systems.csv", "charge_codes.csv")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the standard mappings and their fixtures, as an integrator's checkout."""
    src, dst = ROOT / "mappings", tmp_path / "mappings"
    (dst / "lookups").mkdir(parents=True)
    for name in STANDARD:
        shutil.copy(src / f"{name}.toml", dst / f"{name}.toml")
        shutil.copytree(src / "fixtures" / name, dst / "fixtures" / name)
    for name in LOOKUPS:
        shutil.copy(src / "lookups" / name, dst / "lookups" / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_map_prints_the_result(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["map", "adt_to_fhir", str(SAMPLES / "adt_a03_discharge.hl7")]) == 0
    bundle = json.loads(capsys.readouterr().out)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["entry"][1]["resource"]["status"] == "finished"


def test_map_by_file_with_headers(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["map", "mappings/dft_to_nhsa_2204.toml",
                 str(SAMPLES / "dft_p03_outpatient_charges.hl7"),
                 "--header", "mdtrt_id=MD1", "--header", "psn_no=P1"])
    assert code == 0
    out = capsys.readouterr().out
    assert '"det_item_fee_sumamt": 7.20' in out and '"pric": 3.600000' in out


def test_map_prints_the_precise_error(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["map", "dft_to_nhsa_2204", str(SAMPLES / "dft_p03_outpatient_charges.hl7")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: mappings/dft_to_nhsa_2204.toml: rule[0].rule[1] "
                          "(from 'PV1-50.1, @header:mdtrt_id' to '.mdtrt_id'): "
                          "required value is missing")


def test_map_reports_a_broken_mapping_and_unknown_names(
    workdir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    bad = workdir / "bad.toml"
    bad.write_text('source = "hl7v2"\ntarget = "json"\n[[rule]]\nfrom = "PID-3"\n'
                   'transform = ["uper"]\nto = "x"\n', encoding="utf-8")
    sample = str(SAMPLES / "adt_a03_discharge.hl7")
    assert main(["map", str(bad), sample]) == 1
    assert "unknown transform 'uper' (did you mean 'upper'?)" in capsys.readouterr().err
    assert main(["map", "no_such_mapping", sample]) == 1
    assert "no mapping named 'no_such_mapping'" in capsys.readouterr().err
    assert main(["map", "adt_to_fhir", "missing.hl7"]) == 1
    assert "input file missing.hl7 does not exist" in capsys.readouterr().err


def test_save_then_test_then_break_shows_a_diff(
    workdir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    sample = str(SAMPLES / "dft_p03_outpatient_charges.hl7")
    assert main(["map", "dft_to_nhsa_2204", sample, "--header", "mdtrt_id=MD1",
                 "--header", "psn_no=P1", "--save", "mine"]) == 0
    folder = workdir / "mappings" / "fixtures" / "dft_to_nhsa_2204"
    assert (folder / "mine.in.hl7").read_bytes() == Path(sample).read_bytes()
    assert json.loads((folder / "mine.headers.json").read_text()) == {
        "mdtrt_id": "MD1", "psn_no": "P1",
    }
    capsys.readouterr()
    assert main(["test", "mappings"]) == 0
    assert "0 failed" in capsys.readouterr().out

    # An integrator changes the scale of an amount: the fixture catches it, with a diff.
    mapping = workdir / "mappings" / "dft_to_nhsa_2204.toml"
    text = mapping.read_text(encoding="utf-8")
    changed = text.replace("transform = [{ decimal = 4 }]", "transform = [{ decimal = 2 }]")
    mapping.write_text(changed, encoding="utf-8")
    assert main(["test", "mappings"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  dft_to_nhsa_2204/mine" in out
    assert '-      "cnt": 2.0000,' in out and '+      "cnt": 2.00,' in out
    assert "--- expected (mine.out.json)" in out
    # Every fixture with output (the shipped ones and the saved one) now differs on cnt.
    expected = sum(1 for f in (workdir / "mappings" / "fixtures" / "dft_to_nhsa_2204").glob(
        "*.out.json"))
    assert f"{expected} failed" in out


def test_test_reports_mappings_that_do_not_load(
    workdir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (workdir / "mappings" / "broken.toml").write_text('source = "x"\n', encoding="utf-8")
    assert main(["test"]) == 1
    out = capsys.readouterr().out
    assert "ERROR mappings/broken.toml source: must be one of" in out
    assert "1 mapping file(s) did not load" in out


def test_test_of_one_mapping_and_expected_errors(
    workdir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["test", "-v", "mappings/adt_to_fhir.toml"]) == 0
    out = capsys.readouterr().out
    assert "ok    adt_to_fhir/a01_without_mrn" in out  # an expected MappingError
    assert "ok    adt_to_fhir/a02_transfer_not_mapped" in out  # an expected empty output
    assert "5 passed, 0 failed" in out


def test_the_console_script_exit_status(workdir: Path) -> None:
    script = Path(sys.executable).parent / "hisbridge"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run([str(script), "test", "mappings"], capture_output=True, text=True,
                        env=env, timeout=60, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    fixture = workdir / "mappings" / "fixtures" / "adt_to_fhir" / "a03_discharge.out.json"
    fixture.write_text(fixture.read_text().replace('"finished"', '"in-progress"'))
    failed = subprocess.run([str(script), "test", "mappings"], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert failed.returncode == 1
    assert "FAIL  adt_to_fhir/a03_discharge" in failed.stdout
