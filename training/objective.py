"""The training objective as one module (so DDP and FSDP see a single forward): image table, splice,
decoder (with EVEv2's per-position modality mask), next-token cross-entropy on the supervised tokens, plus EVE's patch-aligning loss.

Both losses are returned as sums; the trainer divides by the global batch's token and image counts, so
a step's loss and gradient do not depend on how the batch was split over ranks and micro-batches.

Chat templates start every sample with the same system prompt. With `share_prefix`, the text that all
rows of a micro-batch share (and that carries no loss) runs through the decoder once, and the rows
continue from its KV cache: the same function, computed without repeating the prefix B times.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.engines import modality_inputs
from runtime.preprocess import ImageInput

from .dataset import Batch
from .masking import IGNORE_INDEX

# A shared prefix shorter than this is not worth a second decoder call.
MIN_SHARED_PREFIX = 8


def shared_prefix_length(input_ids: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> int:
    """Length k of the text prefix every row shares, such that no label at positions 1..k is supervised
    (so no prediction made inside the prefix, nor the one made at its last token, carries loss)."""
    same = (input_ids == input_ids[:1]).all(dim=0) & (input_ids[0] < vocab_size)
    unsupervised = torch.cat([(labels[:, 1:] == IGNORE_INDEX).all(dim=0), same.new_zeros(1)])
    ok = (same & unsupervised).long()
    return int(ok.cumprod(dim=0).sum())


def image_table(model: nn.Module, images: list[ImageInput]) -> torch.Tensor | None:
    """The batch's image rows in order. Inputs of one shape (tiles, padded squares) go through the vision
    tower in one call; EVE's canvases (cropped to their valid box, one image per call) go one by one."""
    if not images or any(image.valid_box is not None for image in images) or len({i.trimmed().shape[1:] for i in images}) > 1:
        return model.image_table(images)
    param = next(model.parameters())
    pixels = torch.from_numpy(np.concatenate([image.trimmed() for image in images])).to(param.device, param.dtype)
    table = model.encode_images(pixels).reshape(-1, model.text_hidden_size())
    expected = sum(image.num_tokens for image in images)
    if table.shape[0] != expected:
        raise RuntimeError(f"the vision tower gave {table.shape[0]} rows, preprocessing promised {expected}")
    return table


class TrainingObjective(nn.Module):
    def __init__(self, model: nn.Module, patch_align: bool, share_prefix: bool = True):
        super().__init__()
        self.model = model
        self.patch_align = patch_align
        self.share_prefix = share_prefix

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of token cross-entropies, sum of per-image patch-aligning losses)."""
        model = self.model
        if batch.input_ids.shape[0] == 0:
            # Every sample of this micro-batch was skipped: a zero that still reaches every parameter,
            # so data-parallel ranks keep their collectives in step.
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            return zero, zero
        table = image_table(model, batch.images)
        embeds = model.embed(batch.input_ids, table)
        vocab = model.text_vocab_size()
        k = shared_prefix_length(batch.input_ids, batch.labels, vocab) if self.share_prefix else 0
        if k < MIN_SHARED_PREFIX or batch.input_ids.shape[0] == 1:
            k = 0
        cache = None
        if k:
            prefix = model.decoder(inputs_embeds=embeds[:1, :k], use_cache=True,
                                   **modality_inputs(model.decoder, batch.input_ids[:1, :k], vocab))
            cache = prefix.past_key_values
            cache.batch_repeat_interleave(embeds.shape[0])
        out = model.decoder(
            inputs_embeds=embeds[:, k:],
            attention_mask=batch.attention_mask,
            past_key_values=cache,
            output_hidden_states=self.patch_align,
            use_cache=cache is not None,
            **modality_inputs(model.decoder, batch.input_ids[:, k:], vocab),
        )
        # Position k + i predicts token k + i + 1; predictions made inside the prefix carry no loss.
        logits = out.logits[:, :-1].float()
        targets = batch.labels[:, k + 1 :]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        pal = ce.new_zeros(())
        if self.patch_align and batch.teacher_pixels is not None:
            teacher = batch.teacher_pixels.to(embeds.dtype)
            starts = [None if s is None else s - k for s in batch.image_starts]
            mean = model.patch_align_loss(out.hidden_states, starts, batch.grids, teacher)
            pal = mean.float() * max(batch.num_images, 1)
        return ce, pal
