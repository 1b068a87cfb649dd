"""One job's reference, as the engine uses it: resolved before the job queues, installed around the
pipeline call on the device, and gone afterwards.

Resolving (``with_reference``) runs in the caller's thread: a link may take seconds to fetch and a
refused link or an unknown name should fail at once, before the job waits for the GPU. Installing
(``guided``) picks reference-only/AdaIN hooks or an IP-Adapter and leaves the model exactly as it
was loaded when the call ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import BadRequest
from ..outputs import OutputStore
from ..requests import Img2Img, Request
from . import ip_adapter
from .links import UrlPolicy
from .reference import Reference, reference_installed
from .sources import ReferenceStore, resolve_reference


def with_reference(
    request: Request, outputs: OutputStore, store: ReferenceStore, policy: UrlPolicy
) -> tuple[Request, list[str]]:
    """``request`` with the prompt the model reads (its ``{image}`` tag taken out) and the picture the
    reference is, kept in ``store`` under the hash the infotext records; and the note that says which
    reference was used. A request without tag, picture or hash comes back as it is."""
    picture = request.reference_image
    if picture is None and request.reference_hash:
        picture = store.get(request.reference_hash)
    prompt, resolved = resolve_reference(request.prompt, picture, outputs=outputs, store=store, policy=policy)
    if resolved is None:
        return request, []
    digest = store.put(resolved.image)
    label = resolved.label
    if resolved.kind == "tab" and request.reference_image is None:
        label = f"kept reference {digest}"
    changed = request.replace(prompt=prompt, reference_image=resolved.image, reference_hash=digest)
    return changed, [f"reference: {label}"]


def best_mode(family: str, models_dir: Path) -> str:
    """What "auto" means for a model: an IP-Adapter made for its family when one is installed (it
    follows a reference's content more closely), else reference-only, which needs no weights."""
    return "ip-adapter" if ip_adapter.find_ip_adapter(family, models_dir) is not None else "reference-only"


@contextmanager
def guided(
    pipe: Any, family: str, request: Request, call: dict[str, Any], models_dir: Path, steps: int | None = None
) -> Iterator[None]:
    """Guide the pipeline calls made in the block by the request's reference; ``call`` (the pipeline's
    keyword arguments, with the size drawn) gains what an IP-Adapter needs. ``steps``: the denoising
    steps the call runs, when not the request's own (the hires fix's second pass). Without a reference
    nothing is touched."""
    if request.reference_image is None:
        yield
        return
    if request.reference_mode == "ip-adapter":
        files = ip_adapter.find_ip_adapter(family, models_dir)
        if files is None:
            raise BadRequest(ip_adapter.missing_message(family, models_dir))
        with ip_adapter.ip_adapter_installed(pipe, files, request.reference_image, request.reference_strength) as extra:
            call.update(extra)
            yield
        return
    reference = Reference(
        image=request.reference_image,
        mode=request.reference_mode,
        strength=request.reference_strength,
        fidelity=request.reference_fidelity,
        start=request.reference_start,
        end=request.reference_end,
    )
    with reference_installed(
        pipe,
        reference,
        width=call["width"],
        height=call["height"],
        do_classifier_free_guidance=request.cfg_scale > 1,
        total_steps=max(1, _steps(request) if steps is None else steps),
    ):
        yield


def _steps(request: Request) -> int:
    """The denoising steps the pipeline runs: image-to-image skips the first (1 - strength) share (a
    text-to-image request's strength is its hires pass's, not this call's)."""
    return int(request.steps * request.denoising_strength) if isinstance(request, Img2Img) else request.steps
