"""Apply LoRAs to a pipeline for one job, then take them off so the model is exactly as loaded.

Each file's tensors are first read into one form, (down, up) per layer, with every layer checked
against the model, so a file made for another model fails with a message naming the file, not deep
inside peft. diffusers' own reader renames what this one does not know (kohya files for SDXL name
UNet blocks the original way, ``input_blocks_4_1``).

Why not hand kohya files to ``load_lora_weights`` as they are: diffusers 0.42 cannot tell the type
of a kohya text-encoder part without an ``out_proj`` entry ("Could not automatically infer state
dict type"), keys its per-module alphas by the attention block rather than the projection, and with
the model manager's clip-skip patch (``text_encoder.text_model`` pointing at the flattened
transformers 5 encoder) keeps a ``text_model.`` prefix no module has. Folding each layer's
``alpha / rank`` into its up weight gives the same change with a scale of 1 and no alphas to key.

Two ways to apply (``applied``'s ``method``), both exact to undo:

- "fused": each changed layer's weight *tensor* is swapped for a new one, ``W + w * up @ down``;
  afterwards the original tensor object, never written to, goes back. (diffusers' ``fuse_lora`` /
  ``unfuse_lora`` instead add and subtract in place, which in floating point does not give back
  the same bits.) Costs a few milliseconds a job and nothing per step; needs memory for the
  changed layers' new weights while the job runs.
- "adapters": diffusers' loaders and peft, unfused: each changed layer is wrapped and adds
  ``w * up(down(x))`` to its output; afterwards every wrapper is unwrapped (the original modules go
  back in place). Little memory, but peft's injection walks the whole model (~0.15 s a job on the
  demo model, 20x the fused way) and every step pays for the extra matmuls.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import BadRequest
from ..loading import building_modules
from .files import LoraLibrary
from .tags import LoraTag

log = logging.getLogger(__name__)

ADAPTER_PREFIX = "atelier_lora_"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
# diffusers' text-encoder loader sets ranks for these projections only; LoRA on any other text
# encoder layer would load with a wrong rank, so such entries are left out (and logged).
_TEXT_TARGETS = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")
_KOHYA_PARTS = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
# (suffix, what it holds), longest first so ".lora.down.weight" is not read as ".down.weight".
_SUFFIXES = (
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".alpha", "alpha"),
)
# diffusers' oldest layout: attention-processor LoRA, ``...attn1.processor.to_q_lora.down.weight``.
_OLD_PROCESSOR = re.compile(r"^(.*?)(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_OLD_UNET = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_OLD_TEXT = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
# Markers of LyCORIS kinds peft/diffusers cannot apply from these files.
_UNSUPPORTED = {  # an entry's last name part (or the one before "weight")
    "hada_w1_a": "LyCORIS LoHa",
    "lokr_w1": "LyCORIS LoKr",
    "lokr_w1_a": "LyCORIS LoKr",
    "lora_mid": "LyCORIS LoCon with CP decomposition",
    "on_input": "LyCORIS (IA)^3",
    "diff": "LyCORIS full-weight difference",
    "oft_blocks": "LyCORIS OFT",
    "dora_scale": "DoRA",
    "lora_magnitude_vector": "DoRA",
}


@dataclass
class _Pair:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None


@dataclass
class AppliedLoras:
    """What one job applied, how, and what it cost (for the job's timings and the benchmark)."""

    method: str = ""  # "fused" or "adapters"
    layers: int = 0  # layers changed, all LoRAs together
    parts: dict[str, list[str]] = field(default_factory=dict)  # LoRA name -> model parts it changes
    apply_seconds: float = 0.0
    remove_seconds: float = 0.0


Layers = dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]  # (part, module) -> (down, up)


@contextmanager
def applied(
    pipe: Any, loras: list[tuple[Path, LoraTag]], library: LoraLibrary, method: str = "auto"
) -> Iterator[AppliedLoras]:
    """Apply ``loras`` (from ``LoraLibrary.resolve``) to ``pipe`` for the block, and take them all
    off when it ends, however it ends. ``pipe`` may be any view of a model: its modules are shared,
    so taking the LoRAs off restores every view. An empty list touches nothing.

    ``method``: "fused" swaps each changed layer's weight tensor for ``W + sum(w * up @ down)`` and
    puts the very same original tensor back afterwards (fast, no cost per step, needs memory for
    the changed layers' new weights); "adapters" goes through diffusers and peft (wrappers around
    the changed layers, unwrapped afterwards; little memory, slower). "auto" picks "adapters" when
    the pipeline offloads its weights (--medvram/--lowvram: memory is short and the offload hooks
    own the weight tensors) or when the device has no room for the fused weights, else "fused".
    """
    record = AppliedLoras()
    if not loras:
        yield record
        return
    if method not in ("auto", "fused", "adapters"):
        raise ValueError(f"unknown LoRA method {method!r}")
    started = time.perf_counter()
    # Every file is read and checked before the model is touched: a bad second file must not cost
    # applying (and removing) the first.
    found = [(tag, lora_layers(pipe, library.tensors(path), path.name)) for path, tag in loras]
    for tag, layers in found:
        record.parts[tag.name] = sorted({part for part, _ in layers})
    record.layers = len({key for _, layers in found for key in layers})
    with ExitStack() as stack:
        record.method = "adapters" if method == "adapters" or (method == "auto" and _offloaded(pipe)) else "fused"
        if record.method == "fused":
            try:
                stack.enter_context(_fused(pipe, found, record))
            except torch.OutOfMemoryError:
                if method == "fused":
                    raise
                # _fused has put every original back; peft's wrappers need far less memory.
                log.warning("no device memory for fused LoRA weights: applying them as adapters")
                _free_device_memory()
                record.method = "adapters"
        if record.method == "adapters":
            stack.enter_context(_adapters(pipe, found, record))
        record.apply_seconds = time.perf_counter() - started
        yield record


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def lora_layers(pipe: Any, tensors: dict[str, torch.Tensor], file_name: str) -> Layers:
    """The (down, up) weights ``tensors`` (any layout this module reads) hold for each of
    ``pipe``'s layers, in the shapes peft gives that layer, float32, alpha / rank folded into up.
    Raises ``BadRequest`` naming ``file_name`` when the file is not a LoRA this model can take."""
    for marker, kind in _UNSUPPORTED.items():
        if any(marker in key.rsplit(".", 2)[-2:] for key in tensors):
            raise BadRequest(f"{file_name} is a {kind} file, which this version cannot apply (LoRA and LoCon only)")
    weights = [suffix for suffix, what in _SUFFIXES if what != "alpha"]
    if not any(key.endswith(tuple(weights)) or _OLD_PROCESSOR.match(key) for key in tensors):
        raise BadRequest(f"{file_name} is not a LoRA: it holds no LoRA weights (a checkpoint or an embedding?)")
    parts = _parts(pipe)
    pairs, unknown = _pairs(tensors, parts, pipe)
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise BadRequest(
            f"{file_name} is not a LoRA for this model: {len(unknown)} of its entries match no layer (e.g. {shown})"
        )
    if not pairs:
        raise BadRequest(f"{file_name} is not a LoRA: it holds no LoRA weights")
    layers: Layers = {}
    for (part, module_name), pair in sorted(pairs.items()):
        module = _base(parts[part].get_submodule(module_name))
        layers[part, module_name] = _checked(pair, module, f"{file_name}: {part}.{module_name}")
    return layers


def peft_state_dict(pipe: Any, layers: Layers) -> dict[str, torch.Tensor]:
    """``layers`` as diffusers' loaders take them: ``<part>.<module>.lora_A/B.weight``, on each
    layer's device and in its dtype."""
    parts = _parts(pipe)
    state: dict[str, torch.Tensor] = {}
    for (part, module_name), (down, up) in layers.items():
        if part in TEXT_ENCODERS and not module_name.endswith(_TEXT_TARGETS):
            log.warning("leaving out %s.%s: diffusers applies text-encoder LoRA to attention and MLP layers only",
                        part, module_name)  # fmt: skip
            continue
        weight = _weight(parts[part], module_name)
        # Copies: peft adopts the tensors it is given as its parameters, and these may be the
        # library's cached ones.
        state[f"{part}.{module_name}.lora_A.weight"] = down.to(weight.device, weight.dtype, copy=True)
        state[f"{part}.{module_name}.lora_B.weight"] = up.to(weight.device, weight.dtype, copy=True)
    return state


# -- reading layouts -------------------------------------------------------------------------
def _pairs(
    tensors: dict[str, torch.Tensor], parts: dict[str, torch.nn.Module], pipe: Any
) -> tuple[dict[tuple[str, str], _Pair], set[str]]:
    """Entries grouped by (part, module name), and the keys that name no module of the model."""
    names = {part: _names(module) for part, module in parts.items()}
    pairs: dict[tuple[str, str], _Pair] = {}
    unknown: set[str] = set()
    sgm: dict[str, torch.Tensor] = {}  # kohya UNet keys in the original block naming
    for key, tensor in tensors.items():
        located = _locate(key, parts, names)
        if located is None:
            if key.startswith("lora_unet_"):
                sgm[key] = tensor
            else:
                unknown.add(key)
            continue
        part, module_name, what = located
        _store(pairs.setdefault((part, module_name), _Pair()), what, tensor)
    if sgm:
        for key, tensor in _diffusers_unet_names(sgm, pipe).items():
            located = _locate(key, parts, names)
            if located is None:
                unknown.add(key)
            else:
                part, module_name, what = located
                _store(pairs.setdefault((part, module_name), _Pair()), what, tensor)
    return pairs, unknown


def _locate(
    key: str, parts: dict[str, torch.nn.Module], names: dict[str, dict[str, str]]
) -> tuple[str, str, str] | None:
    """(part, module name, "down" | "up" | "alpha") of one entry, or None when no module matches."""
    old = _OLD_PROCESSOR.match(key)
    if old is not None:
        stem, projection, what = old.groups()
        part, _, rest = stem.partition(".")
        if part not in parts:
            part, rest = "unet", stem
        table = _OLD_TEXT if part in TEXT_ENCODERS else _OLD_UNET
        return _in_part(names, part, f"{rest}.{table[projection]}", what)
    for suffix, held in _SUFFIXES:
        if key.endswith(suffix):
            stem, what = key[: -len(suffix)], held
            break
    else:
        return None
    for prefix, part in _KOHYA_PARTS.items():
        if stem.startswith(prefix) and "." not in stem:
            if part not in parts:
                return None
            flat = stem[len(prefix) :]
            module_name = names[part].get(flat) or names[part].get(flat.removeprefix("text_model_"))
            return (part, module_name, what) if module_name else None
    part, _, rest = stem.removeprefix("base_model.model.").partition(".")
    if part not in parts:  # diffusers' unprefixed UNet files (save_attn_procs)
        part, rest = "unet", stem.removeprefix("base_model.model.")
    return _in_part(names, part, rest, what)


def _in_part(names: dict[str, dict[str, str]], part: str, module_name: str, what: str) -> tuple[str, str, str] | None:
    modules = names.get(part, {})
    for candidate in (module_name, module_name.removeprefix("text_model."), f"text_model.{module_name}"):
        if candidate and modules.get(candidate) == candidate:
            return part, candidate, what
    return None


def _store(pair: _Pair, what: str, tensor: torch.Tensor) -> None:
    if what == "alpha":
        pair.alpha = float(tensor.float().item()) if tensor.numel() == 1 else None
    elif what == "down":
        pair.down = tensor
    else:
        pair.up = tensor


def _diffusers_unet_names(kohya: dict[str, torch.Tensor], pipe: Any) -> dict[str, torch.Tensor]:
    """kohya UNet keys renamed by diffusers' reader (it knows the original UNet's block numbering);
    the keys come back as ``unet.<module>.lora.down.weight`` and ``unet.<module>.alpha``."""
    try:
        state, alphas = type(pipe).lora_state_dict(dict(kohya), unet_config=pipe.unet.config)
    except (ValueError, KeyError, IndexError) as exc:
        log.info("diffusers could not rename kohya keys: %s", exc)
        return dict(kohya)
    renamed = dict(state)
    for key, value in (alphas or {}).items():
        # diffusers keys an attention projection's alpha by its old processor name
        # (``...attn1.processor.to_k_lora.down.weight.alpha``): back to the module's own name.
        old = _OLD_PROCESSOR.match(key.removesuffix(".alpha"))
        if old is not None:
            stem, projection, _ = old.groups()
            key = f"{stem}.{_OLD_UNET[projection]}.alpha"
        renamed[key] = torch.tensor(float(value))
    return renamed


def _names(module: torch.nn.Module) -> dict[str, str]:
    """Module names by kohya's flat spelling (dots turned into underscores) and by themselves."""
    dotted = [name for name, _ in module.named_modules() if name]
    return {name.replace(".", "_"): name for name in dotted} | {name: name for name in dotted}


def _checked(pair: _Pair, module: torch.nn.Module, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair's down and up weights in the shapes peft gives ``module``, the up weight scaled by
    alpha / rank (kohya's scale) so peft's own scale is 1."""
    if pair.down is None or pair.up is None:
        raise BadRequest(f"{label} has {'no down' if pair.down is None else 'no up'} weight: the file is incomplete")
    down, up = pair.down.float(), pair.up.float()
    if isinstance(module, torch.nn.Linear):
        down = down.flatten(1) if down.dim() == 4 and down.shape[2:] == (1, 1) else down
        up = up.flatten(1) if up.dim() == 4 and up.shape[2:] == (1, 1) else up
        wanted_down: tuple[int, ...] = (down.shape[0], module.in_features)
        wanted_up: tuple[int, ...] = (module.out_features, down.shape[0])
    elif isinstance(module, torch.nn.Conv2d):
        if down.dim() == 2:
            down = down[:, :, None, None]
        if up.dim() == 2:
            up = up[:, :, None, None]
        wanted_down = (down.shape[0], module.in_channels // module.groups, *module.kernel_size)
        wanted_up = (module.out_channels, down.shape[0], 1, 1)
    else:
        raise BadRequest(f"{label} is a {type(module).__name__}: LoRA changes linear and convolution layers only")
    if tuple(down.shape) != wanted_down or tuple(up.shape) != wanted_up:
        raise BadRequest(
            f"{label}: the file's shapes {tuple(pair.down.shape)} and {tuple(pair.up.shape)} do not fit this "
            "model's layer; the LoRA was made for another model"
        )
    rank = down.shape[0]
    if pair.alpha is not None and pair.alpha > 0:
        up = up * (pair.alpha / rank)
    return down, up


# -- applying and removing -----------------------------------------------------------------
def _parts(pipe: Any) -> dict[str, torch.nn.Module]:
    """The pipeline's parts LoRA can change, by the names diffusers' loader uses."""
    names = getattr(type(pipe), "_lora_loadable_modules", ["unet", *TEXT_ENCODERS])
    return {name: module for name in names if isinstance(module := getattr(pipe, name, None), torch.nn.Module)}


def _base(module: torch.nn.Module) -> torch.nn.Module:
    """The layer itself when another adapter (peft) has wrapped it."""
    get_base_layer = getattr(module, "get_base_layer", None)
    return get_base_layer() if callable(get_base_layer) else module


def _weight(part: torch.nn.Module, module_name: str) -> torch.nn.Parameter:
    weight = _base(part.get_submodule(module_name)).weight
    assert isinstance(weight, torch.nn.Parameter)  # lora_layers let only linear and conv layers through
    return weight


def _offloaded(pipe: Any) -> bool:
    """Whether accelerate's offload hooks manage the pipeline's weights (they move or replace the
    weight tensors themselves, so swapping them under the hooks is not safe)."""
    return any(hasattr(module, "_hf_hook") for module in _parts(pipe).values())


@contextmanager
def _fused(pipe: Any, found: list[tuple[LoraTag, Layers]], record: AppliedLoras) -> Iterator[None]:
    """Each changed layer computes with a new weight tensor ``W + sum(weight * up @ down)`` for the
    block; the original tensor object is put back afterwards, untouched, so the restore is exact."""
    parts = _parts(pipe)
    fused: dict[tuple[str, str], tuple[torch.nn.Parameter, torch.Tensor]] = {}
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for tag, layers in found:
                for (part, module_name), (down, up) in layers.items():
                    scale = tag.unet_weight if part == "unet" else tag.te_weight
                    if scale == 0:
                        continue
                    weight = _weight(parts[part], module_name)
                    up_matrix = up.to(weight.device, weight.dtype).flatten(1)
                    down_matrix = down.to(weight.device, weight.dtype).flatten(1)  # a LoCon k x k conv: (rank, in*k*k)
                    if (part, module_name) in fused:  # a second LoRA on this layer: adds into our own tensor
                        fused[part, module_name][1].addmm_(up_matrix, down_matrix, alpha=scale)
                    else:  # one pass that writes a new tensor and only reads the original
                        new = torch.addmm(weight.data.flatten(1), up_matrix, down_matrix, alpha=scale)
                        fused[part, module_name] = weight, new
            for weight, new in fused.values():
                originals.append((weight, weight.data))
                weight.data = new.view(weight.shape)
        fused.clear()
        yield
    finally:
        removed = time.perf_counter()
        for weight, original in reversed(originals):
            weight.data = original
        record.remove_seconds = time.perf_counter() - removed


@contextmanager
def _adapters(pipe: Any, found: list[tuple[LoraTag, Layers]], record: AppliedLoras) -> Iterator[None]:
    """diffusers' and peft's way: one adapter per file, weights per part, unwrapped afterwards."""
    if not hasattr(pipe, "set_adapters"):
        raise BadRequest(f"LoRA cannot be applied to a {type(pipe).__name__} pipeline")
    parts = _parts(pipe)
    _clear_leftovers(parts)
    before = {name: _snapshot(module) for name, module in parts.items()}
    names: list[str] = []
    weights: list[dict[str, float]] = []
    try:
        states = [peft_state_dict(pipe, layers) for _, layers in found]
        for index, ((tag, _), state) in enumerate(zip(found, states, strict=True)):
            if not state:
                continue
            adapter = f"{ADAPTER_PREFIX}{index}"
            with warnings.catch_warnings():
                # peft warns whenever a second adapter joins a model; several per job is the point here.
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                touched = _load(pipe, state, adapter)
            names.append(adapter)
            # Only the parts an adapter changes are named: naming others makes diffusers warn.
            weights.append({part: tag.unet_weight if part == "unet" else tag.te_weight for part in touched})
        if names:
            pipe.set_adapters(names, adapter_weights=weights)
        yield
    finally:
        removed = time.perf_counter()
        _remove(parts, before, names)
        record.remove_seconds = time.perf_counter() - removed


def _load(pipe: Any, state: dict[str, torch.Tensor], adapter: str) -> list[str]:
    """Load one adapter into the parts its entries name; returns those parts. Loads part by part
    (not ``load_lora_weights``) so a part the file leaves alone is not told it got nothing."""
    cls = type(pipe)
    touched = sorted({key.split(".", 1)[0] for key in state})
    with building_modules():  # peft builds the adapter's layers: a load meanwhile would leave them empty
        _load_parts(cls, pipe, state, adapter, touched)
    return touched


def _load_parts(cls: Any, pipe: Any, state: dict[str, torch.Tensor], adapter: str, touched: list[str]) -> None:
    from diffusers.loaders.lora_pipeline import _LOW_CPU_MEM_USAGE_DEFAULT_LORA

    for part in touched:
        if part == "unet":
            cls.load_lora_into_unet(
                state, network_alphas=None, unet=pipe.unet, adapter_name=adapter, _pipeline=pipe,
                low_cpu_mem_usage=_LOW_CPU_MEM_USAGE_DEFAULT_LORA,
            )  # fmt: skip
        else:
            cls.load_lora_into_text_encoder(
                state, network_alphas=None, text_encoder=getattr(pipe, part), prefix=part, adapter_name=adapter,
                _pipeline=pipe, low_cpu_mem_usage=_LOW_CPU_MEM_USAGE_DEFAULT_LORA,
            )  # fmt: skip


def _snapshot(module: torch.nn.Module) -> tuple[bool, set[str]]:
    """Whether ``module`` already had peft layers, and its attribute names (peft adds some)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(child, BaseTunerLayer) for child in module.modules()), set(vars(module))


def _remove(parts: dict[str, torch.nn.Module], before: dict[str, tuple[bool, set[str]]], adapters: list[str]) -> None:
    """Take this job's adapters off. A part that had no peft layers before gets every wrapper
    unwrapped (the original modules back in place); one that had some (another feature's adapter)
    loses this job's adapters only."""
    from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in parts.items():
        had_peft, attributes = before[name]
        if not any(isinstance(child, BaseTunerLayer) for child in module.modules()):
            continue
        if had_peft:
            ours = [adapter for adapter in adapters if adapter in getattr(module, "peft_config", {})]
            if ours:
                _delete_adapters(module, ours)
            continue
        if hasattr(module, "unload_lora"):
            module.unload_lora()  # type: ignore[operator]
        else:
            _remove_text_encoder_monkey_patch(module)
        # peft and diffusers leave marker attributes behind (peft_config, _hf_peft_config_loaded);
        # dropping them lets the class defaults show through, as before the job.
        for attribute in set(vars(module)) - attributes:
            if "peft" in attribute or "adapter" in attribute:
                delattr(module, attribute)


def _clear_leftovers(parts: dict[str, torch.nn.Module]) -> None:
    """Adapters of an earlier job whose removal failed half-way: gone before this job loads its own
    under the same names."""
    for name, module in parts.items():
        stale = [adapter for adapter in getattr(module, "peft_config", {}) if adapter.startswith(ADAPTER_PREFIX)]
        if stale:
            log.warning("removing LoRA adapters an earlier job left on %s: %s", name, ", ".join(stale))
            _delete_adapters(module, stale)


def _delete_adapters(module: torch.nn.Module, adapters: list[str]) -> None:
    from diffusers.utils.peft_utils import delete_adapter_layers

    if hasattr(module, "delete_adapters"):
        module.delete_adapters(adapters)  # type: ignore[operator]
    else:
        for adapter in adapters:
            delete_adapter_layers(module, adapter)
