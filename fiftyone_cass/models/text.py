"""Text embeddings with the 80 OpenAI ImageNet templates (SPEC F), cached per query in memory
and on disk.

The disk cache matters on CPUs: a vocabulary like COCO-Object's (113 names, plus CDAM's 80
augmentation words) is ~15,000 sentences through CLIP's text tower, minutes on a small CPU, for
every new process (each CLI run, each shard worker). Files are keyed by a SHA-256 of the text
tower's weights, the tokenizer's output for the templates and :data:`TEXT_CACHE_VERSION`, so a
different model or checkpoint never reads another's embeddings. Location: the directory in
``FIFTYONE_CASS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/fiftyone_cass`` or
``~/.cache/fiftyone_cass``), under ``text/``; ``FIFTYONE_CASS_TEXT_CACHE=0`` turns it off. A
cache that cannot be read or written is skipped with a warning: labelling never fails for it.
Every entry read is checked (a float32 tensor of the model's embedding size, finite, unit norm);
an invalid one is logged, recomputed, and the file rewritten without it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fileio import atomic_write

TEXT_CACHE_VERSION = 1  # bump when the embedding procedure changes
# |norm - 1| allowed for a cached embedding; float32 normalisation is within ~1e-7
UNIT_NORM_TOLERANCE = 1e-4
logger = logging.getLogger("fiftyone_cass")


def cache_root() -> Path:
    """The project's cache directory (see the module docstring)."""
    env = os.environ.get("FIFTYONE_CASS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fiftyone_cass"


def text_cache_enabled() -> bool:
    return os.environ.get("FIFTYONE_CASS_TEXT_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def text_tower_fingerprint(model) -> str:
    """SHA-256 of every parameter and buffer of ``model`` outside its image tower (names, shapes,
    dtypes and bytes): what text embeddings depend on, whatever file or hub tag the weights came
    from."""
    h = hashlib.sha256()
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        if name.startswith("visual."):
            continue
        shape = t.shape
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{tuple(shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def default_tokenizer():
    """open_clip's CLIP tokenizer (the one every backbone of this project uses)."""
    import open_clip

    return open_clip.get_tokenizer("ViT-B-16")


def check_name_lengths(names: Sequence[str], tokenizer=None, templates=None) -> None:
    """Raises :class:`InvalidInputError` naming the first name whose longest templated sentence
    (open_clip's 80 ``OPENAI_IMAGENET_TEMPLATES``) does not fit the tokenizer's context (77
    tokens for CLIP): the tokenizer would cut it silently, and two long names that differ only
    after the cut would get the same embedding."""
    if not names:
        return
    if tokenizer is None:
        tokenizer = default_tokenizer()
    if templates is None:
        import open_clip

        templates = open_clip.OPENAI_IMAGENET_TEMPLATES
    ctx = int(getattr(tokenizer, "context_length", 77) or 77)
    encode = getattr(tokenizer, "encode", None)
    candidates = list(dict.fromkeys(names))
    if encode is not None:  # cheap bound first: template words + name words (+ SOT/EOT, margin 3)
        overhead = max(len(encode(t("x"))) - len(encode("x")) for t in templates)
        candidates = [n for n in candidates if len(encode(n)) + overhead + 2 + 3 > ctx]
    for name in candidates:
        sentences = [t(name) for t in templates]
        if encode is not None:
            lengths = [len(encode(s)) + 2 for s in sentences]
        else:  # a tokenizer without encode: one slot more than the context tells whether it fits
            tokens = tokenizer(sentences, context_length=ctx + 1)
            lengths = [ctx + 1 if int(row[-1]) != 0 else int((row != 0).sum()) for row in tokens]
        worst = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[worst] > ctx:
            raise InvalidInputError(
                f"class name {name!r} is too long for CLIP's text encoder: the sentence {sentences[worst]!r} is "
                f"{lengths[worst]} tokens and the context holds {ctx}, so it would be cut (two long names could "
                "get the same embedding); shorten the name"
            )


class TextEmbedder:
    """Embeds query names with open_clip's ``OPENAI_IMAGENET_TEMPLATES`` and tokenizer.

    Each name: 80 templated sentences -> ``encode_text`` -> L2 normalise each -> mean -> L2
    normalise. Results are cached per name, so growing a vocabulary only embeds the new names.
    """

    def __init__(self, model, tokenizer, device="cpu", batch_size: int = 640, cache_dir: Optional[str] = "auto"):
        """``cache_dir``: directory of the disk cache; ``"auto"`` (default) = :func:`cache_root`
        unless ``FIFTYONE_CASS_TEXT_CACHE=0``; ``None`` = memory only."""
        import open_clip

        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.templates = tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)
        self.batch_size = batch_size
        self._cache: Dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        if cache_dir == "auto":
            cache_dir = str(cache_root()) if text_cache_enabled() else None
        self.cache_dir = cache_dir
        self._disk_path: Optional[Path] = None
        self._disk: Optional[Dict[str, torch.Tensor]] = None  # valid entries, loaded on first use
        self._dim: Optional[int] = None

    # -------------------------------------------------------------- disk cache
    @property
    def disk_path(self) -> Optional[Path]:
        """The cache file of this model and template set (None when the disk cache is off)."""
        if self.cache_dir is None:
            return None
        if self._disk_path is None:
            h = hashlib.sha256()
            h.update(f"v{TEXT_CACHE_VERSION}".encode())
            h.update(text_tower_fingerprint(self.model).encode())
            for t in self.templates:  # the templates as the tokenizer sees them
                h.update(self.tokenizer([t("{}")])[0].numpy().tobytes())
            self._disk_path = Path(self.cache_dir) / "text" / f"{h.hexdigest()[:40]}.pt"
        return self._disk_path

    def _embedding_dim(self) -> int:
        """The size of one text embedding (the text projection's output), found once."""
        if self._dim is None:
            proj = getattr(self.model, "text_projection", None)
            if isinstance(proj, torch.nn.Linear):
                self._dim = int(proj.out_features)
            elif isinstance(proj, torch.Tensor) and proj.ndim == 2:
                self._dim = int(proj.shape[1])
            else:  # another text tower: ask it
                with torch.no_grad():
                    self._dim = int(self._encode(self.tokenizer(["a"]).to(self.device)).shape[-1])
        return self._dim

    def _entry_problem(self, value) -> Optional[str]:
        """Why a cached embedding cannot be used (None when it can): it must be what
        :meth:`_embed_names` writes, a finite float32 unit vector of the model's embedding size."""
        if not isinstance(value, torch.Tensor):
            return f"a {type(value).__name__}, not a tensor"
        if value.dtype != torch.float32:
            return f"dtype {value.dtype}, expected torch.float32"
        dim = self._embedding_dim()
        if tuple(value.shape) != (dim,):
            return f"shape {tuple(value.shape)}, expected ({dim},)"
        if not bool(torch.isfinite(value).all()):
            return "non-finite values"
        norm = float(value.double().norm())
        if abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
            return f"norm {norm:.6g}, expected 1"
        return None

    def _read_disk(self, warn: bool = True) -> Tuple[Dict[str, torch.Tensor], List[str]]:
        """The valid entries of the cache file, and the names of the invalid ones (each logged
        with its problem when ``warn``). An unreadable file counts as empty."""
        path = self.disk_path
        if path is None or not path.exists():
            return {}, []
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            stored = data["embeddings"]
            if not isinstance(stored, dict):
                raise TypeError(f"'embeddings' is a {type(stored).__name__}, not a dict")
        except Exception as exc:  # noqa: BLE001 - a broken cache is skipped, never fatal
            if warn:
                logger.warning("ignoring unreadable text-embedding cache %s: %s", path, exc)
            return {}, []
        good: Dict[str, torch.Tensor] = {}
        bad: List[str] = []
        for key, value in stored.items():
            problem = "the key is not a string" if not isinstance(key, str) else self._entry_problem(value)
            if problem is None:
                good[key] = value
            else:
                bad.append(str(key))
                if warn:
                    logger.warning(
                        "text-embedding cache %s: invalid entry %r (%s); it is recomputed and the cache repaired",
                        path, key, problem,
                    )
        return good, bad

    def _write_disk(self, new: Dict[str, torch.Tensor]) -> None:
        """Adds ``new`` to the cache file, rewritten whole without any invalid entry."""
        path = self.disk_path
        if path is None:
            return
        try:
            merged, _ = self._read_disk(warn=False)  # another process may have added names meanwhile
            merged.update({k: v.detach().to("cpu", torch.float32) for k, v in new.items()})
            atomic_write(str(path), lambda f: torch.save({"version": TEXT_CACHE_VERSION, "embeddings": merged}, f))
            self._disk = merged
        except Exception as exc:  # noqa: BLE001 - e.g. read-only home: keep going without it
            logger.warning("could not write the text-embedding cache %s: %s", path, exc)

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
            repair = False
            if missing and self.cache_dir is not None:
                if self._disk is None:
                    self._disk, bad = self._read_disk()
                    repair = bool(bad)  # rewrite the file without them, even if none is asked for
                for n in missing:
                    if n in self._disk:
                        self._cache[n] = self._disk[n].to(self.device)
                missing = [n for n in missing if n not in self._cache]
            if missing:
                check_name_lengths(missing, self.tokenizer, self.templates)
            computed = dict(zip(missing, self._embed_names(missing))) if missing else {}
            self._cache.update(computed)
            if self.cache_dir is not None and (computed or repair):
                self._write_disk(computed)
            if not names:
                return torch.zeros(0, 0, device=self.device)
            return torch.stack([self._cache[n] for n in names])


# ------------------------------------------------------------------ one embedder per CLIP model
#: the :class:`TextEmbedder` of each CLIP model (and its device), shared by every Segmenter on that
#: model, kept beside the model instead of as an attribute on open_clip's object. Weak keys: an
#: entry goes when its model does (the embedder refers to the model through a weak proxy, so the
#: entry itself does not keep the model alive).
_EMBEDDERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_EMBEDDERS_LOCK = threading.Lock()


def install_text_embedder(model, embedder: "TextEmbedder") -> "TextEmbedder":
    """Makes ``embedder`` the one every Segmenter on CLIP ``model`` uses (e.g. a benchmark's
    embedder pre-filled with random vectors). Returns it. From then on the embedder refers to
    ``model`` weakly: it works as long as the model exists."""
    embedder.model = weakref.proxy(model)
    with _EMBEDDERS_LOCK:
        _EMBEDDERS[model] = embedder
    return embedder


def text_embedder(model, tokenizer, device="cpu") -> "TextEmbedder":
    """The :class:`TextEmbedder` shared by every user of CLIP ``model`` on ``device`` (made on
    first use; a request for another device replaces it)."""
    dev = torch.device(device)
    with _EMBEDDERS_LOCK:
        emb = _EMBEDDERS.get(model)
        if emb is not None and emb.device == dev:
            return emb
    return install_text_embedder(model, TextEmbedder(model, tokenizer, dev))
