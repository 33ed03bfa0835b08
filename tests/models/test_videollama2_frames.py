"""``fastav_videollama2`` on an in-memory video ``{"type": "video", "frames": uint8 [T, H, W, 3], "fps"}``
(AV-Synth's ``doc_to_visual``): sampled as a video file's decoded frames are, with a separate audio item as the
sample's audio, and a malformed dict refused naming the field."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from fastav_eval.avsynth import build_documents
from fastav_eval.avsynth.dataset import request_visuals
from fastav_eval.models.base import Request, SampleError
from fastav_eval.models.media import VIDEO_DICT
from fastav_eval.models.videollama2 import frame_indices
from tests.models.videollama2_fixtures import tiny_adapter

QUESTION = "How many sounds are there?"
AUDIO = {"type": "audio", "array": np.linspace(-0.5, 0.5, 16000, dtype=np.float32), "sampling_rate": 16000}


@pytest.fixture(scope="module")
def adapter():
    return tiny_adapter()


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """``[10, 32, 48, 3]`` uint8: random pixels, so that any other frame or any resampling shows."""
    return np.random.default_rng(0).integers(0, 256, (10, 32, 48, 3), dtype=np.uint8)


def write_lossless(path: Path, frames: np.ndarray, fps: int = 2) -> Path:
    """``frames [T, H, W, 3]`` as a PNG-coded .mov: every pixel decodes back exactly."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def load(adapter, *visuals, prompt: str = QUESTION):
    return adapter.load_request(Request(list(visuals), prompt), 0)


def test_in_memory_frames_give_the_pixels_of_the_same_frames_in_a_file(adapter, frames, tmp_path):
    path = write_lossless(tmp_path / "clip.mov", frames)
    in_memory = load(adapter, {"type": "video", "frames": frames, "fps": 2.0}, AUDIO)
    from_file = load(adapter, str(path), AUDIO)
    assert in_memory.pixel_values.shape == (4, 3, 98, 98)  # the checkpoint's num_frames, its SigLIP's size
    assert torch.equal(in_memory.pixel_values, from_file.pixel_values)
    assert torch.equal(in_memory.fbank, from_file.fbank)  # the separate audio item is the sample's audio
    assert torch.equal(in_memory.input_ids, from_file.input_ids)


@pytest.mark.parametrize("count", [10, 8, 3])
def test_in_memory_frames_are_sampled_at_the_official_indices(adapter, frames, count):
    sample = load(adapter, {"type": "video", "frames": frames[:count], "fps": 2.0}, AUDIO)
    picked = [frames[index] for index in frame_indices(count, adapter.num_frames)]
    assert torch.equal(sample.pixel_values, adapter._pixels(picked))


def test_an_avsynth_document_loads_and_runs(adapter):
    document = build_documents("val", "avsynth_qa", 1)[0]
    sample = load(adapter, *request_visuals(document), prompt=document["question"])
    inputs = adapter.prepare([sample])
    assert int(inputs.layout.count("video")[0]) == 18 and int(inputs.layout.count("audio")[0]) == 1496
    assert adapter.generate(inputs, 2, [])[0].num_tokens >= 1


def test_an_in_memory_video_has_no_soundtrack(frames):
    video = {"type": "video", "frames": frames, "fps": 2.0}
    with pytest.raises(SampleError, match=r"visual 0: an in-memory video carries no soundtrack: give the sample's"):
        load(tiny_adapter(), video)
    lenient = load(tiny_adapter(video_audio="if_present"), video)
    assert lenient.fbank is not None and torch.all(lenient.fbank == lenient.fbank[0, 0])  # 30 s of silence
    assert load(tiny_adapter(video_audio="off"), video).fbank is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frames": None}, r"video dict lacks \['frames'\] \(got keys \['fps', 'type'\]\); accepted: \{\"type\""),
        ({"fps": None}, r"video dict lacks \['fps'\]"),
        ({"type": "image"}, r"video 'type'='image'; accepted: 'video'"),
        (
            {"frames": np.zeros((4, 32, 32, 3), np.float32)},
            r"video 'frames' is float32 \(4, 32, 32, 3\); accepted: uint8",
        ),
        ({"frames": np.zeros((32, 32, 3), np.uint8)}, r"video 'frames' is uint8 \(32, 32, 3\); accepted: uint8 \[T, H"),
        ({"frames": np.zeros((4, 32, 32, 4), np.uint8)}, r"video 'frames' is uint8 \(4, 32, 32, 4\)"),
        ({"frames": np.zeros((0, 32, 32, 3), np.uint8)}, r"video 'frames' is uint8 \(0, 32, 32, 3\)"),
        ({"fps": 0.0}, r"video 'fps'=0\.0; accepted: a finite number > 0"),
        ({"fps": float("nan")}, r"video 'fps'=nan; accepted"),
        ({"fps": "2"}, r"video 'fps'='2'; accepted"),
        ({"fps": True}, r"video 'fps'=True; accepted"),
    ],
)
def test_a_malformed_video_dict_is_refused_naming_the_field(adapter, frames, change, message):
    video = {"type": "video", "frames": frames, "fps": 2.0, **change}
    video = {key: value for key, value in video.items() if value is not None}
    with pytest.raises(SampleError, match=rf"request 0: visual 0: {message}"):
        load(adapter, video, AUDIO)


def test_the_accepted_visuals_name_the_in_memory_video(adapter):
    with pytest.raises(SampleError, match="accepted: a video, image or audio file path, an in-memory video") as error:
        load(adapter, 3)
    assert VIDEO_DICT in str(error.value)
