"""The demo's command line: a wrong real-scan source or test-time scale is refused before anything is written."""

from __future__ import annotations

from kneeseg.demo import main as demo_main


def test_demo_real_refuses_a_folder_without_the_scan(tmp_path, capsys):
    (tmp_path / "download").mkdir()
    (tmp_path / "download" / "notes.txt").write_text("not a scan")
    code = demo_main(["--real", str(tmp_path / "download"), "--output", str(tmp_path / "out"), "--train-minutes", "0.1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(tmp_path / "download") in err[0] and "knee_0000.nii.gz" in err[0]
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "download").iterdir()) == ["notes.txt"]


def test_demo_refuses_a_test_time_scale_outside_training_before_it_starts(tmp_path, capsys):
    code = demo_main(["--output", str(tmp_path / "out"), "--train-minutes", "0.1", "--tta-scales", "1.0", "2.0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "0.75-1.3" in err[0] and "2.0" in err[0]
    assert not (tmp_path / "out").exists()
