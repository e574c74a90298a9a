"""CapS (CogView): how likely a captioning model finds the prompt given the generated image,
as the geometric mean of the caption's per-token probabilities, exp(-mean token NLL)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image


class CaptionScorer:
    """A Hugging Face image-to-text model (`VisionEncoderDecoderModel` with its image processor
    and tokenizer, loaded from a local folder) scoring captions of images."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"captioning model folder {path} has no config.json: give a folder written by "
                "save_pretrained (model, image processor and tokenizer), e.g. a download of "
                "nlpconnect/vit-gpt2-image-captioning, as metrics.caps_model=<folder>")
        self.device = torch.device(device)
        self.model = VisionEncoderDecoderModel.from_pretrained(path).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.name = path.name

    @torch.no_grad()
    def token_nll(self, images: Sequence[Image.Image], captions: Sequence[str]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per caption: the summed negative log-likelihood of its tokens given its image, and
        the number of tokens scored."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images for {len(captions)} captions")
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values
        # Tokenised one by one and padded here: GPT-2 captioners' tokenizers have no pad token.
        ids = [self.tokenizer(c).input_ids for c in captions]
        if not all(ids):
            raise ValueError("CapS cannot score an empty caption")
        start = self.model.config.decoder_start_token_id
        if start is None:
            raise ValueError(f"captioner {self.name} sets no decoder_start_token_id in its "
                             "config.json")
        width = max(map(len, ids))
        labels = torch.full((len(ids), width), -100, dtype=torch.long)
        inputs = torch.full((len(ids), width), start, dtype=torch.long)
        for row, seq in enumerate(ids):  # the decoder reads <start> + caption[:-1]
            labels[row, :len(seq)] = torch.tensor(seq)
            inputs[row, 1:len(seq)] = torch.tensor(seq[:-1])
        labels = labels.to(self.device)
        logits = self.model(pixel_values=pixels.to(self.device),
                            decoder_input_ids=inputs.to(self.device)).logits
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                              reduction="none")
        mask = labels != -100
        return (nll * mask).sum(1).cpu(), mask.sum(1).cpu()


def caps_from_nll(nll_sum: torch.Tensor, n_tokens: torch.Tensor) -> float:
    """Mean over captions of exp(-mean token NLL) (each caption's geometric-mean token
    probability)."""
    return float(torch.exp(-nll_sum.double() / n_tokens.double()).mean())
