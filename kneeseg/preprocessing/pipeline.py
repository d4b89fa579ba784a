"""plan_and_preprocess: verify -> fingerprint -> plans -> preprocessed cache, for one raw dataset.

Layout written under ``<preprocessed>/DatasetNNN_Name/``:
    dataset.json, dataset_fingerprint.json, <plans_name>.json
    <data_identifier>/CASE.npy (float32 C,Z,Y,X), CASE_seg.npy (int8 Z,Y,X), CASE.json (properties),
                      preprocessing.json (plans name, signature, case list)
Nothing is written before verification passes; each cache folder is built under a temporary name
and renamed into place when complete. With a parent model (``--plans-from``) the plans are its
configuration (kneeseg.planning.inherit), and a case whose air is not stored as zeros while the
parent normalises inside the nonzero region gets its air stored as zeros first: as the fine-tuned
model's predictor will store the air of every new scan (kneeseg.inference.acquisition).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from kneeseg.dataset.layout import DatasetJson, RawCase, find_dataset, training_cases
from kneeseg.dataset.verify import verify_dataset
from kneeseg.errors import KneesegError
from kneeseg.fingerprint import extract_fingerprint
from kneeseg.fingerprint.air import air_is_zeroed, with_air_zeroed
from kneeseg.io import atomic_write_json, read_image, read_json
from kneeseg.paths import KneesegPaths
from kneeseg.planning.inherit import ParentModel, check_fits, plans_from_parent
from kneeseg.planning.planner import plan_experiment
from kneeseg.planning.plans import ConfigurationPlan, HardwareTarget, Plans
from kneeseg.preprocessing.preprocess import preprocess_case

CACHE_MANIFEST = "preprocessing.json"


@dataclass
class PlanAndPreprocessResult:
    dataset_name: str
    plans_path: Path
    plans: Plans
    cache_dirs: dict[str, Path] = field(default_factory=dict)


def _preprocess_job(job):
    case, labels, config, out_dir, seed, threads, zero_air = job
    import torch

    torch.set_num_threads(threads)
    images, geometry = [], None
    for path in case.images:
        image, geometry = read_image(path, np.float32)
        images.append(image)
    if zero_air and not air_is_zeroed(images[0]):
        images = with_air_zeroed(images)
    seg = read_image(case.label)[0] if case.label is not None else None
    rng = np.random.default_rng(np.random.SeedSequence([seed, sum(map(ord, case.case_id))]))
    result = preprocess_case(images, geometry, config, seg, labels, rng)
    np.save(out_dir / f"{case.case_id}.npy", result.data)
    if result.seg is not None:
        np.save(out_dir / f"{case.case_id}_seg.npy", result.seg)
    atomic_write_json(out_dir / f"{case.case_id}.json", {"case_id": case.case_id, **result.properties})
    return case.case_id


def preprocess_dataset(
    cases: list[RawCase], labels: list[int], plans: Plans, config: ConfigurationPlan, dataset_out: Path,
    num_processes: int = 1, seed: int = 0, progress: bool = True, zero_air: bool = False,
) -> Path:
    """Build ``dataset_out/<config.data_identifier>/`` from the raw cases; replaces an old cache whole.
    ``zero_air``: store the air of a case whose air is not zeros as zeros first."""
    from tqdm import tqdm

    final = dataset_out / config.data_identifier
    staging = Path(tempfile.mkdtemp(prefix=f".{config.data_identifier}.", dir=dataset_out))
    try:
        workers = max(1, min(num_processes, len(cases)))
        threads = max(1, (os.cpu_count() or 1) // workers)
        jobs = [(c, labels, config, staging, seed, threads, zero_air) for c in cases]
        desc = f"preprocessing {config.name}"
        if workers > 1:
            with get_context("spawn").Pool(workers) as pool:
                done = list(tqdm(pool.imap(_preprocess_job, jobs), total=len(jobs), desc=desc, disable=not progress))
        else:
            done = [_preprocess_job(j) for j in tqdm(jobs, desc=desc, disable=not progress)]
        atomic_write_json(staging / CACHE_MANIFEST, {
            "plans_name": plans.plans_name,
            "data_identifier": config.data_identifier,
            "signature": config.preprocessing_signature(),
            "cases": sorted(done),
        })
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def check_cache(cache_dir: Path, plans: Plans, config: ConfigurationPlan) -> list[str]:
    """Case ids of a preprocessed cache, after checking that it was made with these plans."""
    manifest = cache_dir / CACHE_MANIFEST
    if not manifest.exists():
        raise KneesegError(f"{cache_dir}: no preprocessed data; run kneeseg_plan_and_preprocess -c {config.name}")
    info = read_json(manifest)
    if info.get("signature") != config.preprocessing_signature():
        raise KneesegError(f"{cache_dir}: preprocessed with other plans; run kneeseg_plan_and_preprocess again")
    return list(info["cases"])


def plan_and_preprocess(
    paths: KneesegPaths,
    dataset: str | int | None = None,
    configurations: list[str] | None = None,
    device: str = "cpu",
    hardware: HardwareTarget | None = None,
    plans_name: str = "kneesegPlans",
    num_processes: int = 1,
    seed: int = 0,
    verify: bool = True,
    preprocess: bool = True,
    progress: bool = True,
    cpu_spacing: list[float] | None = None,
    parent: ParentModel | None = None,
) -> PlanAndPreprocessResult:
    """Fingerprint, plan and preprocess a raw dataset.

    ``configurations`` to preprocess default to the one the plans recommend for ``device``
    ('cpu', 'cuda', 'mps'); ``preprocess=False`` only writes the fingerprint and plans.
    ``cpu_spacing`` (z, y, x mm) replaces the spacing the planner would choose for ``3d_cpu``.
    ``hardware``: what to plan for; by default the named "reference" machine profile, which makes
    the same plans on every machine (kneeseg.api.machine_profile measures this one).
    ``parent``: take that model's configuration instead of planning (kneeseg.planning.inherit).
    """
    if cpu_spacing is not None and (len(cpu_spacing) != 3 or not min(cpu_spacing) > 0):
        raise KneesegError(f"cpu_spacing {list(cpu_spacing)}: needs three positive spacings in mm (z, y, x)")
    name = find_dataset(paths.raw, dataset)
    raw_dir = paths.raw / name
    if verify:
        ds, cases = verify_dataset(raw_dir, num_processes, progress)
    else:
        ds = DatasetJson.load(raw_dir / "dataset.json")
        cases = training_cases(raw_dir, ds)
    if parent is not None:
        check_fits(parent, ds, str(raw_dir))  # before the fingerprint's minutes
    fingerprint = extract_fingerprint(name, cases, ds, num_processes, seed, progress)
    if not any(volume > 0 for case in fingerprint.cases for volume in case.class_volumes_mm3.values()):
        raise KneesegError(f"{raw_dir}: every label map is empty (no voxel of {', '.join(ds.foreground)}): "
                           "nothing to plan or train for")
    if parent is not None:
        plans = plans_from_parent(parent, fingerprint, ds, plans_name, str(raw_dir))
    else:
        plans = plan_experiment(fingerprint, ds, hardware or HardwareTarget(), plans_name, cpu_spacing)
    wanted = configurations or [plans.recommended_configuration(device)]
    for c in wanted:
        plans.configuration(c)  # unknown configuration: error before anything is written

    out = paths.preprocessed / name
    out.mkdir(parents=True, exist_ok=True)
    ds.save(out / "dataset.json")
    atomic_write_json(out / "dataset_fingerprint.json", fingerprint.to_dict())
    plans_path = out / f"{plans_name}.json"
    plans.save(plans_path)
    result = PlanAndPreprocessResult(dataset_name=name, plans_path=plans_path, plans=plans)
    if preprocess:
        for c in wanted:
            config = plans.configuration(c)
            zero_air = parent is not None and bool(config.use_mask_for_norm[0])
            result.cache_dirs[c] = preprocess_dataset(cases, ds.foreground_labels, plans, config, out, num_processes, seed, progress,
                                                      zero_air)
    return result
