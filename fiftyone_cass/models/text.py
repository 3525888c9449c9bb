"""Text embeddings with the 80 OpenAI ImageNet templates (SPEC F), cached per query."""

from __future__ import annotations

import threading
from typing import Dict, Sequence

import torch
import torch.nn.functional as F


class TextEmbedder:
    """Embeds query names with open_clip's ``OPENAI_IMAGENET_TEMPLATES`` and tokenizer.

    Each name: 80 templated sentences -> ``encode_text`` -> L2 normalise each -> mean -> L2
    normalise. Results are cached per name, so growing a vocabulary only embeds the new names.
    """

    def __init__(self, model, tokenizer, device="cpu", batch_size: int = 640):
        import open_clip

        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.templates = tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)
        self.batch_size = batch_size
        self._cache: Dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    @torch.no_grad()
    def _embed_names(self, names: Sequence[str]) -> torch.Tensor:
        sentences = [t(n) for n in names for t in self.templates]
        outs = []
        for i in range(0, len(sentences), self.batch_size):
            tokens = self.tokenizer(sentences[i : i + self.batch_size]).to(self.device)
            outs.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        emb = torch.cat(outs).reshape(len(names), len(self.templates), -1).mean(1)
        return F.normalize(emb, dim=-1)

    def __call__(self, names: Sequence[str]) -> torch.Tensor:
        """``(len(names), E)`` float32 unit embeddings on the embedder's device."""
        with self._lock:
            missing = [n for n in dict.fromkeys(names) if n not in self._cache]
            if missing:
                for n, e in zip(missing, self._embed_names(missing)):
                    self._cache[n] = e
            if not names:
                return torch.zeros(0, 0, device=self.device)
            return torch.stack([self._cache[n] for n in names])
