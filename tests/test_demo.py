"""The demo's command line: a wrong real-scan source or test-time scale is refused before anything is
written; its plans are sized for the training it runs."""

from __future__ import annotations

import json
import shutil

import pytest

from kneeseg import demo
from kneeseg.dataset.phantom import PhantomOptions, synthesize_dataset
from kneeseg.demo import main as demo_main
from kneeseg.planning.planner import CPU_STEP_OVERHEAD
from kneeseg.reference import PHANTOM_DATASET


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
    code = demo_main(["--output", str(tmp_path / "out"), "--train-minutes", "0"])  # it sizes the plan: no hours, no plan
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--train-minutes 0" in err[0]
    assert not (tmp_path / "out").exists()


class _Planned(Exception):
    pass


def test_the_demo_plans_for_the_minutes_it_trains(tmp_path, monkeypatch):
    """An hour's plan trained for the demo's minutes gets a few epochs (benchmarks/RESULTS.md); sized for
    its minutes, ~50 fit them. Two of the demo's full-size phantoms, planned for the reference machine;
    the training is stopped before it starts."""
    phantoms = tmp_path / "phantoms"
    synthesize_dataset(phantoms, 2, 0, PhantomOptions(), 0, progress=False)
    monkeypatch.setattr(demo, "make_phantom_dataset", lambda raw, progress=False: shutil.copytree(phantoms, raw / PHANTOM_DATASET))
    budgets: list[float] = []

    def train(paths, fold, dataset, options):
        budgets.append(options.time_budget_min)
        raise _Planned

    monkeypatch.setattr(demo.api, "train", train)
    plans = {}
    for minutes in (demo.DEMO_TRAIN_MINUTES, 60.0):
        with pytest.raises(_Planned):
            demo.run_demo(tmp_path / f"out{minutes:g}", minutes, progress=False, machine="reference")
        plans[minutes] = json.loads((tmp_path / f"out{minutes:g}" / "preprocessed" / PHANTOM_DATASET / "kneesegPlans.json").read_text())
    assert budgets == [demo.DEMO_TRAIN_MINUTES, 60.0]
    short, hour = (plans[m]["configurations"]["3d_cpu"] for m in (demo.DEMO_TRAIN_MINUTES, 60.0))
    assert plans[demo.DEMO_TRAIN_MINUTES]["hardware"]["cpu_training_hours"] == pytest.approx(demo.DEMO_TRAIN_MINUTES / 60)
    assert plans[60.0]["hardware"]["cpu_training_hours"] == 1.0
    for config, minutes in ((short, demo.DEMO_TRAIN_MINUTES), (hour, 60.0)):  # each budget holds ~50 epochs of its steps
        training = config["training"]
        steps_s = training["num_epochs"] * training["iterations_per_epoch"] * config["estimate"]["seconds_per_iteration"]
        assert 40 <= training["num_epochs"] and steps_s * CPU_STEP_OVERHEAD == pytest.approx(minutes * 60, rel=0.1)
    assert short["estimate"]["gflops_per_iteration"] < hour["estimate"]["gflops_per_iteration"] / 4
    assert min(short["spacing"]) > min(hour["spacing"])  # the coarser grid keeps the context of a smaller patch
