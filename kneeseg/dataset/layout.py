"""The nnU-Net raw dataset layout, so that its users feel at home.

    <raw>/DatasetNNN_Name/
        dataset.json          channel_names, labels, numTraining, file_ending
        imagesTr/CASE_0000.nii.gz [CASE_0001 ...]   one file per channel
        labelsTr/CASE.nii.gz
        imagesTs/             optional, same image naming
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kneeseg.errors import KneesegError
from kneeseg.io import atomic_write_json, read_json

KNEE_LABELS = {"background": 0, "femur": 1, "tibia": 2, "patella": 3}
DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")  # DatasetNNN_Name: the id and the name


def foreground_labels(labels: dict[str, int]) -> dict[str, int]:
    """The labels without background (value 0): the structures metrics and post-processing are about."""
    return {name: value for name, value in labels.items() if value != 0}


@dataclass
class DatasetJson:
    """The contents of ``dataset.json`` (nnU-Net v2 keys)."""

    channel_names: dict[str, str]
    labels: dict[str, int]
    numTraining: int
    file_ending: str = ".nii.gz"
    name: str = ""
    description: str = ""
    reference: str = ""
    licence: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def foreground(self) -> dict[str, int]:
        return foreground_labels(self.labels)

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "description": self.description,
            "reference": self.reference,
            "licence": self.licence,
            "channel_names": self.channel_names,
            "labels": self.labels,
            "numTraining": self.numTraining,
            "file_ending": self.file_ending,
        }
        d.update(self.extra)
        return d

    @classmethod
    def load(cls, path: Path) -> DatasetJson:
        return cls.from_data(read_json(path), path)

    @classmethod
    def from_data(cls, d, path: Path | str) -> DatasetJson:
        """dataset.json from parsed JSON; ``path`` names the source in errors."""
        if not isinstance(d, dict):
            raise KneesegError(f"{path}: expected a JSON object")
        for key in ("channel_names", "labels", "numTraining", "file_ending"):
            if key not in d:
                raise KneesegError(f"{path}: missing key '{key}'")
        labels = d["labels"]
        if not isinstance(labels, dict) or labels.get("background") != 0:
            raise KneesegError(f"{path}: 'labels' must map names to integers with background = 0")
        if any(isinstance(v, (list, dict)) for v in labels.values()):
            raise KneesegError(f"{path}: region-based labels are not supported; give one integer per label")
        known = {"channel_names", "labels", "numTraining", "file_ending", "name", "description", "reference", "licence"}
        return cls(
            channel_names={str(k): str(v) for k, v in d["channel_names"].items()},
            labels={str(k): int(v) for k, v in labels.items()},
            numTraining=int(d["numTraining"]),
            file_ending=str(d["file_ending"]),
            name=str(d.get("name", "")),
            description=str(d.get("description", "")),
            reference=str(d.get("reference", "")),
            licence=str(d.get("licence", "")),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def foreground_labels(self) -> list[int]:
        return sorted(v for v in self.labels.values() if v != 0)

    def label_name(self, value: int) -> str:
        return next((k for k, v in self.labels.items() if v == value), str(value))


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 0 <= dataset_id <= 999:
        raise KneesegError(f"dataset id {dataset_id}: must be between 0 and 999")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise KneesegError(f"dataset name '{name}': use letters, digits, '_' and '-' only")
    return f"Dataset{dataset_id:03d}_{name}"


def list_datasets(root: Path) -> list[str]:
    """Names of the ``DatasetNNN_Name`` folders directly under ``root``, sorted."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and DATASET_FOLDER.match(p.name))


def matching_datasets(root: Path, dataset: str | int) -> list[str]:
    """The dataset folders under ``root`` that ``dataset`` names: its full folder name (that one
    only), its short name or its id (all that have it)."""
    text, names = str(dataset), list_datasets(root)
    if text in names:
        return [text]
    return [name for name in names if (m := DATASET_FOLDER.match(name)) is not None
            and (text == m.group(2) or (text.isdigit() and int(text) == int(m.group(1))))]


def find_dataset(root: Path, dataset: str | int | None = None) -> str:
    """Resolve a dataset given as None (the only one), an id (``900``) or a name to its folder name.

    Two folders that an id or short name both match (Dataset900_A, Dataset900_B) are an error that
    names both, never a silent choice; the full folder name always picks exactly one.
    """
    names = list_datasets(root)
    if dataset is None:
        if not names:
            raise KneesegError(f"{root}: no DatasetNNN_Name folder found")
        if len(names) > 1:
            raise KneesegError(f"{root}: several datasets ({', '.join(names)}); choose one with -d")
        return names[0]
    matches = matching_datasets(root, dataset)
    if len(matches) > 1:
        raise KneesegError(f"{root}: dataset '{dataset}' is ambiguous ({', '.join(matches)}); "
                           "give the full folder name with -d")
    if matches:
        return matches[0]
    listing = ", ".join(names) if names else "none"
    raise KneesegError(f"{root}: dataset '{dataset}' not found (available: {listing})")


@dataclass(frozen=True)
class RawCase:
    """One training case: its channel image files (in channel order) and its label file."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


def channel_files(folder: Path, case_id: str, num_channels: int, file_ending: str) -> tuple[Path, ...]:
    return tuple(folder / f"{case_id}_{c:04d}{file_ending}" for c in range(num_channels))


def list_cases(folder: Path, file_ending: str) -> list[str]:
    """Case ids of the ``CASE_0000<ending>`` files in ``folder``, sorted."""
    if not folder.is_dir():
        return []
    suffix = "_0000" + file_ending
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))


def training_cases(dataset_dir: Path, ds: DatasetJson) -> list[RawCase]:
    """All cases of ``imagesTr`` with their expected label files (which may be missing)."""
    images = dataset_dir / "imagesTr"
    labels = dataset_dir / "labelsTr"
    return [
        RawCase(case_id, channel_files(images, case_id, ds.num_channels, ds.file_ending), labels / f"{case_id}{ds.file_ending}")
        for case_id in list_cases(images, ds.file_ending)
    ]
