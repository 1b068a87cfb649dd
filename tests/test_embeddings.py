"""Textual-inversion embeddings: files the tests write, called by name in prompts, the model untouched."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from pipelines import loading
from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.prompts import EmbeddingLibrary, chunk_prompt, count_tokens, encode_prompts


@pytest.fixture
def demo(engine: Engine) -> Iterator[Any]:
    with engine._device_lock:  # the demo's modules are shared with the engine: no job may run meanwhile
        yield engine.manager.get("builtin:demo").pipe


def rows_of(pipe: Any, words: str, encoder: str = "text_encoder") -> torch.Tensor:
    """The token-embedding rows of ``words``: an embedding file that means exactly those words."""
    ids = pipe.tokenizer(words, add_special_tokens=False).input_ids
    return getattr(pipe, encoder).get_input_embeddings().weight[ids].detach().clone()


def prompt_embeds(pipe: Any, prompt: str, library: EmbeddingLibrary | None = None) -> torch.Tensor:
    return encode_prompts(pipe, prompt, "", embeddings=library, do_cfg=False)["prompt_embeds"]


def write_embedding(path: Path, layout: str, vectors: torch.Tensor) -> None:
    if layout == "a1111":  # what A1111's training writes (a pickle of plain containers)
        data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": path.stem, "step": 100}
        torch.save(data, path)
    elif layout == "diffusers":  # learned_embeds.bin: one token, one vector
        torch.save({f"<{path.stem}>": vectors[0]}, path)
    elif layout == "kohya":
        save_file({"emb_params": vectors}, path)
    else:  # any other single-tensor safetensors file
        save_file({"string_to_param.*": vectors}, path)


@pytest.mark.parametrize(
    ("layout", "suffix"), [("a1111", ".pt"), ("diffusers", ".bin"), ("kohya", ".safetensors"), ("flat", ".safetensors")]
)
def test_a_name_in_the_prompt_means_its_vectors(demo: Any, tmp_path: Path, layout: str, suffix: str) -> None:
    write_embedding(tmp_path / f"mycolour{suffix}", layout, rows_of(demo, "blue"))
    library = EmbeddingLibrary(tmp_path)
    assert library.names() == ["mycolour"]
    assert torch.equal(prompt_embeds(demo, "a mycolour circle", library), prompt_embeds(demo, "a blue circle"))
    assert torch.equal(prompt_embeds(demo, "a MyColour circle", library), prompt_embeds(demo, "a blue circle"))
    # Weights reach an embedding's vectors like any token's.
    weighted = prompt_embeds(demo, "a (mycolour:1.3) circle", library)
    assert torch.equal(weighted, prompt_embeds(demo, "a (blue:1.3) circle"))


def test_several_vectors_replace_one_word_and_other_words_stay(demo: Any, tmp_path: Path) -> None:
    torch.save({"string_to_param": {"*": rows_of(demo, "light blue square")}}, tmp_path / "mything.pt")
    library = EmbeddingLibrary(tmp_path)
    assert torch.equal(
        prompt_embeds(demo, "a mything, top left", library), prompt_embeds(demo, "a light blue square, top left")
    )
    # Not whole words, so not the embedding: the text is encoded as written.
    for text in ("a mythings circle", "a xmything circle", "a my thing circle"):
        assert torch.equal(prompt_embeds(demo, text, library), prompt_embeds(demo, text)), text
    assert count_tokens(demo.tokenizer, "a (mything:1.2), top", library) == (6, 1)


def test_the_model_is_unchanged_after_use(demo: Any, tmp_path: Path) -> None:
    torch.save({"string_to_param": {"*": rows_of(demo, "red")}}, tmp_path / "mycolour.pt")
    layer = demo.text_encoder.get_input_embeddings()
    before = (layer.weight.detach().clone(), len(demo.tokenizer), layer.num_embeddings)
    plain_before = prompt_embeds(demo, "a blue circle")
    encode_prompts(demo, "a mycolour circle", "mycolour", embeddings=EmbeddingLibrary(tmp_path))
    assert torch.equal(layer.weight, before[0])
    assert (len(demo.tokenizer), layer.num_embeddings) == before[1:]
    assert "mycolour" not in demo.tokenizer.get_vocab()
    assert not layer._forward_hooks
    assert torch.equal(prompt_embeds(demo, "a blue circle"), plain_before)


def test_an_embedding_is_never_split_between_chunks(demo: Any, tmp_path: Path) -> None:
    torch.save({"string_to_param": {"*": torch.randn(10, 64)}}, tmp_path / "wide.pt")
    library = EmbeddingLibrary(tmp_path)
    first, second = chunk_prompt(demo.tokenizer, " ".join(["red"] * 70) + " wide", library)
    assert len(first.tokens) == 70 and len(second.tokens) == 10
    assert [(at, embedding.name) for at, embedding in second.fixes] == [(0, "wide")]
    assert prompt_embeds(demo, " ".join(["red"] * 70) + " wide", library).shape == (1, 154, 64)


def test_bad_files_are_refused_by_name(demo: Any, tmp_path: Path) -> None:
    torch.save({"string_to_param": {"*": torch.zeros(2, 1024)}}, tmp_path / "sd2thing.pt")
    torch.save({"string_to_param": {"*": torch.zeros(80, 64)}}, tmp_path / "huge.pt")
    save_file({"a": torch.zeros(1, 64), "b": torch.zeros(1, 64)}, tmp_path / "twokeys.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    library = EmbeddingLibrary(tmp_path)
    cases = {
        "sd2thing": ["sd2thing.pt", "width 1024", "width 64"],
        "huge": ["huge.pt", "80 vectors", "75"],
        "twokeys": ["twokeys.safetensors", "not a known embedding format"],
        "broken": ["broken.safetensors", "cannot be loaded"],
    }
    for name, words in cases.items():
        with pytest.raises(BadRequest) as refused:
            encode_prompts(demo, f"a {name} circle", embeddings=library)
        for word in words:
            assert word in str(refused.value), (name, str(refused.value))
    # A prompt that does not name a bad file is not bothered by it.
    assert torch.equal(prompt_embeds(demo, "a red circle", library), prompt_embeds(demo, "a red circle"))


class Trap:
    """A pickle that would create a file if it were ever unpickled with code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    folder, marker = tmp_path / "embeddings", tmp_path / "ran"
    folder.mkdir()
    torch.save({"string_to_param": {"*": torch.zeros(1, 64)}, "extra": Trap(marker)}, folder / "sneaky.pt")
    with pytest.raises(BadRequest, match=r"sneaky\.pt.*only plain weights"):
        EmbeddingLibrary(folder).get("sneaky")
    assert not marker.exists()


def test_ti_hashes_for_the_infotext_and_the_cache(demo: Any, tmp_path: Path) -> None:
    torch.save({"string_to_param": {"*": rows_of(demo, "blue")}}, tmp_path / "mycolour.pt")
    save_file({"emb_params": rows_of(demo, "red square")}, tmp_path / "Other.safetensors")
    library = EmbeddingLibrary(tmp_path)
    digest = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in tmp_path.iterdir()}
    assert library.infotext("a red circle") == {}
    text = library.infotext("a (mycolour:1.2) circle", "other, mycolour")
    assert text == {"TI hashes": f"mycolour: {digest['mycolour']}, Other: {digest['Other']}"}
    assert library.get("mycolour") is library.get("MYCOLOUR")  # loaded once
    torch.save({"string_to_param": {"*": rows_of(demo, "green")}}, tmp_path / "mycolour.pt")
    os.utime(tmp_path / "mycolour.pt", ns=(1, 1))  # a changed file is read again, even within one second
    assert torch.equal(prompt_embeds(demo, "a mycolour circle", library), prompt_embeds(demo, "a green circle"))


# -- SDXL: one vector set per text encoder ---------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl_text() -> Any:
    """What the encoder reads of an SDXL pipeline: two tiny random text encoders and their tokenizers."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = loading.clip_tokenizer()
    small: dict[str, Any] = dict(
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408, projection_dim=32
    )
    return SimpleNamespace(
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        text_encoder=CLIPTextModel(CLIPTextConfig(hidden_size=32, **small)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=48, **small)),
        config=SimpleNamespace(force_zeros_for_empty_prompt=True),
        _execution_device=torch.device("cpu"),
    )


def test_sdxl_embeddings_give_each_encoder_its_half(sdxl_text: Any, tmp_path: Path) -> None:
    vectors = {"clip_l": rows_of(sdxl_text, "blue"), "clip_g": rows_of(sdxl_text, "blue", "text_encoder_2")}
    save_file(vectors, tmp_path / "mycolour.safetensors")
    torch.save({"string_to_param": {"*": vectors["clip_l"]}}, tmp_path / "onlyl.pt")
    library = EmbeddingLibrary(tmp_path)
    mine = encode_prompts(sdxl_text, "a mycolour circle", "mycolour", embeddings=library)
    plain = encode_prompts(sdxl_text, "a blue circle", "blue")
    assert mine["prompt_embeds"].shape == (1, 77, 80)
    for key in plain:
        assert torch.equal(mine[key], plain[key]), key
    with pytest.raises(BadRequest, match=r"onlyl\.pt.*no 'clip_g' vectors"):
        encode_prompts(sdxl_text, "a onlyl circle", embeddings=library)
