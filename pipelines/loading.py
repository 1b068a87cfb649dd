"""Building diffusers pipelines from every kind of model source Atelier accepts.

All loaders return a text-to-image (or, for inpainting checkpoints, an inpainting) pipeline on
the CPU in the requested dtype; the manager moves it to the device. Nothing here touches the
network except ``load_hub``, and that one fails fast when the hub cannot be reached.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoints import PICKLE_SUFFIXES, Family, detect_family, read_header, refuse_pickle
from .errors import ModelRefused, ModelUnavailable

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).parent / "configs"
_CLIP_VOCAB = Path(__file__).parent / "assets" / "clip_bpe_simple_vocab_16e6.txt.gz"
DEMO_FOLDER = Path(__file__).parent / "assets" / "demo-model"  # the trained built-in model
DEMO_SEED = 20241125
# diffusers and transformers change process-wide state while they build a model: accelerate's
# init_empty_weights patches nn.Module.register_parameter (a module built meanwhile on any thread gets
# empty "meta" weights, and two overlapping patches leave it patched for good), their no-init helpers
# patch torch.nn.init, the default dtype is switched, and module init draws from torch's one global
# generator. Their lazy modules are not safe to resolve from two threads either. So every import of
# them and every model build in this process takes turns here: the lock is as wide as the state.
_LIBRARIES = threading.RLock()
_IMPORTED = threading.Event()  # set once import_libraries has run: later calls cost nothing
# (done_bytes, total_bytes, what) while a model downloads.
DownloadProgress = Callable[[int, int, str], None]


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> Any:
    """CLIP's BPE tokenizer built from the vocabulary the project ships (no hub download).

    SD 1.x and SDXL pad with ``<|endoftext|>``; SD 2.x (OpenCLIP) pads with ``!``.
    """
    import_libraries()
    from transformers.models.clip.tokenization_clip import CLIPTokenizer

    lines = gzip.decompress(_CLIP_VOCAB.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = _bytes_to_unicode()
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    # transformers annotates ``merges`` as strings, but the tokenizers backend it hands them to takes
    # only (left, right) pairs ("'str' object is not an instance of 'tuple'").
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)  # type: ignore[arg-type]


def building_modules() -> threading.RLock:
    """The turn every model build takes (``with loading.building_modules(): ...``): hold it while
    making torch modules (peft adapters, a model from a config) on a thread that is not the engine's,
    or a load running meanwhile can leave them with empty "meta" weights."""
    return _LIBRARIES


def import_libraries() -> None:
    """Import what loading and generating use from diffusers and transformers, on this thread and
    under the library lock, so no two threads ever resolve their lazy modules at once. The engine
    runs it first thing on its device thread; later calls return at once."""
    if _IMPORTED.is_set():
        return
    with _LIBRARIES:
        if _IMPORTED.is_set():
            return
        import diffusers
        import transformers

        from .samplers import SAMPLERS

        _route_library_logs(diffusers, transformers)

        # transformers first: diffusers' loaders import PreTrainedModel from it.
        for name in ("PreTrainedModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer"):
            getattr(transformers, name)
        schedulers = [sampler.scheduler_class for sampler in SAMPLERS]
        for name in (*_PIPELINE_CLASSES, "UNet2DConditionModel", "AutoencoderKL", "DDPMScheduler", *schedulers):
            getattr(diffusers, name)
        import diffusers.loaders.peft  # from_pretrained reaches it lazily

        _IMPORTED.set()


def _route_library_logs(*libraries: Any) -> None:
    """diffusers' and transformers' messages go through ``logging`` (the app's format and levels)
    instead of their own stderr handlers, without progress bars for loads: a 20 MB local load's bar
    is noise (downloads report their own progress). Their notes that an optional backend such as
    torchvision is missing concern image processors, which only the safety checkers Atelier leaves
    out would use: those are for debugging."""
    for library in libraries:
        library.utils.logging.disable_default_handler()
        library.utils.logging.enable_propagation()
        library.utils.logging.disable_progress_bar()
    logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
    logging.getLogger("diffusers.models.modeling_utils").addFilter(_without_empty_float32_notes)


def _without_empty_float32_notes(record: logging.LogRecord) -> bool:
    """diffusers warns at every ``to(dtype=...)`` that "modules ... should be kept in float32: []"
    even when the list is empty, so each mode view (``from_pipe`` casts to the model's dtype) would
    log two false warnings. Notes with modules named still pass."""
    return "should be kept in float32: []." not in str(record.msg)


# Each family's pipeline class per mode. Named here rather than found through diffusers' AutoPipeline,
# whose lookup tables import every pipeline diffusers has (Kandinsky, ControlNet, ...): a second of
# start-up for classes Atelier never runs.
VIEW_CLASSES = {
    "sd": {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
           "inpaint": "StableDiffusionInpaintPipeline"},
    "sdxl": {"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
             "inpaint": "StableDiffusionXLInpaintPipeline"},
}  # fmt: skip
_PIPELINE_CLASSES = tuple(name for views in VIEW_CLASSES.values() for name in views.values())


def pipeline_class(class_name: str, source: str) -> Any:
    """The class a diffusers folder is loaded with: its family's text-to-image pipeline, or the
    inpainting one for inpainting models. Other kinds of model are refused by name."""
    import diffusers

    family = "sdxl" if class_name.startswith("StableDiffusionXL") else "sd"
    if class_name not in {name for views in VIEW_CLASSES.values() for name in views.values()}:
        raise ModelRefused(
            source,
            f"it is a {class_name or 'model of unknown kind'}; Atelier runs Stable Diffusion 1.x, 2.x and XL models",
        )
    return getattr(diffusers, VIEW_CLASSES[family]["inpaint" if "Inpaint" in class_name else "txt2img"])


def check_complete(pipe: Any, name: str) -> Any:
    """``pipe`` if every weight it holds has data, else ``ModelUnavailable`` naming the empty ones:
    a model with "meta" weights would only fail later, at generate or save time, with a riddle."""
    empty = [
        f"{component}.{weight}"
        for component, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
        for weight, tensor in (*module.named_parameters(), *module.named_buffers())
        if tensor.is_meta
    ]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ModelUnavailable(name, f"it loaded incompletely: {len(empty)} weights have no data ({shown})")
    return pipe


def _bytes_to_unicode() -> list[str]:
    """CLIP's reversible byte -> printable character table, in CLIP's order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def build_untrained_demo(dtype: torch.dtype = torch.float32) -> Any:
    """The built-in demo's architecture with random weights fixed by a seed: a model that runs
    every code path of a real one in a fraction of a second, for tests and benchmarks. It draws
    noise; ``builtin:demo`` uses trained weights of this architecture once they are installed."""
    from .demo_model import untrained

    # Module init draws from torch's one global generator: two builds at once (a server warming up
    # beside a script) would interleave their draws and make different weights. Take turns.
    import_libraries()
    with _LIBRARIES, torch.random.fork_rng(devices=[]):
        pipe = untrained(DEMO_SEED)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def load_builtin_demo(dtype: torch.dtype) -> Any:
    """The demo model: the weights trained by ``pipelines.demo_model`` when they are installed,
    else the same architecture with seeded random weights (it runs everything, but draws noise)."""
    if demo_is_trained():
        return load_folder(DEMO_FOLDER, dtype)
    log.info("no trained demo weights in %s: the built-in demo draws noise", DEMO_FOLDER)
    return build_untrained_demo(dtype)


def demo_is_trained() -> bool:
    return (DEMO_FOLDER / "model_index.json").exists()


_FAMILY_SIZES = {"demo": 64, "sd1": 512, "sd2": 768, "sdxl": 1024}


def native_size(entry: Any) -> int:
    """Native image side of a catalog entry, read from configs or the checkpoint header only."""
    if entry.native_size:
        return int(entry.native_size)
    if entry.source == "single_file":
        try:
            return _FAMILY_SIZES[detect_family(read_header(Path(entry.location)), entry.name).name]
        except (ModelUnavailable, ModelRefused):
            return 512
    folder = CONFIGS_DIR / "demo" if entry.source == "builtin" else Path(entry.location)
    if entry.source == "hub":
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(entry.location, allow_patterns=["*/config.json"], local_files_only=True))
        except Exception:  # not cached (any hub error): SD 1.x is the common case
            return 512
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return 512
    return int(unet.get("sample_size", 64)) * 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)


def load_folder(path: Path, dtype: torch.dtype) -> Any:
    """A diffusers-format folder (``model_index.json`` at its top), safetensors weights only."""
    import_libraries()
    if not (path / "model_index.json").is_file():
        raise ModelUnavailable(path.name, f"{path} has no model_index.json, so it is not a diffusers model folder")
    pickles = [p.name for p in path.glob("*/*") if p.suffix in PICKLE_SUFFIXES]
    if pickles and not list(path.glob("unet/*.safetensors")):
        raise ModelRefused(path.name, f"this folder only has pickle weights ({', '.join(pickles)}); use safetensors")
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(path.name, f"its model_index.json cannot be read ({exc})") from exc
    loader = pipeline_class(str(index.get("_class_name", "")), path.name)
    try:
        with _LIBRARIES:
            pipe = loader.from_pretrained(
                path, dtype=dtype, use_safetensors=True, local_files_only=True, **_without_safety_checker(index)
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelUnavailable(path.name, f"loading the folder failed: {exc}") from exc
    return check_complete(pipe, path.name)


def _without_safety_checker(index: dict[str, Any]) -> dict[str, Any]:
    """Loading arguments that leave out the NSFW checker of pipelines that have one. Saying it is
    not required too: SD pipelines otherwise warn at every construction, each mode view included."""
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}


def load_single_file(path: Path, dtype: torch.dtype) -> tuple[Any, Family]:
    """An A1111-style single ``.safetensors`` checkpoint, with the config shipped for its family."""
    import_libraries()
    import diffusers

    refuse_pickle(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelRefused(path.name, "only .safetensors checkpoints can be loaded")
    family = detect_family(read_header(path), path.name)
    classes = {
        (False, False): "StableDiffusionPipeline",
        (False, True): "StableDiffusionInpaintPipeline",
        (True, False): "StableDiffusionXLPipeline",
        (True, True): "StableDiffusionXLInpaintPipeline",
    }
    pipeline_class = getattr(diffusers, classes[(family.name == "sdxl", family.inpainting)])
    tokenizers = {"tokenizer": clip_tokenizer("!" if family.name == "sd2" else "<|endoftext|>")}
    if family.name == "sdxl":
        tokenizers["tokenizer_2"] = clip_tokenizer("!")
    with tempfile.TemporaryDirectory(prefix="atelier-config-") as config:
        _write_family_config(family, pipeline_class.__name__, Path(config))
        index = json.loads((Path(config) / "model_index.json").read_text())
        try:
            with _LIBRARIES:
                pipe = pipeline_class.from_single_file(
                    str(path),
                    config=config,
                    local_files_only=True,
                    dtype=dtype,
                    disable_mmap=True,  # weights in RAM: no open file handle, aligned tensors
                    **tokenizers,
                    **_without_safety_checker(index),
                )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelUnavailable(path.name, f"the {family.label} checkpoint could not be read: {exc}") from exc
    return check_complete(pipe, path.name), family


def _write_family_config(family: Family, class_name: str, target: Path) -> None:
    """Copy the shipped config folder; inpainting variants differ only in the UNet's input channels."""
    shutil.copytree(CONFIGS_DIR / family.name, target, dirs_exist_ok=True)
    _patch_json(target / "model_index.json", _class_name=class_name)
    if family.inpainting:
        _patch_json(target / "unet" / "config.json", in_channels=9)
        if family.name == "sd2":  # SD 2 inpainting predicts noise, unlike the 768-v base config
            _patch_json(target / "scheduler" / "scheduler_config.json", prediction_type="epsilon")


def _patch_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def load_hub(repo_id: str, dtype: torch.dtype, progress: DownloadProgress | None = None) -> Any:
    """A diffusers-format repo from the Hugging Face hub, through the standard HF cache.

    A complete cached copy loads offline. Otherwise the files are downloaded (only the weights this
    dtype needs) with progress reported; an unreachable hub or ``HF_HUB_OFFLINE`` raises
    ``ModelUnavailable`` at once instead of hanging.
    """
    folder = fetch_hub(repo_id, dtype, progress)  # outside the library lock: a download may take an hour
    import_libraries()
    variant = "fp16" if dtype == torch.float16 and list(Path(folder).glob("unet/*.fp16.safetensors")) else None
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
        loader = pipeline_class(str(index.get("_class_name", "")), repo_id)
        with _LIBRARIES:
            pipe = loader.from_pretrained(
                folder, dtype=dtype, variant=variant, use_safetensors=True, local_files_only=True,
                **_without_safety_checker(index),
            )  # fmt: skip
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(repo_id, f"the downloaded files could not be loaded: {exc}") from exc
    return check_complete(pipe, repo_id)


def fetch_hub(repo_id: str, dtype: torch.dtype, progress: DownloadProgress | None = None) -> str:
    """The local folder of a hub repo, downloading what is missing (only what ``dtype`` needs)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = _hub_patterns(dtype)
    try:
        cached = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
        if snapshot_complete(Path(cached)):
            return cached
    except LocalEntryNotFoundError:
        pass
    hint = "put a .safetensors checkpoint or a diffusers folder in the models folder, or connect to the internet"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelUnavailable(repo_id, f"it is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {hint}")
    try:
        files = _hub_files(repo_id, patterns)
        total = sum(size for _, size in files)
        done = 0
        for name, size in files:
            if progress:
                progress(done, total, name)
            _download_file(repo_id, name)
            done += size
        if progress:
            progress(total, total, "done")
        folder = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
        if not snapshot_complete(Path(folder)):
            raise ModelUnavailable(repo_id, "the download finished but files are missing; try again")
        return folder
    except Exception as exc:  # the hub client raises many network error types; all mean "not reachable"
        if isinstance(exc, ModelUnavailable):
            raise
        raise ModelUnavailable(repo_id, f"downloading from the Hugging Face hub failed ({exc}); {hint}") from exc


_WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")


def snapshot_complete(folder: Path) -> bool:
    """Every component folder of a cached repo is there, with weights where weights belong.

    huggingface_hub links files into a snapshot one at a time, so a dropped download leaves a
    snapshot that looks cached but cannot load.
    """
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        if name in ("safety_checker", "feature_extractor"):
            continue
        if not (folder / name).is_dir():
            return False
        if name in _WEIGHTED and not any((folder / name).glob("*.safetensors")):
            return False
    return True


def _hub_patterns(dtype: torch.dtype) -> list[str]:
    weights = "*.fp16.safetensors" if dtype == torch.float16 else "*.safetensors"
    return ["model_index.json", "*/*.json", "*/*.txt", f"*/{weights}"]


def _hub_files(repo_id: str, patterns: list[str]) -> list[tuple[str, int]]:
    """The files to fetch, with sizes; falls back to full-precision weights when a repo has no fp16 ones."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, files_metadata=True, timeout=10)
    siblings = [(s.rfilename, s.size or 0) for s in info.siblings or []]
    skip = ("safety_checker/", "feature_extractor/")

    def wanted(name: str, pats: list[str]) -> bool:
        return any(fnmatch(name, p) for p in pats) and not name.startswith(skip)

    files = [(n, s) for n, s in siblings if wanted(n, patterns)]
    if not any(n.endswith(".safetensors") for n, _ in files):
        full = [p.replace("*.fp16.safetensors", "*.safetensors") for p in patterns]
        files = [(n, s) for n, s in siblings if wanted(n, full) and ".fp16." not in n and "non_ema" not in n]
    if not any(n.endswith(".safetensors") for n, _ in files):
        raise ModelRefused(repo_id, "this repo has no diffusers-format safetensors weights")
    return files


def _download_file(repo_id: str, filename: str) -> None:
    from huggingface_hub import hf_hub_download

    hf_hub_download(repo_id, filename, etag_timeout=10)
