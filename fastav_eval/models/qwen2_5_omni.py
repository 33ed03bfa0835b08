"""Adapter for Qwen2.5-Omni (7B, 3B): transformers' own thinker, loaded without the talker or token2wav.

``lmms-eval --model fastav_qwen2_5_omni`` (7B by default, 3B alike), soundtracks fed.

A request's visuals (a video path, an audio dict / file, a PIL image, in the task's order) become one user turn
of the model's chat template, media first. A video's soundtrack is decoded with PyAV and fed interleaved with
its frames in 2-s chunks (``load_audio_from_video`` in the processor, ``use_audio_in_video`` in ``generate``:
without the latter TMRoPE positions change and answers change without an error). The processor comes from
``pretrained``. The layout is read from the processor's placeholder token ids, with each interleaved token
labelled by the time chunk the model's own ``get_chunked_index`` puts it in.

A video can also be decoded frames in memory (AV-Synth's ``doc_to_visual``: ``{"type": "video", "frames", "fps"}``),
sampled at ``fps`` as a file is. Such a video has no soundtrack: AV-Synth gives its sound as a separate audio item,
which is fed as one (its own audio block after the video's, not interleaved), in the environments and through
lmms-eval alike; ``video_audio`` governs files' soundtracks only.

Sequence of one sample with a 4-s clip (112×112 px, 2 fps)::

    <|im_start|>system ... <|im_start|>user <|vision_bos|><|audio_bos|> V32 A50 V32 A50 <|audio_eos|><|vision_eos|>
    question <|im_end|> <|im_start|>assistant
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import StoppingCriteriaList

from fastav_eval.models.base import (
    AdapterArg,
    Answer,
    ChatEnds,
    ModelAdapter,
    ModelInputs,
    Request,
    SampleError,
    StopOnStrings,
    generate_positions,
    teacher_forced_logprob,
)
from fastav_eval.models.media import (
    AUDIO_EXTENSIONS,
    EMPTY_TRACK,
    IMAGE_EXTENSIONS,
    VIDEO_DICT,
    audio_from_dict,
    checked_frames,
    decode_audio,
    has_audio_track,
    in_memory_duration,
    is_video_dict,
    sample_frames,
    sample_frames_in_memory,
    sampling_rate_for,
    video_duration,
)
from fastav_eval.pruning.layout import ModalityLayout, Segment

SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech."
)  # the model card's system prompt (the one the model was tuned with)
VIDEO_AUDIO = ("required", "if_present", "off")


def _audio_tokens(mel_frames: torch.Tensor) -> torch.Tensor:
    """Audio tokens the thinker's audio tower makes from ``mel_frames`` (conv stride 2, then pooling by 2)."""
    return ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1


MEDIA_PLACEHOLDER = re.compile(r"<media_(\d+)>")


def user_turn(media: list[dict], prompt: str) -> list[dict]:
    """The user turn: media first, then the prompt; or, when the prompt marks each medium's place with
    ``<media_i>`` (AV-Odyssey's convention, i = its index in ``doc_to_visual``), each medium at its mark."""
    marks = [int(i) for i in MEDIA_PLACEHOLDER.findall(prompt)]
    if not media or sorted(marks) != list(range(len(media))):
        return [*media, {"type": "text", "text": prompt}]
    turn: list[dict] = []
    for k, piece in enumerate(MEDIA_PLACEHOLDER.split(prompt)):
        if k % 2:
            turn.append(media[int(piece)])
        elif piece.strip():
            turn.append({"type": "text", "text": piece.strip()})
    return turn


@dataclass
class OmniSample:
    """One request's decoded media, in the task's order, and its text."""

    prompt: str
    content: list[dict] = field(default_factory=list)  # chat-template items: {"type": "video" | "audio" | "image"}
    video_sources: list[str | dict] = field(default_factory=list)  # a file path, or an in-memory video (VIDEO_DICT)
    videos: list[np.ndarray] = field(default_factory=list)  # [T, H, W, 3] uint8 each, all at video_rate
    video_rate: float = 0.0
    audios: list[np.ndarray] = field(default_factory=list)  # processor slot order, 16 kHz mono
    audio_slots: list[int | None] = field(default_factory=list)  # index of the video an audio comes from, or None
    images: list[Any] = field(default_factory=list)
    processed: dict[str, torch.Tensor] = field(default_factory=dict)  # the processor's output, batch of one
    segments: list[Segment] = field(default_factory=list)

    @property
    def audio_in_video(self) -> bool:
        return any(slot is not None for slot in self.audio_slots)

    def add_audio(self, waveform: np.ndarray) -> None:
        """A standalone audio item (a file or an array), placed in the user turn."""
        self.audios.append(waveform)
        self.audio_slots.append(None)
        self.content.append({"type": "audio"})

    def add_image(self, image: Image.Image) -> None:
        self.images.append(image.convert("RGB"))
        self.content.append({"type": "image"})


@dataclass(frozen=True)
class OmniCheckpoint:
    """What an Omni family's checkpoints are: the full model's and the thinker's ``model_type``, the transformers
    classes of its thinker and processor, and release names for error messages."""

    model_types: tuple[str, str]
    thinker_class: str
    processor_class: str
    examples: str


class Qwen25OmniAdapter(ModelAdapter):
    name = "qwen2_5_omni"
    checkpoint: ClassVar[OmniCheckpoint] = OmniCheckpoint(
        ("qwen2_5_omni", "qwen2_5_omni_thinker"),
        "Qwen2_5OmniThinkerForConditionalGeneration",
        "Qwen2_5OmniProcessor",
        "Qwen/Qwen2.5-Omni-7B, Qwen/Qwen2.5-Omni-3B",
    )
    default_dtype = "bfloat16"
    default_pretrained = "Qwen/Qwen2.5-Omni-7B"
    attn_implementations = ("sdpa", "eager", "flash_attention_2")
    model_args: ClassVar[dict[str, AdapterArg]] = {
        **ModelAdapter.model_args,
        "fps": AdapterArg(2.0, float, "video frames sampled per second (fewer when max_frames caps them)"),
        "max_frames": AdapterArg(64, int, "the most frames sampled from one video (an even number)"),
        "max_pixels": AdapterArg(360 * 420, int, "the most pixels per frame after resizing (28-px patches)"),
        "min_pixels": AdapterArg(128 * 28 * 28, int, "the fewest pixels per frame after resizing"),
        "video_audio": AdapterArg(
            "required",
            str,
            "a video's soundtrack: fed, and a clip without one fails its sample (required); fed when present "
            "(if_present); never fed (off)",
            choices=VIDEO_AUDIO,
        ),
        "system_prompt": AdapterArg(SYSTEM_PROMPT, str, "the system turn of the chat template"),
    }

    def __init__(
        self,
        pretrained: str | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        attn_implementation: str = "sdpa",
        **model_args: Any,
    ) -> None:
        super().__init__(pretrained, device, dtype, attn_implementation, **model_args)
        options = self.options
        if options["max_frames"] < 2 or options["max_frames"] % 2:
            raise ValueError(f"max_frames={options['max_frames']!r}; accepted: an even int >= 2")
        if options["fps"] <= 0:
            raise ValueError(f"fps={options['fps']!r}; accepted: a number > 0")
        if not 0 < options["min_pixels"] <= options["max_pixels"]:
            raise ValueError(
                f"min_pixels={options['min_pixels']}, max_pixels={options['max_pixels']}; accepted: 0 < min <= max"
            )
        self.model = self.load_thinker(
            str(self.pretrained), dtype, attn_implementation, self.device, use_kernels=self.use_kernels
        ).eval()
        self.processor = self.load_processor(str(self.pretrained))
        self._check_token_ids()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_thinker(
        cls,
        pretrained: str,
        dtype: torch.dtype,
        attn_implementation: str,
        device: torch.device,
        use_kernels: bool = False,
    ) -> nn.Module:
        """The thinker alone (:attr:`checkpoint`'s class), from a full checkpoint (its ``thinker.*`` weights) or a
        thinker one, loaded straight onto ``device`` (the talker's weights are never read into memory).
        ``use_kernels`` is always passed: transformers 5.25 would otherwise turn hub kernels on."""
        import transformers

        (full, thinker), examples = cls.checkpoint.model_types, cls.checkpoint.examples
        config = transformers.AutoConfig.from_pretrained(pretrained)
        if config.model_type == full:
            config = config.thinker_config
        elif config.model_type != thinker:
            raise ValueError(
                f"pretrained={pretrained!r} is a {config.model_type!r} checkpoint; accepted: {full} (e.g. {examples}) "
                f"or {thinker}"
            )
        return getattr(transformers, cls.checkpoint.thinker_class).from_pretrained(
            pretrained, config=config, dtype=dtype, attn_implementation=attn_implementation, device_map=str(device),
            use_kernels=use_kernels,
        )  # fmt: skip

    @classmethod
    def load_processor(cls, pretrained: str) -> Any:
        import transformers

        return getattr(transformers, cls.checkpoint.processor_class).from_pretrained(pretrained)

    def _check_token_ids(self) -> None:
        config, processor = self.model.config, self.processor
        pairs = {
            "video": (processor.video_token_id, config.video_token_id),
            "audio": (processor.audio_token_id, config.audio_token_id),
            "image": (processor.image_token_id, config.image_token_id),
        }
        wrong = {name: ids for name, ids in pairs.items() if ids[0] != ids[1]}
        if wrong:
            raise ValueError(
                f"the processor's placeholder ids (processor, model) {wrong} differ from the thinker's config: "
                "the processor and the weights come from different checkpoints"
            )
        tokenizer = processor.tokenizer
        self.vision_bos = tokenizer.convert_tokens_to_ids(processor.vision_bos_token)
        self.audio_bos = tokenizer.convert_tokens_to_ids(processor.audio_bos_token)
        self.ends = ChatEnds.of(tokenizer)

    @property
    def decoder(self) -> nn.Module:
        return self.model

    # ------------------------------------------------------------------ requests
    def load_request(self, request: Request, index: int) -> OmniSample:
        sample = OmniSample(prompt=request.prompt)
        for position, visual in enumerate(request.visuals):
            try:
                self._add_visual(sample, visual)
            except (ValueError, OSError, RuntimeError) as error:  # OSError: PIL's unreadable or truncated images
                raise SampleError(index, f"visual {position}: {error}") from None
        if sample.audio_in_video and len(sample.video_sources) > sum(s is not None for s in sample.audio_slots):
            raise SampleError(
                index,
                "mixes videos with and without a soundtrack; Qwen2.5-Omni's positions (use_audio_in_video) cover "
                "one or the other within a sample (video_audio=off drops every soundtrack)",
            )
        return self.finish(sample, index)

    def finish(self, sample: OmniSample, index: int) -> OmniSample:
        """Sample the videos at one rate, run the processor on the sample, and read its segments.

        The processor groups an interleaved video's tokens into 2-s chunks from ``2 / fps`` in float64, the thinker
        from the float32 ``video_second_per_grid`` it is handed; for a grid time that lands on a chunk boundary
        the two can differ (about 0.2% of clip lengths over 32 s), and the model would then position tokens other
        than where the processor put them. Such a rate is nudged down until both agree.
        """
        rate, durations = self.options["fps"], []
        if sample.video_sources:  # the processor times every video of a prompt at one rate
            try:
                durations = [
                    in_memory_duration(source) if isinstance(source, dict) else video_duration(source)
                    for source in sample.video_sources
                ]
            except ValueError as error:
                raise SampleError(index, str(error)) from None
            rate = sampling_rate_for(durations, rate, self.options["max_frames"])
        for _attempt in range(8):
            self._sample_and_process(sample, rate, durations, index)
            ids = sample.processed["input_ids"][0].tolist()
            try:
                sample.segments = self._segments(ids, sample.processed)
            except (ValueError, IndexError) as error:  # the thinker cannot place the processor's tokens
                raise SampleError(
                    index,
                    f"the thinker cannot lay out the processor's prompt ({type(error).__name__}: {error}); media put "
                    "out of the visuals' order by <media_i> marks next to a video's soundtrack are not supported",
                ) from None
            if self._segments_match(ids, sample.segments):
                break
            rate *= 0.999
        else:
            raise SampleError(index, "the processor and the thinker chunk its frames differently at every rate tried")
        self._check_context(sample, index)
        return sample

    def _sample_and_process(self, sample: OmniSample, rate: float, durations: list[float], index: int) -> None:
        try:
            if sample.video_sources:
                sample.video_rate, limit = rate, self.options["max_frames"]
                sample.videos = [
                    sample_frames_in_memory(source, rate, limit).frames
                    if isinstance(source, dict)
                    else sample_frames(source, rate, limit, duration=duration).frames
                    for source, duration in zip(sample.video_sources, durations, strict=True)
                ]
        except ValueError as error:
            raise SampleError(index, str(error)) from None
        try:
            sample.processed = self._process(sample)
        except (ValueError, RuntimeError, TypeError) as error:
            raise SampleError(index, f"the processor refused it: {type(error).__name__}: {error}") from None

    def _segments_match(self, ids: list[int], segments: list[Segment]) -> bool:
        """Whether the model's chunking (``segments``) puts video and audio exactly where the processor's ids do."""
        config = self.model.config
        visual = [config.video_token_id, config.image_token_id]
        expected = ModalityLayout.from_token_ids(torch.tensor([ids]), {"video": visual, "audio": config.audio_token_id})
        return torch.equal(ModalityLayout.from_segments([segments]).modality, expected.modality)

    def _check_context(self, sample: OmniSample, index: int) -> None:
        """The prompt's highest TMRoPE position must fit the thinker's context (a silent hour of video holds few
        tokens but positions up to 25 per second)."""
        processed = sample.processed
        positions = self.rope_positions(processed, sample.audio_in_video)
        context = self.model.config.get_text_config().max_position_embeddings
        highest = int(positions.max()) + 1
        if highest > context:
            raise SampleError(
                index,
                f"its prompt reaches position {highest} ({processed['input_ids'].shape[1]} tokens), past the thinker's "
                f"context of {context}; lower fps, max_frames or max_pixels, or use a shorter clip (TMRoPE gives "
                "25 positions per second of video or audio)",
            )

    def rope_positions(self, processed: dict[str, torch.Tensor], use_audio_in_video: bool) -> torch.Tensor:
        """``[3, B, L]`` TMRoPE positions of a processor output or a :meth:`prepare` batch (the thinker's own
        ``get_rope_index``, fed what ``generate`` feeds it)."""
        positions, _ = self.model.get_rope_index(
            processed["input_ids"],
            image_grid_thw=processed.get("image_grid_thw"),
            video_grid_thw=processed.get("video_grid_thw"),
            attention_mask=processed["attention_mask"],
            use_audio_in_video=use_audio_in_video,
            audio_seqlens=processed["feature_attention_mask"].sum(-1)
            if "feature_attention_mask" in processed
            else None,
            second_per_grids=processed.get("video_second_per_grid"),
        )
        return positions

    def _add_visual(self, sample: OmniSample, visual: Any) -> None:
        rate = self.processor.feature_extractor.sampling_rate
        if isinstance(visual, str | Path):
            path = str(visual)
            if not Path(path).is_file():
                raise ValueError(f"{path} does not exist")
            if path.lower().endswith(AUDIO_EXTENSIONS):
                sample.add_audio(decode_audio(path, rate))
                return
            if path.lower().endswith(IMAGE_EXTENSIONS):
                with Image.open(path) as image:
                    sample.add_image(image)
                return
            video_index = len(sample.video_sources)
            sample.video_sources.append(path)
            sample.content.append({"type": "video"})
            mode = self.options["video_audio"]
            if mode == "off":
                return
            soundtrack = None
            if has_audio_track(path):
                try:
                    soundtrack = decode_audio(path, rate, from_video_start=True)
                except ValueError as error:  # a track that holds no samples is no soundtrack; a corrupt one fails
                    if mode == "required" or EMPTY_TRACK not in str(error):
                        raise
            if soundtrack is not None:
                sample.audios.append(soundtrack)
                sample.audio_slots.append(video_index)
            elif mode == "required":
                raise ValueError(
                    f"{path} has no audio track, and this model is asked to hear each clip (video_audio=required); "
                    "video_audio=if_present answers such clips from their frames alone"
                )
            return
        if is_video_dict(visual):  # no soundtrack: its sound, if any, is the request's own audio item
            checked_frames(visual)
            sample.video_sources.append(visual)
            sample.content.append({"type": "video"})
            return
        if isinstance(visual, dict) and "array" in visual:
            sample.add_audio(audio_from_dict(visual, rate))
            return
        if hasattr(visual, "get_all_samples"):  # a datasets 4 AudioDecoder (torchcodec)
            decoded = visual.get_all_samples()
            waveform = decoded.data.numpy()
            sample.add_audio(audio_from_dict({"array": waveform, "sampling_rate": int(decoded.sample_rate)}, rate))
            return
        if isinstance(visual, Image.Image):
            sample.add_image(visual)
            return
        raise ValueError(
            f"a {type(visual).__name__} is not a visual this model takes; accepted: a video or audio file path, an "
            f'in-memory video {VIDEO_DICT}, {{"array", "sampling_rate"}} audio, a PIL image'
        )

    def batch_key(self, loaded: OmniSample) -> Any:
        return loaded.audio_in_video  # generate's use_audio_in_video holds for a whole batch

    # ------------------------------------------------------------------ batch
    def _process(self, sample: OmniSample) -> dict[str, torch.Tensor]:
        messages = [
            {"role": "system", "content": [{"type": "text", "text": self.options["system_prompt"]}]},
            {"role": "user", "content": user_turn(sample.content, sample.prompt)},
        ]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        call: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if sample.images:
            call["images"] = sample.images
        if sample.videos:
            call["videos"] = sample.videos
            call["videos_kwargs"] = {
                "do_sample_frames": False,  # sampled already; fps only times the grids
                "fps": sample.video_rate,
                "size": {"shortest_edge": self.options["min_pixels"], "longest_edge": self.options["max_pixels"]},
            }
        if sample.audios:
            call["audio"] = sample.audios
            # The whole soundtrack, not Whisper's first 30 s; every audio of the prompt padded to the longest.
            longest = max(len(audio) for audio in sample.audios)
            extractor = self.processor.feature_extractor
            call["audio_kwargs"] = {"truncation": False, "max_length": max(extractor.n_samples, longest)}
        if sample.audio_in_video:
            call["load_audio_from_video"] = True
            call["audio_from_video_indices"] = sample.audio_slots
        return dict(self.processor(**call, **self.processor_options()))

    def processor_options(self) -> dict[str, Any]:
        """Keyword arguments every processor call gets besides the media (the thinker's own timing, where the
        processor's defaults could differ from it)."""
        return {}

    def audio_token_counts(self, processed: dict[str, torch.Tensor]) -> list[int]:
        """Audio tokens the thinker's audio tower makes of each audio item of a processor output."""
        if "feature_attention_mask" not in processed:
            return []
        return _audio_tokens(processed["feature_attention_mask"].sum(-1)).tolist()

    def _interleaved_block(
        self, processed: dict[str, torch.Tensor], video_index: int, audio_tokens: int, at: int, chunk: dict[str, int]
    ) -> list[Segment]:
        """One audio-in-video block's runs in the thinker's order, after its two bos tokens (at ``at`` in the
        prompt): Qwen2.5-Omni groups video and audio by 2-s chunk (``get_chunked_index`` on TMRoPE times), video
        group j then audio group j, each labelled with its chunk (``chunk``: the next free chunk per modality,
        advanced here)."""
        config = self.model.config
        tokens_per_chunk = int(config.position_id_per_seconds * config.seconds_per_chunk)
        t, h, w = processed["video_grid_thw"][video_index].tolist()
        merge = config.vision_config.spatial_merge_size
        seconds = float(processed["video_second_per_grid"][video_index])
        per_grid = h * w // merge**2
        times = torch.arange(t).repeat_interleave(per_grid) * seconds
        video_times = (times * config.position_id_per_seconds).long()
        video_chunks = self.model.get_chunked_index(video_times, tokens_per_chunk, 0)
        audio_chunks = self.model.get_chunked_index(torch.arange(audio_tokens), tokens_per_chunk, 0)
        segments: list[Segment] = []
        for j in range(max(len(video_chunks), len(audio_chunks))):
            if j < len(video_chunks):  # frames are its grids: a run may end inside one where grids are sparse
                segments.append(("video", video_chunks[j][1] - video_chunks[j][0], chunk["video"] + j, per_grid))
            if j < len(audio_chunks):
                segments.append(("audio", audio_chunks[j][1] - audio_chunks[j][0], chunk["audio"] + j))
        chunk["video"] += len(video_chunks)
        chunk["audio"] += len(audio_chunks)
        return segments

    def _segments(self, ids: list[int], processed: dict[str, torch.Tensor]) -> list[Segment]:
        """The sample's runs, ``(modality, count, chunk[, frame_tokens])``: an interleaved video's runs carry the
        model's chunks, and a video's runs its grids as frames."""
        config = self.model.config
        video_id, audio_id, image_id = config.video_token_id, config.audio_token_id, config.image_token_id
        audio_lengths = self.audio_token_counts(processed)
        grids = processed.get("video_grid_thw", torch.zeros(0, 3, dtype=torch.long)).tolist()
        merge = config.vision_config.spatial_merge_size
        segments: list[Segment] = []
        chunk = {"video": 0, "audio": 0}
        video_index = audio_index = 0
        i = 0
        while i < len(ids):
            token = ids[i]
            if token == self.vision_bos and i + 1 < len(ids) and ids[i + 1] == self.audio_bos:
                segments.append(("text", 2))
                block = self._interleaved_block(processed, video_index, audio_lengths[audio_index], i + 2, chunk)
                segments += block
                t, h, w = grids[video_index]
                i += 2 + t * h * w // merge**2 + audio_lengths[audio_index]
                video_index += 1
                audio_index += 1
                continue
            if token in (video_id, audio_id, image_id):
                end = i
                while end < len(ids) and ids[end] == token:
                    end += 1
                name = "audio" if token == audio_id else "video"  # an image's tokens are visual tokens
                if token == video_id:  # frames: the video's temporal grids
                    _, h, w = grids[video_index]
                    segments.append((name, end - i, chunk[name], h * w // merge**2))
                else:  # an image or an audio is one frame
                    segments.append((name, end - i, chunk[name]))
                chunk[name] += 1
                video_index += token == video_id
                audio_index += token == audio_id
                i = end
                continue
            segments.append(("text", 1))
            i += 1
        return segments

    def prepare(self, loaded: list[OmniSample]) -> ModelInputs:
        if len({sample.audio_in_video for sample in loaded}) > 1:
            raise ValueError("one batch mixes samples with and without audio in video; group them by batch_key()")
        processed = [sample.processed for sample in loaded]
        rows = [p["input_ids"][0].tolist() for p in processed]
        segments = [sample.segments for sample in loaded]
        length = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), length), self.ends.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, length - len(row) :] = torch.tensor(row)
            attention_mask[b, length - len(row) :] = 1
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "video_second_per_grid"):
            parts = [p[key] for p in processed if key in p]
            if parts:
                kwargs[key] = torch.cat(parts)
        features = [p for p in processed if "input_features" in p]
        if features:
            frames = max(p["input_features"].shape[-1] for p in features)
            pad = lambda x: nn.functional.pad(x, (0, frames - x.shape[-1]))  # noqa: E731
            kwargs["input_features"] = torch.cat([pad(p["input_features"]) for p in features])
            kwargs["feature_attention_mask"] = torch.cat([pad(p["feature_attention_mask"]) for p in features])
        layout = ModalityLayout.from_segments(segments)  # each sample's checked against its ids in finish()
        for key, value in kwargs.items():  # only pixels and mel features in the model's dtype: a bf16
            # video_second_per_grid would shift TMRoPE's chunks away from the processor's (and the layout's)
            low_precision = key in ("pixel_values", "pixel_values_videos", "input_features")
            kwargs[key] = value.to(self.device, dtype=self.model.dtype if low_precision else None)
        kwargs["use_audio_in_video"] = loaded[0].audio_in_video
        return ModelInputs(generate_kwargs=kwargs, layout=layout.to(self.device))

    # ------------------------------------------------------------------ answers
    @torch.no_grad()
    def generate(self, inputs: ModelInputs, max_new_tokens: int, until: list[str]) -> list[Answer]:
        kwargs = inputs.generate_kwargs
        tokenizer = self.processor.tokenizer
        prompt_length = kwargs["input_ids"].shape[1]
        output = self.model.generate(
            **kwargs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.ends.stop_ids,
            pad_token_id=self.ends.pad_id,
            stopping_criteria=StoppingCriteriaList([StopOnStrings(tokenizer, until, prompt_length)]),
        )
        return self.ends.answers(tokenizer, output[:, prompt_length:].tolist(), until)

    def reference_logprob(self, inputs: ModelInputs, references: list[str]) -> torch.Tensor:
        """``[B]``, teacher-forced over the prompt's cache as :meth:`generate` runs the thinker: the prefill takes the
        batch's ``generate_kwargs`` (media, ``use_audio_in_video``) and the ``[4, B, L]`` positions ``generate``
        derives (text positions over TMRoPE's three axes); each answer token then sits one past the previous on
        every axis, as ``generate`` places decode steps (the prompt's rope delta carried on). Each reference ends
        with ``<|im_end|>`` (:attr:`ChatEnds.end_id`): the chat template closes every assistant turn with it, so
        it is the end token the model's answers carry, and the first that stops ``generate``."""
        kwargs = inputs.generate_kwargs
        tokenizer = self.processor.tokenizer
        answers = [self.ends.reference_ids(tokenizer, reference) for reference in references]
        rope = self.rope_positions(kwargs, kwargs["use_audio_in_video"])  # Qwen3-Omni's are fractional: keep them
        text = generate_positions(kwargs["attention_mask"])[None].to(device=rope.device, dtype=rope.dtype)  # [1, B, L]
        positions = torch.cat([text, rope])
        return teacher_forced_logprob(self.model, kwargs, positions, answers, self.ends.pad_id)
