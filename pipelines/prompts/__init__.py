"""Prompts as artists write them for AUTOMATIC1111: weights, BREAK, long prompts, embeddings.

encoded = encode_prompts(pipe, prompt, negative, clip_skip, library, do_cfg)  # kwargs for the pipe
tokens, chunks = count_tokens(tokenizer, prompt, library)                     # the page's counter
"""

from __future__ import annotations

from .embeddings import Embedding, EmbeddingLibrary
from .encode import CHUNK, Chunk, chunk_prompt, count_tokens, encode_prompts
from .weights import BREAK, parse_weights

__all__ = [
    "BREAK",
    "CHUNK",
    "Chunk",
    "Embedding",
    "EmbeddingLibrary",
    "chunk_prompt",
    "count_tokens",
    "encode_prompts",
    "parse_weights",
]
