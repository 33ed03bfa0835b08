"""The AV-Synth testbed: a small audio-visual LLM with VideoLLaMA2-AV's token layout and a transformers Qwen2 decoder.

    frames [B, 8, 32, 32, 3] ─ VideoEncoder ─ projector ─┐
    waveform [B, 32000] ─ log-mel ─ AudioEncoder ─ projector ─┤
    prompt words ─ embed_tokens ─────────────────────────┴─> [prefix][video 128][audio 144][question] ─ Qwen2 ─ words

Video tokens are frame-major (8 frames × 4×4 patches), audio tokens time-major (36 steps × 4 mel bands), as in
BEATs. The decoder is an unmodified ``Qwen2ForCausalLM``, so the FastAV engine runs on it exactly as on a 7B model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from fastav_eval.avsynth.dataset import load_media
from fastav_eval.avsynth.world import FRAME_SIZE, NUM_FRAMES, NUM_SAMPLES, SAMPLE_RATE
from fastav_eval.pruning.layout import ModalityLayout
from fastav_eval.testbed.tokenizer import WordTokenizer

PREFIX = "clip :"
ANSWER_CUE = "answer :"


@dataclass(frozen=True)
class TestbedConfig:
    __test__ = False  # not a pytest class
    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 6
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    encoder_channels: int = 64
    mel_bins: int = 64
    mel_frames: int = 144

    @property
    def video_tokens(self) -> int:
        return NUM_FRAMES * (FRAME_SIZE // 8) ** 2

    @property
    def audio_tokens(self) -> int:
        return (self.mel_frames // 4) * (self.mel_bins // 16)

    def decoder_config(self) -> Qwen2Config:
        return Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            attn_implementation="sdpa",
        )


def mel_filterbank(n_fft: int, mel_bins: int, low_hz: float = 40.0, high_hz: float = SAMPLE_RATE / 2) -> np.ndarray:
    """Triangular HTK-mel filters ``[mel_bins, n_fft // 2 + 1]``."""
    to_mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    edges_hz = 700.0 * (10 ** (np.linspace(to_mel(low_hz), to_mel(high_hz), mel_bins + 2) / 2595.0) - 1.0)
    bins_hz = np.linspace(0, SAMPLE_RATE / 2, n_fft // 2 + 1)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz - lower) / (centre - lower)
    falling = (upper - bins_hz) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class LogMel(nn.Module):
    """Waveform ``[B, NUM_SAMPLES]`` -> normalised log-mel ``[B, mel_bins, mel_frames]``."""

    def __init__(self, mel_bins: int, mel_frames: int, n_fft: int = 512):
        super().__init__()
        self.n_fft, self.mel_frames = n_fft, mel_frames
        self.hop = -(-NUM_SAMPLES // mel_frames)
        self.register_buffer("filters", torch.from_numpy(mel_filterbank(n_fft, mel_bins)), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Computed in float32 whatever the model's dtype (the STFT needs it); returns float32."""
        spectrum = torch.stft(waveform.float(), self.n_fft, self.hop, window=self.window.float(), return_complex=True)
        mel = self.filters.float() @ spectrum.abs().pow(2)
        return (torch.log10(mel[..., : self.mel_frames] + 1e-6) + 3.0) / 3.0


class VideoEncoder(nn.Module):
    """Frames ``[B, T, H, W, 3]`` uint8 -> tokens ``[B, T·(H/8)·(W/8), D]``, frame-major."""

    def __init__(self, channels: int, hidden_size: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, channels, 3, stride=2, padding=1),
        )  # fmt: skip
        patches = (FRAME_SIZE // 8) ** 2
        self.frame_embedding = nn.Parameter(torch.zeros(NUM_FRAMES, 1, channels))
        self.patch_embedding = nn.Parameter(torch.zeros(1, patches, channels))
        self.projector = nn.Sequential(nn.Linear(channels, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, num_frames = frames.shape[:2]
        pixels = (frames.flatten(0, 1).permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(self.projector[0].weight.dtype)
        features = self.convs(pixels).flatten(2).transpose(1, 2)  # [B·T, patches, C]
        features = features.unflatten(0, (batch, num_frames)) + self.frame_embedding + self.patch_embedding
        return self.projector(features.flatten(1, 2))


class AudioEncoder(nn.Module):
    """Waveform ``[B, NUM_SAMPLES]`` -> tokens ``[B, (mel_frames/4)·(mel_bins/16), D]``, time-major."""

    def __init__(self, channels: int, hidden_size: int, mel_bins: int, mel_frames: int):
        super().__init__()
        self.log_mel = LogMel(mel_bins, mel_frames)
        self.convs = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, channels, (4, 1), stride=(4, 1)),
        )  # fmt: skip
        self.time_embedding = nn.Parameter(torch.zeros(mel_frames // 4, 1, channels))
        self.band_embedding = nn.Parameter(torch.zeros(1, mel_bins // 16, channels))
        self.projector = nn.Sequential(nn.Linear(channels, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        log_mel = self.log_mel(waveform).to(self.projector[0].weight.dtype)
        features = self.convs(log_mel.unsqueeze(1))  # [B, C, bands, steps]
        features = features.permute(0, 3, 2, 1) + self.time_embedding + self.band_embedding  # [B, steps, bands, C]
        return self.projector(features.flatten(1, 2))


def media_tensors(documents: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """AV-Synth documents -> frames ``[B, 8, 32, 32, 3]`` uint8 and waveforms ``[B, 32000]`` float32."""
    frames, waveforms = zip(*(load_media(doc) for doc in documents), strict=True)
    return torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(waveforms))


@dataclass
class PreparedBatch:
    """Decoder inputs for a left-padded batch.

    ``inputs_embeds [B, L, D]``, ``attention_mask [B, L]`` (0 on left padding), ``layout`` (where video and audio
    sit), ``labels [B, L]`` (-100 except on answer tokens; only when answers were given), and the encoders' outputs
    ``video_tokens [B, 128, D]`` / ``audio_tokens [B, 144, D]`` (for every sample, also those that left one out).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    layout: ModalityLayout
    labels: torch.Tensor | None
    video_tokens: torch.Tensor
    audio_tokens: torch.Tensor


class TestbedModel(nn.Module):
    __test__ = False  # not a pytest class

    def __init__(self, config: TestbedConfig, tokenizer: WordTokenizer):
        super().__init__()
        if config.vocab_size != len(tokenizer):
            raise ValueError(f"config.vocab_size {config.vocab_size} != tokenizer size {len(tokenizer)}")
        self.config, self.tokenizer = config, tokenizer
        self.video_encoder = VideoEncoder(config.encoder_channels, config.hidden_size)
        self.audio_encoder = AudioEncoder(
            config.encoder_channels, config.hidden_size, config.mel_bins, config.mel_frames
        )
        self.decoder = Qwen2ForCausalLM(config.decoder_config())

    def prepare(
        self,
        frames: torch.Tensor,
        waveform: torch.Tensor,
        questions: list[str],
        answers: list[str] | None = None,
        use_video: list[bool] | None = None,
        use_audio: list[bool] | None = None,
    ) -> PreparedBatch:
        """Encode media and words into one left-padded sequence per sample.

        frames ``[B, 8, 32, 32, 3]`` uint8, waveform ``[B, 32000]`` float. ``use_video`` / ``use_audio`` (default all
        True) leave a sample's video or audio tokens out of its sequence entirely: the modality ablation.
        """
        batch = len(questions)
        use_video = use_video or [True] * batch
        use_audio = use_audio or [True] * batch
        video = self.video_encoder(frames)
        audio = self.audio_encoder(waveform)
        embed = self.decoder.get_input_embeddings()
        device = video.device
        tok = self.tokenizer
        prefix_ids = [tok.bos_id, *tok.encode(PREFIX)]
        sequences, label_rows, segments = [], [], []
        for i in range(batch):
            question_ids = tok.encode(f"{questions[i]} {ANSWER_CUE}")
            answer_ids = [*tok.encode(answers[i]), tok.eos_id] if answers is not None else []
            parts = [embed(torch.tensor(prefix_ids, device=device))]
            segment = [("text", len(prefix_ids))]
            if use_video[i]:  # one chunk per frame, one per audio time step (frame- and time-major tokens)
                parts.append(video[i])
                per_frame = video.shape[1] // NUM_FRAMES
                segment.extend(("video", per_frame, frame) for frame in range(NUM_FRAMES))
            if use_audio[i]:
                parts.append(audio[i])
                per_step = self.config.mel_bins // 16
                segment.extend(("audio", per_step, step) for step in range(audio.shape[1] // per_step))
            parts.append(embed(torch.tensor(question_ids + answer_ids[:-1], device=device)))
            segment.append(("text", len(question_ids) + max(len(answer_ids) - 1, 0)))
            sequences.append(torch.cat(parts))
            prompt_length = sequences[-1].shape[0] - max(len(answer_ids) - 1, 0)
            labels = torch.full((sequences[-1].shape[0],), -100, dtype=torch.long)
            if answers is not None:
                labels[prompt_length - 1 :] = torch.tensor(answer_ids)
            label_rows.append(labels)
            segments.append(segment)
        length = max(s.shape[0] for s in sequences)
        inputs_embeds = video.new_zeros(batch, length, video.shape[-1])
        attention_mask = torch.zeros(batch, length, dtype=torch.long, device=device)
        labels = torch.full((batch, length), -100, dtype=torch.long, device=device)
        for i, sequence in enumerate(sequences):
            inputs_embeds[i, length - sequence.shape[0] :] = sequence
            attention_mask[i, length - sequence.shape[0] :] = 1
            labels[i, length - sequence.shape[0] :] = label_rows[i]
        layout = ModalityLayout.from_segments(segments)
        return PreparedBatch(
            inputs_embeds, attention_mask, layout, labels if answers is not None else None, video, audio
        )

    def loss(self, prepared: PreparedBatch) -> torch.Tensor:
        """Cross-entropy over each sample's answer tokens, averaged per sample, then over the batch.

        Per-sample averaging keeps a 20-word caption from outweighing twenty one-word answers. Labels are already
        aligned to the position that predicts them.
        """
        if prepared.labels is None:
            raise ValueError("prepare() was called without answers: there is nothing to score")
        logits = self.decoder(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask).logits
        token_loss = nn.functional.cross_entropy(
            logits.transpose(1, 2), prepared.labels, ignore_index=-100, reduction="none"
        )  # [B, L]
        counts = (prepared.labels != -100).sum(dim=1).clamp(min=1)
        return (token_loss.sum(dim=1) / counts).mean()

    @torch.no_grad()
    def generate(self, prepared: PreparedBatch, max_new_tokens: int = 32) -> list[str]:
        """Greedy answers through ``Qwen2ForCausalLM.generate`` (so an installed pruning engine is exercised)."""
        output = self.decoder.generate(
            inputs_embeds=prepared.inputs_embeds,
            attention_mask=prepared.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.tokenizer.eos_id,
            pad_token_id=self.tokenizer.pad_id,
        )
        return [self.tokenizer.decode(row.tolist()) for row in output]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        state.pop("decoder.lm_head.weight", None)  # tied to the input embeddings
        save_file(state, directory / "model.safetensors", metadata={"format": "fastav-testbed/1"})
        (directory / "config.json").write_text(json.dumps(asdict(self.config), indent=1))
        self.tokenizer.save(directory / "tokenizer.json")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TestbedModel:
        directory = Path(directory)
        for name in ("model.safetensors", "config.json", "tokenizer.json"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} holds no testbed model: {name} is missing")
        model = cls(
            TestbedConfig(**json.loads((directory / "config.json").read_text())),
            WordTokenizer.load(directory / "tokenizer.json"),
        )
        missing, unexpected = model.load_state_dict(load_file(directory / "model.safetensors"), strict=False)
        if unexpected or set(missing) - {"decoder.lm_head.weight"}:
            raise ValueError(
                f"{directory}/model.safetensors does not fit the config: missing {missing}, unexpected {unexpected}"
            )
        model.decoder.tie_weights()
        return model.eval()
