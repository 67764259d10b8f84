"""Counts of what a pack or a loader kept and skipped, and why (mergeable across workers)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_BAD_FILES = 1000  # the manifest lists at most this many (file, reason) pairs; counts stay exact


class BadInput(ValueError):
    """A source file that cannot be used; carries the file and a short machine-readable reason."""

    def __init__(self, file: str, reason: str, detail: str = "") -> None:
        self.file, self.reason, self.detail = str(file), reason, detail
        super().__init__(f"{file}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class PackStats:
    """Samples written per ``source/kind``; rejections and conversions per reason; the bad files."""

    samples: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    bad_files: list[list[str]] = field(default_factory=list)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] += n

    def bad(self, error: BadInput) -> None:
        self.rejected[error.reason] += 1
        if len(self.bad_files) < MAX_BAD_FILES:
            self.bad_files.append([error.file, error.reason + (f": {error.detail}" if error.detail else "")])

    def merge(self, other: "PackStats") -> "PackStats":
        self.samples.update(other.samples)
        self.rejected.update(other.rejected)
        self.converted.update(other.converted)
        room = MAX_BAD_FILES - len(self.bad_files)
        self.bad_files.extend(other.bad_files[: max(room, 0)])
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": dict(sorted(self.samples.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "converted": dict(sorted(self.converted.items())),
            "bad_files": self.bad_files,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PackStats":
        return cls(
            Counter(d.get("samples", {})),
            Counter(d.get("rejected", {})),
            Counter(d.get("converted", {})),
            [list(x) for x in d.get("bad_files", [])],
        )
