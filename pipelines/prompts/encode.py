"""Prompts to text embeddings the way AUTOMATIC1111 makes them: weighted, in chunks, with embeddings.

A prompt is read for weights (``weights.parse_weights``), tokenized, and laid out in chunks of 75
tokens; each chunk is encoded on its own as ``BOS + tokens + EOS + padding`` (77 positions), each
token's hidden state is multiplied by its weight and the chunk is rescaled to its unweighted mean,
and the chunks are joined along the sequence. A chunk that fills up close after a comma moves the
words after that comma to the next chunk, so a phrase is not cut in two. A plain prompt (one chunk,
weights of 1, no embedding) gives exactly what diffusers' own ``encode_prompt`` gives, so pictures
made before weights existed stay the same to the pixel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import BadRequest
from .embeddings import Embedding, EmbeddingLibrary
from .weights import BREAK, parse_weights

CHUNK = 75  # tokens per chunk; with its start and end markers a chunk fills CLIP's 77 positions
COMMA_BACKTRACK = 20  # A1111's default: a full chunk moves the words after a comma this close to its end


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)  # no start/end markers; an embedding's slots hold 0
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, Embedding]] = field(default_factory=list)  # (first slot, embedding) inside tokens


class _Chunker:
    """Fills chunks item by item (a token or a whole embedding), as A1111 does."""

    def __init__(self, comma: int | None, backtrack: int = COMMA_BACKTRACK) -> None:
        self.comma = comma
        self.backtrack = backtrack
        self.chunks: list[Chunk] = []
        self.current = Chunk()
        self.last_comma = -1  # where the last comma of the current chunk stands

    def close(self) -> None:
        self.chunks.append(self.current)
        self.current, self.last_comma = Chunk(), -1

    def add(self, item: int | Embedding, weight: float) -> None:
        size = item.count if isinstance(item, Embedding) else 1
        full = len(self.current.tokens) == CHUNK
        if full and item != self.comma and self.last_comma >= 0 and CHUNK - self.last_comma <= self.backtrack:
            self._move_after_comma()
        if len(self.current.tokens) + size > CHUNK:
            self.close()  # an embedding is never split between chunks
        chunk = self.current
        if item == self.comma:
            self.last_comma = len(chunk.tokens)
        if isinstance(item, Embedding):
            chunk.fixes.append((len(chunk.tokens), item))
            chunk.tokens += [0] * size
        else:
            chunk.tokens.append(item)
        chunk.weights += [weight] * size

    def finish(self) -> list[Chunk]:
        if self.current.tokens or not self.chunks:
            self.close()
        return self.chunks

    def _move_after_comma(self) -> None:
        cut = self.last_comma + 1
        head = self.current
        tail = Chunk(head.tokens[cut:], head.weights[cut:], [(at - cut, e) for at, e in head.fixes if at >= cut])
        head.tokens, head.weights = head.tokens[:cut], head.weights[:cut]
        head.fixes = [(at, e) for at, e in head.fixes if at < cut]
        self.close()
        self.current = tail


def chunk_prompt(tokenizer: Any, text: str, embeddings: EmbeddingLibrary | None = None) -> list[Chunk]:
    """``text`` (A1111 syntax) as chunks of at most 75 tokens; always at least one chunk."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunker = _Chunker(comma if comma != tokenizer.unk_token_id else None)
    split = embeddings.splitter() if embeddings else None
    for fragment, weight in parse_weights(text):
        if (fragment, weight) == BREAK:
            chunker.close()
            continue
        pieces: list[str | Embedding] = split(fragment) if split else [fragment]
        for piece in pieces:
            if isinstance(piece, Embedding):
                chunker.add(piece, weight)
                continue
            for token in tokenizer(piece, add_special_tokens=False, verbose=False).input_ids if piece else []:
                chunker.add(token, weight)
    return chunker.finish()


def count_tokens(tokenizer: Any, text: str, embeddings: EmbeddingLibrary | None = None) -> tuple[int, int]:
    """(tokens, chunks) of ``text`` for the page's counter: weight syntax takes no tokens, an embedding
    takes as many as it has vectors. Shown as ``tokens/75*chunks``, like A1111's counter."""
    chunks = chunk_prompt(tokenizer, text, embeddings)
    return sum(len(chunk.tokens) for chunk in chunks), len(chunks)


@dataclass
class _Encoder:
    tokenizer: Any
    model: Any
    key: str  # which half of an SDXL embedding file it takes
    pooled: bool  # SDXL's second encoder also gives the pooled embedding


def _execution_device(pipe: Any) -> torch.device:
    """Where the UNet runs. diffusers' ``_execution_device`` walks every module of every part for
    group-offload hooks, which Atelier never sets: milliseconds per picture on SDXL. Without
    accelerate's offload hooks, the UNet's weights are where it runs."""
    parts = ("unet", "vae", "text_encoder", "text_encoder_2")
    unet = getattr(pipe, "unet", None)
    if unet is None or any(hasattr(getattr(pipe, part, None), "_hf_hook") for part in parts):
        return pipe._execution_device
    return next(unet.parameters()).device


def encode_prompts(
    pipe: Any,
    prompt: str,
    negative: str = "",
    clip_skip: int = 1,
    embeddings: EmbeddingLibrary | None = None,
    do_cfg: bool = True,
    clip_skip_negative: bool = False,
) -> dict[str, torch.Tensor]:
    """The text-embedding arguments of one diffusers call (batch of one: diffusers repeats them for
    ``num_images_per_prompt``): ``prompt_embeds`` and, with ``do_cfg``, ``negative_prompt_embeds``;
    SDXL pipelines also get ``pooled_prompt_embeds`` / ``negative_pooled_prompt_embeds``.

    ``clip_skip`` is A1111's (1 = the last layer). diffusers applies it to the prompt only, never
    the negative; ``clip_skip_negative=False`` keeps that, so pictures match the plain diffusers
    call, and True does as A1111 does (both sides).
    """
    encoders = _encoders(pipe)
    sdxl = any(encoder.pooled for encoder in encoders)
    _check_clip_skip(encoders, clip_skip, sdxl)
    # The tokens come from the first tokenizer: SDXL's two share CLIP's vocabulary (only padding differs).
    cond = chunk_prompt(encoders[0].tokenizer, prompt, embeddings)
    uncond = chunk_prompt(encoders[0].tokenizer, negative, embeddings) if do_cfg else []
    length = max(len(cond), len(uncond))
    # Prompt and negative must be equally long for guidance: the shorter one gets empty-prompt chunks.
    cond += [Chunk() for _ in range(length - len(cond))]
    uncond += [Chunk() for _ in range(length - len(uncond))] if do_cfg else []
    device = _execution_device(pipe)
    dtype = encoders[-1].model.dtype  # diffusers: text_encoder_2's for SDXL, text_encoder's otherwise
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        embeds, pooled = _encode_chunks(encoders, cond, clip_skip, sdxl)
        out["prompt_embeds"] = embeds.to(dtype=dtype, device=device)
        if pooled is not None:
            out["pooled_prompt_embeds"] = pooled.to(dtype=dtype, device=device)
        if not do_cfg:
            return out
        if sdxl and not negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            # diffusers' SDXL convention for "no negative prompt": zeros, not the encoded empty text.
            out["negative_prompt_embeds"] = torch.zeros_like(out["prompt_embeds"])
            out["negative_pooled_prompt_embeds"] = torch.zeros_like(out["pooled_prompt_embeds"])
            return out
        skip = clip_skip if clip_skip_negative else 1
        embeds, pooled = _encode_chunks(encoders, uncond, skip, sdxl)
        out["negative_prompt_embeds"] = embeds.to(dtype=dtype, device=device)
        if pooled is not None:
            out["negative_pooled_prompt_embeds"] = pooled.to(dtype=dtype, device=device)
    return out


def _encoders(pipe: Any) -> list[_Encoder]:
    second = getattr(pipe, "text_encoder_2", None)
    found = []
    if getattr(pipe, "text_encoder", None) is not None:
        found.append(_Encoder(pipe.tokenizer, pipe.text_encoder, "clip_l", pooled=False))
    if second is not None:
        found.append(_Encoder(pipe.tokenizer_2, second, "clip_g", pooled=True))
    if not found:
        raise BadRequest(f"this model ({type(pipe).__name__}) has no text encoder, so it takes no prompt")
    return found


def _check_clip_skip(encoders: list[_Encoder], clip_skip: int, sdxl: bool) -> None:
    layers = min(int(encoder.model.config.num_hidden_layers) for encoder in encoders)
    # SD 1.x/2.x may go down to the embedding layer's output; SDXL starts at the penultimate layer.
    most = layers if sdxl else layers + 1
    if not 1 <= clip_skip <= most:
        raise BadRequest(f"Clip skip {clip_skip} is out of range for this model: its text encoder allows 1 to {most}")


def _encode_chunks(
    encoders: list[_Encoder], chunks: list[Chunk], clip_skip: int, sdxl: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All chunks, joined along the sequence; SDXL's pooled embedding from the first chunk, as A1111 does."""
    joined, pooled = [], None
    for index, chunk in enumerate(chunks):
        parts = []
        for encoder in encoders:
            hidden, pool = _encode_chunk(encoder, chunk, clip_skip, sdxl)
            parts.append(_weighted(hidden, chunk.weights))
            if index == 0 and pool is not None:
                pooled = pool
        joined.append(torch.cat(parts, dim=-1))
    return torch.cat(joined, dim=1), pooled


def _encode_chunk(
    encoder: _Encoder, chunk: Chunk, clip_skip: int, sdxl: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk through one encoder, the way diffusers' ``encode_prompt`` calls it."""
    from diffusers.utils.torch_utils import get_module_execution_device

    tokenizer, model = encoder.tokenizer, encoder.model
    padding = [tokenizer.pad_token_id] * (CHUNK - len(chunk.tokens))
    ids = torch.tensor([[tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id, *padding]])
    ids = ids.to(get_module_execution_device(model))
    mask = None
    if getattr(model.config, "use_attention_mask", False):
        mask = (torch.arange(ids.shape[1], device=ids.device) <= len(chunk.tokens) + 1).long()[None]
    with _vectors_in(model, chunk.fixes, encoder.key):
        if sdxl:
            output = model(ids, output_hidden_states=True)
            # diffusers: SDXL reads the penultimate layer, and clip skip counts on from there.
            pooled = output[0] if encoder.pooled and output[0].ndim == 2 else None
            return output.hidden_states[-(clip_skip + 1)], pooled
        if clip_skip == 1:
            return model(ids, attention_mask=mask)[0], None
        output = model(ids, attention_mask=mask, output_hidden_states=True)
        # A1111's "Clip skip N": the Nth hidden state from the end, through the final layer norm.
        norm = model.final_layer_norm if hasattr(model, "final_layer_norm") else model.text_model.final_layer_norm
        return norm(output.hidden_states[-clip_skip]), None


@contextlib.contextmanager
def _vectors_in(model: Any, fixes: list[tuple[int, Embedding]], key: str) -> Iterator[None]:
    """For one call, the token embedding layer's output carries the embeddings' vectors in their slots.

    A forward hook, removed on the way out: the model's vocabulary and weights never change.
    """
    if not fixes:
        yield
        return
    layer = model.get_input_embeddings()
    rows = [(start + 1, embedding.for_encoder(key, layer.embedding_dim)) for start, embedding in fixes]  # +1: BOS

    def put_vectors(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for start, vectors in rows:
            output[:, start : start + vectors.shape[0]] = vectors.to(dtype=output.dtype, device=output.device)
        return output

    handle = layer.register_forward_hook(put_vectors)
    try:
        yield
    finally:
        handle.remove()


def _weighted(hidden: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Each token's hidden state times its weight, then the chunk scaled back to its unweighted mean
    (A1111's normalisation, so weights shift emphasis without changing the overall magnitude)."""
    if all(weight == 1.0 for weight in weights):
        return hidden  # untouched, bit for bit: a plain prompt equals diffusers' encoding
    scale = torch.ones(hidden.shape[1], dtype=torch.float32, device=hidden.device)
    scale[1 : 1 + len(weights)] = torch.tensor(weights, dtype=torch.float32)
    values = hidden.float()
    before = values.mean()
    values = values * scale[None, :, None]
    after = values.mean()
    if after != 0:
        values = values * (before / after)
    return values.to(hidden.dtype)
