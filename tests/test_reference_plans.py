"""plans/ holds the plans of the reference datasets; regenerating them must give the same files."""

import json

import pytest
from conftest import REPO

from kneeseg.reference import PHANTOM_DATASET, REAL_DATASET, plans_file, reference_plans


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, request):
    from conftest import SHARED

    shared = SHARED if (SHARED / "knee_0000.nii.gz").exists() else None
    return reference_plans(tmp_path_factory.mktemp("reference"), shared)


@pytest.mark.parametrize("dataset", [PHANTOM_DATASET, REAL_DATASET])
def test_reference_plans_do_not_drift(fresh, dataset):
    if dataset not in fresh:
        pytest.skip("real data not found in ../shared")
    committed = json.loads(plans_file(REPO / "plans", dataset).read_text())
    regenerated = json.loads(json.dumps(fresh[dataset].to_dict()))
    assert _close(committed, regenerated), (
        f"plans/{dataset} drifted: run `make plans` and review the difference"
    )


def _close(a, b, rel=1e-6):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= rel * max(1.0, abs(a), abs(b))
    return a == b
