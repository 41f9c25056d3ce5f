"""The raw dataset on disk: nnU-Net v2 layout, so an existing nnU-Net dataset is used as it is.

::

    <root>/dataset.json                channel_names, labels, numTraining, file_ending
    <root>/imagesTr/<case>_0000<ending> one file per channel (_0000, _0001, ...)
    <root>/labelsTr/<case><ending>
    <root>/imagesTs/<case>_0000<ending> optional
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverseg.errors import LiversegError
from liverseg.io.atomic import read_json, write_json
from liverseg.io.images import IMAGE_SUFFIXES

ATLAS_LABELS = {"background": 0, "liver": 1, "tumor": 2}
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class DatasetInfo:
    """The contents of ``dataset.json`` that liverseg uses (unknown keys are kept in ``extra``)."""

    channel_names: dict[str, str]
    labels: dict[str, int]
    num_training: int
    file_ending: str = ".nii.gz"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        """Number of input channels per case."""
        return len(self.channel_names)

    def label_values(self) -> set[int]:
        """The label values a label file may contain."""
        return set(self.labels.values())

    def to_dict(self) -> dict[str, Any]:
        """``dataset.json`` content in nnU-Net v2 form."""
        d = {
            "channel_names": self.channel_names,
            "labels": self.labels,
            "numTraining": self.num_training,
            "file_ending": self.file_ending,
        }
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "dataset.json") -> "DatasetInfo":
        """Parse and validate ``dataset.json`` content; MSD-style keys (``modality``) are accepted."""
        d = dict(d)
        channels = d.pop("channel_names", None) or d.pop("modality", None)
        if not isinstance(channels, dict) or not channels:
            raise LiversegError(f"{source}: 'channel_names' is missing or empty; add e.g. {{\"0\": \"MRI\"}}")
        labels = d.pop("labels", None)
        if not isinstance(labels, dict) or not labels:
            raise LiversegError(f"{source}: 'labels' is missing; add e.g. {ATLAS_LABELS}")
        if all(str(k).isdigit() for k in labels):  # MSD style {"0": "background"}
            labels = {str(v): int(k) for k, v in labels.items()}
        for name, value in labels.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise LiversegError(
                    f"{source}: label '{name}' has value {value!r}; liverseg needs one integer per label "
                    "(region-based labels are not supported)"
                )
        ending = d.pop("file_ending", ".nii.gz")
        if ending not in IMAGE_SUFFIXES:
            raise LiversegError(f"{source}: file_ending '{ending}' is not supported; use one of {', '.join(IMAGE_SUFFIXES)}")
        num = d.pop("numTraining", 0)
        d.pop("training", None)  # MSD file lists are derived from the folders instead
        d.pop("test", None)
        return cls(
            channel_names={str(k): str(v) for k, v in channels.items()},
            labels={str(k): int(v) for k, v in labels.items()},
            num_training=int(num),
            file_ending=ending,
            extra=d,
        )


class RawDataset:
    """A raw dataset folder: its ``dataset.json`` and the files of its cases."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        json_path = self.root / "dataset.json"
        if not json_path.is_file():
            raise LiversegError(f"{self.root}: no dataset.json; is this a raw dataset folder?")
        try:
            content = read_json(json_path)
        except ValueError as e:
            raise LiversegError(f"{json_path}: not valid JSON ({e})") from None
        self.info = DatasetInfo.from_dict(content, str(json_path))

    @property
    def name(self) -> str:
        """Folder name of the dataset."""
        return self.root.name

    def _case_ids(self, folder: str) -> list[str]:
        directory = self.root / folder
        if not directory.is_dir():
            return []
        ending = self.info.file_ending
        ids = set()
        for p in directory.iterdir():
            if p.name.endswith(ending) and (m := _CHANNEL_SUFFIX.match(p.name[: -len(ending)])):
                ids.add(m.group("case"))
        return sorted(ids)

    def training_cases(self) -> list[str]:
        """Identifiers of the training cases found in ``imagesTr``."""
        return self._case_ids("imagesTr")

    def test_cases(self) -> list[str]:
        """Identifiers of the cases found in ``imagesTs``."""
        return self._case_ids("imagesTs")

    def image_files(self, case: str, folder: str = "imagesTr") -> list[Path]:
        """Paths of the channel files of ``case`` (they may not exist: check before reading)."""
        return [self.root / folder / f"{case}_{int(c):04d}{self.info.file_ending}" for c in sorted(self.info.channel_names, key=int)]

    def label_file(self, case: str) -> Path:
        """Path of the label file of a training case (it may not exist)."""
        return self.root / "labelsTr" / f"{case}{self.info.file_ending}"


def write_dataset_json(root: str | Path, info: DatasetInfo) -> None:
    """Write ``dataset.json`` atomically."""
    write_json(Path(root) / "dataset.json", info.to_dict())


def open_dataset(dataset: "RawDataset | str | Path") -> RawDataset:
    """A raw dataset given as an object, a folder path, or a name/id in ``$LIVERSEG_RAW``."""
    from liverseg.paths import raw_dataset_dir

    if isinstance(dataset, RawDataset):
        return dataset
    path = Path(dataset).expanduser()
    if isinstance(dataset, Path) or (path / "dataset.json").is_file():
        return RawDataset(path)
    return RawDataset(raw_dataset_dir(str(dataset)))
