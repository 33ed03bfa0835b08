"""Where each modality sits in a batch of (left-padded) sequences.

A :class:`ModalityLayout` labels every position of a ``[B, L]`` batch as padding, text, video or audio, and
records, for each audio-visual token, its rank among the sample's tokens of the same modality and the index of
the chunk it belongs to (a chunk is one contiguous run of a modality: VideoLLaMA2-AV has one video and one audio
chunk, Qwen2.5-Omni and video-SALMONN 2 interleave ``[video][audio]`` chunks per time step).

Positional pruning rules ("keep the first 10 audio tokens", "keep the first 4 frames") read ``rank`` and
``chunk``; the engine reads ``modality`` to protect text and padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

import torch


class Modality(IntEnum):
    """Integer codes stored in :attr:`ModalityLayout.modality`."""

    PAD = -1
    TEXT = 0
    VIDEO = 1
    AUDIO = 2


MODALITY_NAMES: dict[str, Modality] = {
    "text": Modality.TEXT,
    "video": Modality.VIDEO,
    "audio": Modality.AUDIO,
}
AV_MODALITIES: tuple[str, ...] = ("video", "audio")


def modality_code(name: str, field: str = "modality") -> Modality:
    """Map a modality name to its code, or raise a ValueError naming ``field`` and the accepted names."""
    if name not in MODALITY_NAMES:
        raise ValueError(f"{field}={name!r} is not a modality; accepted: {sorted(MODALITY_NAMES)}")
    return MODALITY_NAMES[name]


class _FrameCounter:
    """Numbers one sample's frames of one modality, run by run: a run that gives ``frame_tokens`` continues the frames
    of the runs before it that gave the same size (a model's chunk may end inside a frame: Qwen2.5-Omni's chunking
    splits a video's grids where they are sparser than its chunks), any other run starts a new frame."""

    def __init__(self) -> None:
        self.next = 0  # the first label not yet used
        self.size: int | None = None  # frame_tokens of the open stream
        self.filled = 0  # tokens of the open stream so far

    def labels(self, count: int, frame_tokens: int | None) -> list[int]:
        if frame_tokens is None or frame_tokens != self.size:
            self.next += -(-self.filled // self.size) if self.size else 0
            self.size, self.filled = frame_tokens, 0
        if frame_tokens is None:
            self.next += count > 0
            return [self.next - 1] * count
        labels = [self.next + (self.filled + index) // frame_tokens for index in range(count)]
        self.filled += count
        return labels


Segment = tuple[str, int] | tuple[str, int, int] | tuple[str, int, int, int]
"""``(modality_name, token_count)``: one contiguous run of tokens of a single modality, or
``(modality_name, token_count, chunk)`` when the model itself says which chunk the run belongs to (Qwen2.5-Omni's
2-s time chunks, where two adjacent audio runs can belong to different chunks), or
``(modality_name, token_count, chunk, frame_tokens)`` when the run's tokens are frames of ``frame_tokens`` tokens each
(a video's temporal grids), counted on from the runs before it of the same size: a video's grids may span the model's
chunks. A run that does not say is one frame."""


@dataclass(frozen=True)
class ModalityLayout:
    """Per-position modality labels of a left-padded batch.

    Attributes:
        modality: ``[B, L]`` int64, a :class:`Modality` code per position (``PAD`` on left padding).
        rank: ``[B, L]`` int64, index of the token among its sample's tokens of the same modality
            (0-based, in sequence order); -1 on padding.
        chunk: ``[B, L]`` int64, index of the contiguous run of that modality the token belongs to within its
            sample (0-based; for interleaved ``[V][A][V][A]`` layouts this is the time-chunk index); -1 on padding.
        frame: ``[B, L]`` int64, index of the frame the token belongs to among its sample's frames of that modality
            (a model's temporal grid or frame where the adapter says so, else each run is one frame); -1 on
            padding. None: each chunk is one frame.
    """

    modality: torch.Tensor
    rank: torch.Tensor
    chunk: torch.Tensor
    frame: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.modality.ndim != 2:
            raise ValueError(f"modality must be [B, L], got shape {tuple(self.modality.shape)}")
        if self.frame is None:
            object.__setattr__(self, "frame", self.chunk)
        for name in ("rank", "chunk", "frame"):
            if getattr(self, name).shape != self.modality.shape:
                raise ValueError(f"{name} must have the shape of modality {tuple(self.modality.shape)}")
        valid = (self.modality != Modality.PAD).int()
        if not bool(valid[:, -1].all()) or bool((valid[:, 1:] < valid[:, :-1]).any()):
            raise ValueError("padding must be on the left: each row is [PAD ... PAD, tokens ...] with a last token")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_segments(
        cls, samples: Sequence[Sequence[Segment]], device: torch.device | str | None = None
    ) -> ModalityLayout:
        """Build a left-padded layout from each sample's ordered segments.

        Args:
            samples: one list per sample of ``(modality, count)`` segments in sequence order, e.g.
                ``[("text", 14), ("video", 676), ("audio", 1496), ("text", 30)]``. Shorter samples are
                left-padded to the longest.
            device: where to put the tensors.
        """
        if len(samples) == 0:
            raise ValueError("samples must hold at least one sample")
        codes: list[list[int]] = []
        chunks: list[list[int]] = []  # -2 where the chunk is derived from contiguous runs
        frames: list[list[int]] = []
        for b, segments in enumerate(samples):
            row: list[int] = []
            chunk_row: list[int] = []
            frame_row: list[int] = []
            frame_counters = {name: _FrameCounter() for name in AV_MODALITIES}
            explicit: dict[str, bool] = {}
            for s, segment in enumerate(segments):
                if not (isinstance(segment, tuple | list) and len(segment) in (2, 3, 4)):
                    raise ValueError(
                        f"samples[{b}][{s}]={segment!r} must be a (modality, count[, chunk[, frame_tokens]]) tuple"
                    )
                name, count = segment[0], segment[1]
                code = modality_code(name, field=f"samples[{b}][{s}].modality")
                if not isinstance(count, int) or count < 0:
                    raise ValueError(f"samples[{b}][{s}].count={count!r} must be an int >= 0")
                gives_chunk = len(segment) >= 3
                if code != Modality.TEXT and explicit.setdefault(name, gives_chunk) != gives_chunk:
                    raise ValueError(
                        f"samples[{b}]: every {name} segment gives its chunk, or none does; {segment!r} differs"
                    )
                if gives_chunk and (isinstance(segment[2], bool) or not isinstance(segment[2], int) or segment[2] < 0):
                    raise ValueError(f"samples[{b}][{s}].chunk={segment[2]!r} must be an int >= 0")
                chunk = segment[2] if gives_chunk and code != Modality.TEXT else -2
                frame_tokens = segment[3] if len(segment) == 4 else None
                if frame_tokens is not None and (
                    isinstance(frame_tokens, bool) or not isinstance(frame_tokens, int) or frame_tokens < 1
                ):
                    raise ValueError(f"samples[{b}][{s}].frame_tokens={frame_tokens!r}; accepted: an int >= 1")
                row.extend([int(code)] * count)
                chunk_row.extend([chunk] * count)
                if code == Modality.TEXT:
                    frame_row.extend([-1] * count)
                    continue
                frame_row.extend(frame_counters[name].labels(count, frame_tokens))
            if not row:
                raise ValueError(f"samples[{b}] has no tokens")
            codes.append(row)
            chunks.append(chunk_row)
            frames.append(frame_row)
        length = max(len(row) for row in codes)
        padded = [[int(Modality.PAD)] * (length - len(row)) + row for row in codes]
        layout = cls.from_codes(torch.tensor(padded, dtype=torch.long, device=device))
        frame = torch.tensor([[-1] * (length - len(row)) + row for row in frames], dtype=torch.long, device=device)
        given = torch.tensor([[-2] * (length - len(row)) + row for row in chunks], dtype=torch.long, device=device)
        if not bool((given >= 0).any()):
            return cls(modality=layout.modality, rank=layout.rank, chunk=layout.chunk, frame=frame)
        chunk = torch.where(given >= 0, given, layout.chunk)
        for code in (Modality.VIDEO, Modality.AUDIO):
            of_code = torch.where(layout.modality == code, chunk, -1)
            if bool((of_code.cummax(1).values > of_code).logical_and(of_code >= 0).any()):
                raise ValueError(f"{code.name.lower()} chunks must not decrease along a sample")
        return cls(modality=layout.modality, rank=layout.rank, chunk=chunk, frame=frame)

    @classmethod
    def from_token_ids(
        cls,
        input_ids: torch.Tensor,
        modality_token_ids: Mapping[str, int | Sequence[int]],
        attention_mask: torch.Tensor | None = None,
    ) -> ModalityLayout:
        """Build a layout from placeholder token ids (e.g. Qwen2.5-Omni's audio and video pad tokens).

        Args:
            input_ids: ``[B, L]`` token ids, left-padded.
            modality_token_ids: ``{"video": id or ids, "audio": id or ids}``; every other id is text.
            attention_mask: ``[B, L]``, 0 on padding; None means no padding.
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        codes = torch.full_like(input_ids, int(Modality.TEXT))
        for name, ids in modality_token_ids.items():
            code = modality_code(name, field="modality_token_ids")
            id_list = [ids] if isinstance(ids, int) else list(ids)
            codes[torch.isin(input_ids, torch.tensor(id_list, device=input_ids.device))] = int(code)
        if attention_mask is not None:
            codes[attention_mask == 0] = int(Modality.PAD)
        return cls.from_codes(codes)

    @classmethod
    def from_codes(cls, modality: torch.Tensor) -> ModalityLayout:
        """Build a layout from a ``[B, L]`` tensor of :class:`Modality` codes, deriving ``rank`` and ``chunk``."""
        modality = modality.long()
        rank = torch.full_like(modality, -1)
        chunk = torch.full_like(modality, -1)
        starts = torch.ones_like(modality, dtype=torch.bool)
        starts[:, 1:] = modality[:, 1:] != modality[:, :-1]
        for code in Modality:
            if code == Modality.PAD:
                continue
            is_code = modality == code
            rank = torch.where(is_code, is_code.long().cumsum(1) - 1, rank)
            chunk = torch.where(is_code, (starts & is_code).long().cumsum(1) - 1, chunk)
        return cls(modality=modality, rank=rank, chunk=chunk)

    # ------------------------------------------------------------------ views
    @property
    def batch_size(self) -> int:
        return self.modality.shape[0]

    @property
    def length(self) -> int:
        return self.modality.shape[1]

    @property
    def device(self) -> torch.device:
        return self.modality.device

    @property
    def valid(self) -> torch.Tensor:
        """``[B, L]`` bool, False on padding."""
        return self.modality != Modality.PAD

    def count(self, name: str) -> torch.Tensor:
        """``[B]`` number of tokens of modality ``name`` per sample."""
        return (self.modality == modality_code(name)).sum(1)

    def protected(self, sink_tokens: int) -> torch.Tensor:
        """``[B, L]`` bool: positions no rule may drop (text, the first ``sink_tokens`` tokens, the last token)."""
        valid = self.valid
        protect = self.modality == Modality.TEXT
        protect |= valid & (valid.long().cumsum(1) <= sink_tokens)
        protect[:, -1] = True
        return protect

    def to(self, device: torch.device | str) -> ModalityLayout:
        assert self.frame is not None, "__post_init__ fills it"
        return ModalityLayout(
            self.modality.to(device), self.rank.to(device), self.chunk.to(device), self.frame.to(device)
        )

    def check_padding(self, attention_mask: torch.Tensor | None) -> None:
        """Raise unless the layout's padding is exactly the zeros of ``attention_mask`` ``[B, L]``."""
        if attention_mask is None:
            if not bool(self.valid.all()):
                raise ValueError("layout has padding but the model got attention_mask=None")
            return
        if attention_mask.shape != self.modality.shape:
            raise ValueError(
                f"layout shape {tuple(self.modality.shape)} does not match attention_mask "
                f"shape {tuple(attention_mask.shape)}"
            )
        if not torch.equal(attention_mask.to(self.device) != 0, self.valid):
            raise ValueError("layout padding does not match the zeros of attention_mask")
