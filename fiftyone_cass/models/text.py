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

    def _encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``encode_text`` on the shortest context that holds every sentence of the batch.

        CLIP's text tower is causal and pools at the end-of-text token, so the padding after it
        never influences the result: cutting the 77-token context to the longest sentence (~20
        tokens for the templates) gives the same embeddings several times faster. Models that are
        not of that form (other pooling, no causal mask) use ``encode_text`` as it is."""
        m = self.model
        mask = getattr(m, "attn_mask", None)
        if getattr(m, "text_pool_type", None) != "argmax" or mask is None or not hasattr(m, "token_embedding"):
            return m.encode_text(tokens)
        length = int((tokens != 0).sum(1).max())
        t = tokens[:, :length]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(t).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=mask[:length, :length]))
        x = x[torch.arange(x.shape[0], device=x.device), t.argmax(dim=-1)]
        proj = m.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    @torch.no_grad()
    def _embed_names(self, names: Sequence[str]) -> torch.Tensor:
        sentences = [t(n) for n in names for t in self.templates]
        outs = []
        for i in range(0, len(sentences), self.batch_size):
            tokens = self.tokenizer(sentences[i : i + self.batch_size]).to(self.device)
            outs.append(F.normalize(self._encode(tokens).float(), dim=-1))
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
