"""A synthetic low-field knee: distal femur, proximal tibia, patella (and an unlabelled fibula)
in muscle, fat and skin, on a T2-weighted steady-state contrast like the 0.3 T 3D SST2 scan of
KneeBones3Dify (marrow medium-bright, cortex dark, fat bright, muscle dark, fluid bright), with
Rician noise, a smooth multiplicative bias field, and random pose, size, flexion and shape.

Anatomy is written as smooth implicit shapes in millimetres (x: right->left, y: anterior->posterior,
z: inferior->superior, the LPS patient axes of DICOM) and sampled at the voxel centres, so any
shape and (anisotropic) spacing gives the same knee. The knee is scaled to fill the field of view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from kneeseg.dataset.layout import KNEE_LABELS, DatasetJson
from kneeseg.io import Geometry, write_image

# Intensities of the tissues, on the scale of the real scan's int16 values.
TISSUE = {
    "air": 0.0, "muscle": 260.0, "fat": 1500.0, "skin": 450.0, "marrow": 1150.0, "cortex": 110.0,
    "cartilage": 720.0, "fluid": 1750.0, "tendon": 90.0,
}
CANONICAL_FOV_MM = 150.0  # the knee below is drawn for a 150 mm field of view, then scaled


@dataclass(frozen=True)
class PhantomOptions:
    shape: tuple[int, ...] = (128, 128, 128)  # (z, y, x) voxels
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)  # (z, y, x) mm
    snr: float = 15.0  # marrow intensity / noise sigma; the real scan is about 15
    bias_strength: float = 0.25  # peak relative amplitude of the multiplicative bias field
    max_rotation_deg: float = 12.0
    max_flexion_deg: float = 15.0


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


class _Field:
    """Voxel-centre coordinates (mm, canonical knee frame) on which implicit shapes are evaluated."""

    def __init__(self, x, y, z):
        self.x, self.y, self.z = x, y, z

    def ellipsoid(self, c, r):
        """Positive inside, ~ (1 - normalised radius); zero on the surface."""
        q = ((self.x - c[0]) / r[0]) ** 2 + ((self.y - c[1]) / r[1]) ** 2 + ((self.z - c[2]) / r[2]) ** 2
        return 1.0 - np.sqrt(q)

    def cylinder_z(self, c, r, z_lo, z_hi, soft=4.0):
        """Elliptic cylinder along z between z_lo and z_hi (soft-capped), same sign convention."""
        q = 1.0 - np.sqrt(((self.x - c[0]) / r[0]) ** 2 + ((self.y - c[1]) / r[1]) ** 2)
        cap = np.minimum(self.z - z_lo, z_hi - self.z) / soft
        return np.minimum(q, cap)


def _smooth_union(*fields, k=0.08):
    """Soft maximum of implicit fields: unions without creases where shapes meet."""
    stacked = np.stack(fields)
    m = stacked.max(0)
    return m + k * np.log(np.exp((stacked - m) / k).sum(0))


def _smooth_noise(rng, shape, sigma_vox, spacing=None):
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return field / (field.std() + 1e-8)


def synthesize_case(rng: np.random.Generator, options: PhantomOptions = PhantomOptions()):
    """One phantom knee: returns (image float32 (z,y,x), labels uint8 (z,y,x), Geometry)."""
    shape = tuple(int(s) for s in options.shape)
    spacing = np.asarray(options.spacing, dtype=float)
    extent = np.asarray(shape) * spacing  # mm, (z, y, x)
    scale = min(extent[1], extent[2], 1.4 * extent[0]) / CANONICAL_FOV_MM * rng.uniform(0.9, 1.05)
    jitter = lambda: rng.uniform(0.9, 1.1)  # noqa: E731  per-structure shape variation

    # Voxel centres in mm, centred on the field of view, then mapped into the canonical knee frame
    # (random pose + translation + overall size).
    zz, yy, xx = [(np.arange(n) + 0.5) * s - e / 2 for n, s, e in zip(shape, spacing, extent)]
    z, y, x = np.meshgrid(zz, yy, xx, indexing="ij")
    a = np.deg2rad(options.max_rotation_deg)
    rot = _rotation(rng.uniform(-a, a) * 0.6, rng.uniform(-a, a) * 0.6, rng.uniform(-a, a))
    shift = rng.uniform(-0.04, 0.04, 3) * extent[::-1]
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()]) - shift[:, None]
    px, py, pz = (rot.T @ pts / scale).reshape(3, *shape)
    # Knee flexion: femur and patella turn about a medio-lateral axis through the joint centre.
    flex = np.deg2rad(rng.uniform(0, options.max_flexion_deg))
    joint = np.array([0.0, 8.0, 2.0])
    fy = np.cos(flex) * (py - joint[1]) - np.sin(flex) * (pz - joint[2]) + joint[1]
    fz = np.sin(flex) * (py - joint[1]) + np.cos(flex) * (pz - joint[2]) + joint[2]
    # Bones are drawn 20% larger than the soft-tissue frame: low-field knee coils are tight.
    tib = _Field(px / 1.2, py / 1.2, pz / 1.2)
    fem = _Field(px / 1.2, fy / 1.2, fz / 1.2)
    limb_frame = _Field(px, py, pz)

    w = jitter()  # condyle width
    femur = _smooth_union(
        fem.cylinder_z((0, 6), (13 * jitter(), 12 * jitter()), 14, 200),
        fem.ellipsoid((0, 4, 20), (30 * w, 21 * jitter(), 20 * jitter())),
        fem.ellipsoid((-17 * w, 10, 12), (14 * w, 23 * jitter(), 13 * jitter())),
        fem.ellipsoid((17 * w, 10, 12), (13.5 * w, 22 * jitter(), 12.5 * jitter())),
    )
    notch = np.minimum(np.minimum(5.5 * w - np.abs(fem.x), fem.y - 8.0), 22.0 - fem.z) / 3.0
    femur = np.minimum(femur, -notch)
    tw = jitter()
    tibia = _smooth_union(
        tib.ellipsoid((0, 7, -13), (36 * tw, 26 * jitter(), 8.5)),
        tib.ellipsoid((0, 9, -24), (27 * tw, 21, 16 * jitter())),
        tib.cylinder_z((0, 10), (13 * jitter(), 12 * jitter()), -200, -15),
        tib.ellipsoid((0, -13, -29), (8, 6, 10)),
    )
    patella = fem.ellipsoid((0, -31 * jitter(), 21), (19 * jitter(), 8.5 * jitter(), 21 * jitter()))
    fibula = _smooth_union(
        tib.ellipsoid((29 * tw, 20, -22), (9, 9, 8)),
        tib.cylinder_z((29 * tw, 21), (6, 6), -200, -20),
    )
    labels = np.zeros(shape, np.uint8)
    labels[femur > 0] = KNEE_LABELS["femur"]
    labels[tibia > 0] = KNEE_LABELS["tibia"]
    labels[patella > 0] = KNEE_LABELS["patella"]
    bone = labels > 0
    fib = (fibula > 0) & ~bone

    # Soft tissue: limb outline with skin and subcutaneous fat, intermuscular fat septa.
    limb = 1.0 - np.sqrt((limb_frame.x / (58 * jitter())) ** 2 + ((limb_frame.y - 2) / (54 * jitter())) ** 2)
    limb_mm = limb * 50.0
    image = np.full(shape, TISSUE["air"], np.float32)
    image[limb_mm > 0] = TISSUE["skin"]
    image[limb_mm > 1.5] = TISSUE["fat"]
    inner = limb_mm > 1.5 + 6.0 * jitter()
    septa = _smooth_noise(rng, shape, 3.0 / spacing.min()) > 1.6
    image[inner] = np.where(septa[inner], TISSUE["fat"], TISSUE["muscle"])
    # Infrapatellar (Hoffa) fat pad between patella tendon and joint, a bright anterior region.
    hoffa = tib.ellipsoid((0, -14, -2), (18, 9, 9)) > 0
    image[hoffa & inner] = TISSUE["fat"]

    # Bones: cortex as a dark rim inside, marrow with trabecular texture; cartilage and fluid outside.
    any_bone = bone | fib
    depth = ndimage.distance_transform_edt(any_bone, sampling=spacing)
    outside = ndimage.distance_transform_edt(~any_bone, sampling=spacing)
    # Cartilage covers the articulating surfaces only: the femoral condyles and trochlea, the tibial
    # plateau and the back of the patella; a thin film of bright fluid lies between them.
    articular = ((tib.z > -14) & (tib.z < 12)) | ((fem.y < -5) & (fem.z < 40) & (fem.z > 0))
    cartilage = (outside > 0) & (outside <= 2.2 * scale) & articular & ~fib
    fluid = (outside > 2.2 * scale) & (outside <= 3.2 * scale) & articular & (np.abs(tib.x) < 42)
    image[fluid] = TISSUE["fluid"]
    image[cartilage] = TISSUE["cartilage"]
    tendon = np.minimum(np.minimum(5.0 - np.abs(tib.x) / 1.5, 2.0 - np.abs(tib.y + 25 + 0.3 * tib.z)), np.minimum(tib.z + 28, 6 - tib.z))
    image[(tendon > 0) & ~any_bone] = TISSUE["tendon"]
    trabecular = _smooth_noise(rng, shape, 0.6 / spacing.min())
    image[any_bone] = TISSUE["marrow"] * (1.0 + 0.14 * trabecular[any_bone])
    image[any_bone & (depth <= 1.3 * scale)] = TISSUE["cortex"]

    # Acquisition: blur (partial volume), bias field, Rician noise.
    image = ndimage.gaussian_filter(image, 0.6)
    coords = [g / (e / 2) for g, e in zip((z, y, x), extent)]
    poly = sum(rng.uniform(-1, 1) * c for c in coords) + sum(rng.uniform(-0.5, 0.5) * c * d for c in coords for d in coords)
    bias = np.exp(options.bias_strength * poly / max(1e-6, np.abs(poly).max()))
    sigma = TISSUE["marrow"] / options.snr
    real = image * bias + rng.normal(0, sigma, shape)
    imag = rng.normal(0, sigma, shape)
    image = np.sqrt(real**2 + imag**2).astype(np.float32)

    origin = tuple(float(v) for v in (-extent[2] / 2, -extent[1] / 2, -extent[0] / 2))
    geometry = Geometry(size=shape[::-1], spacing=tuple(float(s) for s in spacing[::-1]), origin=origin,
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return np.round(image).astype(np.int16), labels, geometry


def synthesize_dataset(
    out_dir: Path,
    num_cases: int,
    seed: int = 0,
    options: PhantomOptions = PhantomOptions(),
    num_test: int = 0,
    progress: bool = True,
) -> DatasetJson:
    """Write ``num_cases`` training cases (and ``num_test`` held-out cases with labels in labelsTs)
    as an nnU-Net raw dataset. Case i depends only on (seed, i), so datasets are reproducible."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    children = np.random.SeedSequence(seed).spawn(num_cases + num_test)
    jobs = [("Tr", f"phantom_{i:03d}", children[i]) for i in range(num_cases)]
    jobs += [("Ts", f"phantom_test_{i:03d}", children[num_cases + i]) for i in range(num_test)]
    for split, case_id, child in tqdm(jobs, desc="synthesising", unit="case", disable=not progress):
        image, labels, geometry = synthesize_case(np.random.default_rng(child), options)
        write_image(image, geometry, out_dir / f"images{split}" / f"{case_id}_0000.nii.gz")
        write_image(labels, geometry, out_dir / f"labels{split}" / f"{case_id}.nii.gz")
    ds = DatasetJson(
        channel_names={"0": "T2"},
        labels=dict(KNEE_LABELS),
        numTraining=num_cases,
        file_ending=".nii.gz",
        name=out_dir.name,
        description="Synthetic low-field (0.3 T-like, T2-weighted steady-state) knee phantom made by kneeseg_synth",
        reference="kneeseg",
        licence="CC0",
        extra={"phantom": {"seed": seed, "shape_zyx": list(options.shape), "spacing_zyx": list(options.spacing), "snr": options.snr}},
    )
    ds.save(out_dir / "dataset.json")
    return ds
