"""Every bad input of plan_and_preprocess: one line naming file and problem, exit 2, nothing written."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import path_flags, tree_snapshot

from kneeseg.cli.plan_and_preprocess import main as pp_main
from kneeseg.io import Geometry, read_image, write_image

DS = "Dataset900_KneePhantom"


def _label(paths, case="phantom_001"):
    return paths.raw / DS / "labelsTr" / f"{case}.nii.gz"


def _image(paths, case="phantom_001"):
    return paths.raw / DS / "imagesTr" / f"{case}_0000.nii.gz"


def _shift_label_origin(paths):
    labels, g = read_image(_label(paths))
    write_image(labels, Geometry(g.size, g.spacing, (g.origin[0] + 5, *g.origin[1:]), g.direction), _label(paths))
    return _label(paths), "geometry does not match"


def _bad_label_value(paths):
    labels, g = read_image(_label(paths))
    labels[0, 0, 0] = 7
    write_image(labels, g, _label(paths))
    return _label(paths), "label values [7] are not in dataset.json"


def _nan_image(paths):
    image, g = read_image(_image(paths), np.float32)
    image[3, 3, 3] = np.nan
    write_image(image, g, _image(paths))
    return _image(paths), "contains NaN or Inf"


def _two_d_image(paths):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((48, 48), np.int16)), str(_image(paths)))
    return _image(paths), "is 2D; expected a 3D image"


def _vector_image(paths):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((48, 48, 48, 3), np.uint8), isVector=True), str(_image(paths)))
    return _image(paths), "has 3 components per voxel"


def _missing_label(paths):
    _label(paths).unlink()
    return _label(paths), "missing label file"


def _unreadable_image(paths):
    _image(paths).write_bytes(b"\x00garbage")
    return _image(paths), "cannot read image"


def _num_training(paths):
    path = paths.raw / DS / "dataset.json"
    d = json.loads(path.read_text())
    d["numTraining"] = 5
    path.write_text(json.dumps(d))
    return path, "numTraining is 5 but imagesTr holds 3 cases"


def _extra_channel(paths):
    extra = paths.raw / DS / "imagesTr" / "phantom_001_0001.nii.gz"
    extra.write_bytes(_image(paths).read_bytes())
    return extra, "channel 0001 is not in dataset.json channel_names"


def _broken_dataset_json(paths):
    path = paths.raw / DS / "dataset.json"
    path.write_text("{not json")
    return path, "not valid JSON"


@pytest.mark.parametrize("spoil", [
    _shift_label_origin, _bad_label_value, _nan_image, _two_d_image, _vector_image,
    _missing_label, _unreadable_image, _num_training, _extra_channel, _broken_dataset_json,
], ids=lambda f: f.__name__.strip("_"))
def test_bad_dataset_is_refused_with_one_line_per_problem(phantom_paths, capsys, spoil):
    bad_file, problem = spoil(phantom_paths)
    before = tree_snapshot(phantom_paths.raw)
    code = pp_main(["--device", "cpu", "--machine", "reference", "--no-progress", *path_flags(phantom_paths)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert str(bad_file) in err[0] and problem in err[0]
    assert not phantom_paths.preprocessed.exists()  # nothing written
    assert tree_snapshot(phantom_paths.raw) == before  # nothing the user gave is modified


def test_every_problem_is_listed(phantom_paths, capsys):
    _nan_image(phantom_paths)
    _label(phantom_paths, "phantom_002").unlink()
    assert pp_main(["--device", "cpu", "--machine", "reference", "--no-progress", *path_flags(phantom_paths)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("kneeseg_plan_and_preprocess: error: ") for line in err)


def test_empty_raw_folder(tmp_path, capsys):
    from conftest import make_paths

    paths = make_paths(tmp_path)
    paths.raw.mkdir(parents=True)
    assert pp_main(path_flags(paths)) == 2
    assert "no DatasetNNN_Name folder found" in capsys.readouterr().err


def test_exit_code_through_the_console_script(phantom_paths):
    """The installed command itself: non-zero exit and a one-line message on stderr."""
    import subprocess
    import sys

    _nan_image(phantom_paths)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from kneeseg.cli.plan_and_preprocess import main; sys.exit(main())",
         "--device", "cpu", *path_flags(phantom_paths)],
        capture_output=True, encoding="utf-8", errors="replace",
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "contains NaN" in lines[0]
