"""The outputs folder: where saves land, what they carry, that nothing is ever overwritten or lost,
and that the gallery lists, filters, deletes and restores only what lives inside the folder."""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pipelines import outputs
from pipelines.engine import Engine
from pipelines.outputs import TRASH, OutputStore, image_metadata, read_metadata
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings

FIELDS = {"prompt": "a red fox", "negative_prompt": "blurry", "steps": 2, "cfg_scale": 7.0, "seed": 5}
INFOTEXT = "a red fox\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64"


def _infotext(prompt: str, negative: str = "", seed: int = 1) -> str:
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(f"Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: {seed}, Size: 64x64")
    return "\n".join(lines)


def _noise(size: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".writing-*")] if root.exists() else []


def _today_folders() -> set[str]:
    return {time.strftime("%Y-%m-%d")}


class _Broken:
    """An image whose encoding fails part-way, like a full disk."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def save(self, file, *args, **kwargs) -> None:
        file.write(b"\x89PNG partial")
        raise self.exc

    def convert(self, mode: str) -> _Broken:
        return self

    def copy(self) -> _Broken:
        return self


# -- save: place, name, metadata, pixels ------------------------------------------------------


def test_save_writes_numbered_png_in_a_dated_folder_with_exact_metadata_and_pixels(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out")
    image = _noise()
    days = _today_folders()
    path = store.save(image, INFOTEXT, FIELDS, seed=5)
    days |= _today_folders()  # a save across midnight may land in either day

    assert path.parent.parent == tmp_path / "out"
    assert path.parent.name in days
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.parent.name)
    assert path.name == "00000-5.png"
    assert _all_files(tmp_path / "out") == [path]

    with Image.open(path) as saved:
        assert saved.format == "PNG"
        assert saved.text["parameters"] == INFOTEXT
        assert json.loads(saved.text["atelier"]) == FIELDS
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(image))
    assert read_metadata(path) == {"parameters": INFOTEXT, "atelier": FIELDS}

    second = store.save(_noise(seed=1), _infotext("x", seed=4294967295), {"seed": 4294967295}, seed=4294967295)
    assert second.parent == path.parent
    assert second.name == "00001-4294967295.png"


def test_png_with_non_latin_prompt_round_trips(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    text = _infotext("猫 café, ¿qué? — «ёж» 🦊", negative="ぼやけた")
    fields = {"prompt": "猫 café, ¿qué? — «ёж» 🦊", "negative_prompt": "ぼやけた", "path": Path("x/y")}
    path = store.save(_noise(), text, fields, seed=3)
    metadata = read_metadata(path)
    assert metadata["parameters"] == text
    assert metadata["atelier"] == {**fields, "path": "x/y"}
    items, total = store.page("CAFÉ")
    assert total == 1
    assert items[0].path == path
    assert items[0].prompt == "猫 café, ¿qué? — «ёж» 🦊"


def test_a_picture_another_thread_is_saving_keeps_its_own_infotext(tmp_path: Path) -> None:
    # PIL keeps a save's options on the picture while it writes, and they win over the next save's: a
    # live frame kept while the page encoded it (no infotext, fast) lost its parameters.
    picture = _noise()
    picture.encoderinfo = {"pnginfo": PngImagePlugin.PngInfo(), "compress_level": 1}  # a save under way
    path = OutputStore(tmp_path).save(picture, _infotext("a kept frame"), {"prompt": "a kept frame"}, seed=4)
    metadata = read_metadata(path)
    assert metadata["parameters"] == _infotext("a kept frame")
    assert metadata["atelier"] == {"prompt": "a kept frame"}


@pytest.mark.parametrize(
    ("image_format", "suffix", "pil_format"), [("jpeg", ".jpg", "JPEG"), ("webp", ".webp", "WEBP")]
)
def test_jpeg_and_webp_keep_the_infotext_in_exif_user_comment(
    tmp_path: Path, image_format: str, suffix: str, pil_format: str
) -> None:
    store = OutputStore(tmp_path, image_format)
    text = _infotext("猫 café at night", negative="low quality", seed=9)
    rgba = _noise().convert("RGBA")  # JPEG has no alpha: the store must convert, not fail
    path = store.save(rgba, text, {"prompt": "猫 café at night"}, seed=9)
    assert path.suffix == suffix
    assert path.name == f"00000-9{suffix}"
    with Image.open(path) as saved:
        assert saved.format == pil_format
        assert saved.size == (32, 32)
        comment = saved.getexif().get_ifd(0x8769)[0x9286]
    assert comment.startswith(b"UNICODE\0")  # A1111's readers look for this header
    assert read_metadata(path)["parameters"] == text
    items, total = store.page("猫 CAFÉ")
    assert total == 1
    assert items[0].path == path


def test_unknown_format_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out", "gif")
    with pytest.raises(ValueError, match="image format"):
        store.save(_noise(), INFOTEXT, FIELDS, seed=1)
    assert not (tmp_path / "out").exists()


# -- never overwrite --------------------------------------------------------------------------


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    folder = tmp_path / time.strftime("%Y-%m-%d")
    folder.mkdir()
    existing = folder / "00000-5.png"
    existing.write_bytes(b"someone else's picture")
    path = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    assert path != existing
    assert path.name == "00001-5.png"
    assert existing.read_bytes() == b"someone else's picture"


def test_a_name_taken_after_numbering_is_skipped_not_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process may take the name between numbering and writing: the hard link must refuse it."""
    store = OutputStore(tmp_path)
    folder = tmp_path / time.strftime("%Y-%m-%d")
    folder.mkdir()
    for name in ("00000-5.png", "00001-5.png"):
        (folder / name).write_bytes(name.encode())
    monkeypatch.setattr(OutputStore, "_next_number", lambda self, folder: 0)  # a stale view of the folder
    path = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    assert path.name == "00002-5.png"
    assert (folder / "00000-5.png").read_bytes() == b"00000-5.png"
    assert (folder / "00001-5.png").read_bytes() == b"00001-5.png"
    assert read_metadata(path)["parameters"] == INFOTEXT
    assert _temp_files(tmp_path) == []


@pytest.mark.parametrize("store_count", [1, 2], ids=["one-store", "two-stores"])
def test_concurrent_saves_lose_nothing(tmp_path: Path, store_count: int) -> None:
    """4 threads x 10 saves. Two stores on one folder stand in for two processes: only the hard link
    keeps them apart, so they may share numbers (with different seeds) but never a file."""
    stores = [OutputStore(tmp_path) for _ in range(store_count)]
    saved: list[Path] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)
    lock = threading.Lock()

    def work(worker: int) -> None:
        store = stores[worker % store_count]
        start.wait()
        for i in range(10):
            seed = worker * 100 + i
            try:
                path = store.save(_noise(8, seed), _infotext(f"w{worker} i{i}", seed=seed), {"seed": seed}, seed)
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                saved.append(path)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(saved) == len(set(saved)) == 40
    assert sorted(saved) == _all_files(tmp_path)
    assert _temp_files(tmp_path) == []
    for path in saved:
        seed = int(path.stem.split("-")[1])
        assert read_metadata(path)["parameters"] == _infotext(f"w{seed // 100} i{seed % 100}", seed=seed)
    if store_count == 1:  # within one process numbering is serialised: 0..39, no gaps, no repeats
        assert sorted(int(path.name[:5]) for path in saved) == list(range(40))
    assert OutputStore(tmp_path).page(limit=100)[1] == 40


# -- failing writes -----------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("encoder crashed")])
def test_a_failing_encode_leaves_no_file_behind(tmp_path: Path, exc: BaseException) -> None:
    store = OutputStore(tmp_path)
    with pytest.raises(type(exc)):
        store.save(_Broken(exc), INFOTEXT, FIELDS, seed=5)  # type: ignore[arg-type]
    assert _all_files(tmp_path) == []
    assert store.page() == ([], 0)
    assert store.save(_noise(), INFOTEXT, FIELDS, seed=5).name == "00000-5.png"  # and the store still works


def test_without_hard_links_saves_still_land_and_never_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")  # exFAT and some network shares

    monkeypatch.setattr(outputs.os, "link", refuse)
    store = OutputStore(tmp_path)
    first = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    first_bytes = first.read_bytes()
    second = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    assert first != second and first.read_bytes() == first_bytes
    assert read_metadata(second)["parameters"] == INFOTEXT
    assert sorted(_all_files(tmp_path)) == sorted([first, second])  # no temp file left behind


def test_an_unwritable_root_raises_oserror_and_writes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"just a file")
    store = OutputStore(blocker / "outputs")  # mkdir under a regular file fails, even for root
    with pytest.raises(OSError):
        store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    assert blocker.read_bytes() == b"just a file"
    assert _all_files(tmp_path) == [blocker]
    assert store.page() == ([], 0)


# -- listing ------------------------------------------------------------------------------------


def _touch(path: Path, mtime: float) -> None:
    os.utime(path, (mtime, mtime))


def test_page_is_newest_first_with_paging_and_a_total(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    paths = [store.save(_noise(8, i), _infotext(f"picture {i}", seed=i), {"seed": i}, seed=i) for i in range(5)]
    # Modification time, not the number in the name, decides the order.
    order = [paths[2], paths[0], paths[4], paths[1], paths[3]]
    base = time.time() - 1000
    for age, path in enumerate(order):
        _touch(path, base - age * 10)

    items, total = store.page()
    assert total == 5
    assert [item.path for item in items] == order
    assert [item.prompt for item in items] == ["picture 2", "picture 0", "picture 4", "picture 1", "picture 3"]
    assert all(a.modified > b.modified for a, b in itertools.pairwise(items))

    first, total_first = store.page(offset=0, limit=2)
    second, total_second = store.page(offset=2, limit=2)
    third, _ = store.page(offset=4, limit=2)
    assert total_first == total_second == 5
    assert [i.path for i in first + second + third] == order
    assert store.page(offset=10, limit=2) == ([], 5)

    _touch(paths[3], base + 500)  # touching a file moves it to the front
    assert store.page(limit=1)[0][0].path == paths[3]


def test_page_filter_matches_the_prompt_only_ignoring_case(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    fox = store.save(_noise(8, 1), _infotext("A Red FOX in snow", negative="blurry cat", seed=1), {}, seed=1)
    cat = store.save(_noise(8, 2), _infotext("a sleepy cat\non two lines", negative="ugly fox", seed=2), {}, seed=2)
    store.save(_noise(8, 3), _infotext("a lighthouse", seed=3), {}, seed=3)

    assert [i.path for i in store.page("red fox")[0]] == [fox]
    assert [i.path for i in store.page("  RED fox ")[0]] == [fox]
    assert [i.path for i in store.page("CAT")[0]] == [cat]  # "cat" in the fox's negative prompt does not count
    assert [i.path for i in store.page("two lines")[0]] == [cat]
    assert store.page("blurry") == ([], 0)  # only in a negative prompt
    assert store.page("ugly") == ([], 0)
    assert store.page("DPM++") == ([], 0)  # only in the parameter line
    assert store.page("Steps") == ([], 0)
    assert store.page("Negative prompt") == ([], 0)
    assert store.page("zebra") == ([], 0)
    assert store.page("")[1] == store.page("   ")[1] == 3


def test_page_skips_temp_files_trash_and_other_files(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    kept = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    gone = store.save(_noise(seed=1), INFOTEXT, FIELDS, seed=6)
    store.delete(gone)
    shutil.copy(kept, kept.parent / ".writing-abc123.png")  # a crashed save's leftover
    (kept.parent / "notes.txt").write_text("not an image")
    (tmp_path / ".thumbnails").mkdir()
    shutil.copy(kept, tmp_path / ".thumbnails" / "00000-5.png")

    items, total = store.page()
    assert total == 1
    assert [i.path for i in items] == [kept]
    assert store.page("red fox")[1] == 1


def test_every_listed_item_is_inside_the_folder(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out")
    inside = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    private = tmp_path / "private.png"
    _noise(seed=1).save(private)
    (inside.parent / "00005-1.png").symlink_to(private)
    items, total = store.page()
    assert all(store.contains(item.path) for item in items)
    assert [i.path for i in items] == [inside]
    assert total == 1


def test_images_from_an_earlier_run_are_listed(tmp_path: Path) -> None:
    earlier = OutputStore(tmp_path / "out")
    png = earlier.save(_noise(), _infotext("an old lighthouse", seed=1), {}, seed=1)
    jpg = OutputStore(tmp_path / "out", "jpeg").save(_noise(), _infotext("an old barn", seed=2), {}, seed=2)
    # A picture copied in by hand from another install, into another day's folder, upper-case suffix.
    elsewhere = OutputStore(tmp_path / "elsewhere").save(_noise(), _infotext("a copied castle", seed=3), {}, seed=3)
    (tmp_path / "out" / "2020-01-01").mkdir()
    copied = tmp_path / "out" / "2020-01-01" / "00007-3.PNG"
    shutil.copy(elsewhere, copied)
    plain = tmp_path / "out" / "2020-01-01" / "scan.png"  # no metadata at all
    _noise().save(plain)
    _touch(copied, time.time() - 3600)
    _touch(plain, time.time() - 7200)

    fresh = OutputStore(tmp_path / "out")  # a new process: nothing cached
    items, total = fresh.page()
    assert total == 4
    assert {i.path for i in items} == {png, jpg, copied, plain}
    assert [i.path for i in items][-2:] == [copied, plain]
    assert [i.path for i in fresh.page("castle")[0]] == [copied]
    assert [i.path for i in fresh.page("OLD")[0]] == sorted([png, jpg], key=lambda p: -p.stat().st_mtime)
    assert next(i for i in items if i.path == plain).prompt == ""

    # Numbering carries on after the earlier run's files instead of reusing their names.
    assert fresh.save(_noise(), INFOTEXT, FIELDS, seed=5).name == "00002-5.png"


# -- delete, restore, contains ----------------------------------------------------------------


def test_delete_moves_to_trash_and_restore_brings_back_identical_bytes(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    path = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    other = store.save(_noise(seed=1), INFOTEXT, FIELDS, seed=6)
    original = path.read_bytes()

    trashed = store.delete(path)
    assert not path.exists()
    assert trashed == tmp_path / ".trash" / path.parent.name / path.name
    assert trashed.read_bytes() == original
    assert [i.path for i in store.page()[0]] == [other]
    assert store.page("red fox")[1] == 1
    assert store.trash() == [trashed]
    assert store.contains(trashed)

    with pytest.raises(ValueError):
        store.delete(trashed)  # already in the trash
    assert trashed.exists()

    restored = store.restore(trashed)
    assert restored == path
    assert restored.read_bytes() == original
    assert store.trash() == []
    assert {i.path for i in store.page()[0]} == {path, other}


def test_restore_never_overwrites_a_file_that_took_the_name(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    path = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    original = path.read_bytes()
    trashed = store.delete(path)
    path.write_bytes(b"newcomer")
    restored = store.restore(trashed)
    assert restored != path
    assert restored.parent == path.parent
    assert restored.read_bytes() == original
    assert path.read_bytes() == b"newcomer"

    # Deleting two files of the same name keeps both in the trash.
    first = store.delete(restored)
    again = store.save(_noise(seed=2), INFOTEXT, FIELDS, seed=5)
    (tmp_path / ".trash" / again.parent.name / again.name).write_bytes(b"occupied")
    second = store.delete(again)
    assert second.exists() and first.exists()
    assert (tmp_path / ".trash" / again.parent.name / again.name).read_bytes() == b"occupied"
    assert len(store.trash()) == 3


def test_delete_refuses_paths_outside_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "out"
    store = OutputStore(root)
    inside = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    outside = tmp_path / "x.png"
    _noise().save(outside)
    before = outside.read_bytes()
    link = inside.parent / "00009-9.png"
    link.symlink_to(outside)

    for path in (outside, root / ".." / "x.png", inside.parent / ".." / ".." / "x.png", link):
        with pytest.raises(ValueError):
            store.delete(path)
    assert outside.read_bytes() == before
    assert inside.exists()
    assert store.trash() == []
    with pytest.raises(ValueError):
        store.restore(outside)  # restore only takes files from the trash
    assert outside.read_bytes() == before


def test_contains_only_images_inside_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "out"
    store = OutputStore(root)
    inside = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"private")
    (tmp_path / "out-sibling").mkdir()
    sibling = tmp_path / "out-sibling" / "a.png"  # shares the root's name as a string prefix
    sibling.write_bytes(b"private")
    escape = inside.parent / "escape.png"
    escape.symlink_to(secret)
    folder_link = root / "linked-folder"
    folder_link.symlink_to(tmp_path, target_is_directory=True)
    text = inside.parent / "notes.txt"
    text.write_text("x")

    assert store.contains(inside)
    assert store.contains(root / "2020-01-01" / "missing.JPG")
    assert store.contains(Path(os.path.relpath(inside)))  # relative paths resolve from the cwd
    assert not store.contains(secret)
    assert not store.contains(sibling)
    assert not store.contains(root / ".." / "secret.png")
    assert not store.contains(inside.parent / ".." / ".." / "secret.png")
    assert not store.contains(escape)
    assert not store.contains(folder_link / "secret.png")
    assert not store.contains(text)
    assert not store.contains(root / "a.txt")


def _outside_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A folder outside the outputs with one picture in it (with a prompt), and that picture."""
    private = tmp_path / "private"
    picture = OutputStore(private).save(_noise(seed=7), _infotext("a private letter", seed=7), {}, seed=7)
    return private, picture


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_linked_folder_inside_the_outputs_is_not_listed(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out")
    inside = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    private, picture = _outside_folder(tmp_path)
    (tmp_path / "out" / "2001-01-01").symlink_to(picture.parent, target_is_directory=True)
    (tmp_path / "out" / "linked-root").symlink_to(private, target_is_directory=True)

    items, total = store.page()
    assert [i.path for i in items] == [inside] and total == 1
    assert store.page("private letter") == ([], 0)
    assert not store.contains(tmp_path / "out" / "2001-01-01" / picture.name)


def test_delete_and_restore_never_move_files_through_a_linked_trash(tmp_path: Path) -> None:
    root = tmp_path / "out"
    store = OutputStore(root)
    inside = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    private, picture = _outside_folder(tmp_path)
    (root / TRASH).symlink_to(private, target_is_directory=True)
    before, kept = _snapshot(private), inside.read_bytes()

    with pytest.raises(ValueError):
        store.delete(inside)  # would move the user's picture out of the outputs folder
    with pytest.raises(ValueError):
        store.restore(root / TRASH / picture.parent.name / picture.name)  # would pull a private file in
    assert inside.read_bytes() == kept
    assert _snapshot(private) == before
    assert store.trash() == []
    assert [i.path for i in store.page()[0]] == [inside]


def test_restore_never_writes_through_a_linked_folder(tmp_path: Path) -> None:
    root = tmp_path / "out"
    store = OutputStore(root)
    path = store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    trashed = store.delete(path)
    private, picture = _outside_folder(tmp_path)
    path.parent.rmdir()
    path.parent.symlink_to(picture.parent, target_is_directory=True)
    before = _snapshot(private)

    with pytest.raises(ValueError):
        store.restore(trashed)
    assert _snapshot(private) == before
    assert trashed.is_file()


def test_a_path_that_only_looks_inside_is_not_inside(tmp_path: Path) -> None:
    root = tmp_path / "out"
    store = OutputStore(root)
    store.save(_noise(), INFOTEXT, FIELDS, seed=5)
    _, picture = _outside_folder(tmp_path)
    (root / "door").symlink_to(picture.parent, target_is_directory=True)
    # written out it is root/<day>/<name>; the system follows "door" first and lands on the private picture
    sneaky = root / "door" / ".." / picture.parent.name / picture.name
    assert os.path.realpath(sneaky) == os.path.realpath(picture)

    assert not store.contains(sneaky)
    with pytest.raises(ValueError):
        store.delete(sneaky)
    assert picture.is_file()
    assert not store.contains(root / "nul\0.png")  # a path the system refuses is not inside either


# -- metadata that cannot be read -------------------------------------------------------------


def _png_with_chunks(path: Path, **chunks: str) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    _noise().save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    "atelier",
    ["[" * 200_000, "[" * 5_000, '{"a": ' * 3_000, "[1, 2]", '"text"', "{not json", "{}" + " " * 300_000],
    ids=["deep-and-big", "deep", "deep-objects", "a-list", "a-string", "not-json", "too-big"],
)
def test_an_unreadable_atelier_chunk_is_left_out_and_the_rest_is_read(tmp_path: Path, atelier: str) -> None:
    path = _png_with_chunks(tmp_path / "hostile.png", parameters=INFOTEXT, atelier=atelier)
    metadata = read_metadata(path)
    assert metadata == {"parameters": INFOTEXT, "unreadable": ["atelier"]}
    with Image.open(path) as image:
        assert image_metadata(image) == metadata
    store = OutputStore(tmp_path / "out")  # and the gallery lists it with its prompt
    (tmp_path / "out" / "2020-01-01").mkdir(parents=True)
    shutil.copy(path, tmp_path / "out" / "2020-01-01" / "00000-5.png")
    assert [i.prompt for i in store.page("red fox")[0]] == ["a red fox"]


def test_an_oversized_infotext_is_left_out(tmp_path: Path) -> None:
    huge = "a red fox " * 100_000
    path = _png_with_chunks(tmp_path / "huge.png", parameters=huge, atelier=json.dumps(FIELDS))
    assert read_metadata(path) == {"atelier": FIELDS, "unreadable": ["parameters"]}
    webp = OutputStore(tmp_path / "out", "webp").save(_noise(), huge, FIELDS, seed=1)  # EXIF UserComment
    assert read_metadata(webp) == {"unreadable": ["parameters"]}


# -- through the engine -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saving_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    base = tmp_path_factory.mktemp("saving")
    settings = EngineSettings(models_dir=base / "m", outputs_dir=base / "out", default_model="builtin:demo")
    return Engine(settings)


def test_generate_with_save_writes_every_image_with_its_own_metadata(saving_engine: Engine) -> None:
    root = saving_engine.outputs.root
    request = Txt2Img(prompt="a tiny 猫 house", negative_prompt="fog", steps=2, width=64, height=64, seed=40)
    result = saving_engine.generate(request.replace(batch_size=2, batch_count=2), save=True)

    assert result.seeds == [40, 41, 42, 43]
    assert len(result.images) == len(result.paths) == 4
    assert not any("not saved" in note for note in result.notes)
    assert sorted(result.paths) == [p for p in _all_files(root) if p.suffix == ".png"]
    assert _temp_files(root) == []
    assert len({p.name[:5] for p in result.paths}) == 4
    for path, seed, text, image in zip(result.paths, result.seeds, result.infotexts, result.images, strict=True):
        assert path.parent.parent == root
        assert re.fullmatch(rf"\d{{5}}-{seed}\.png", path.name)
        assert f"Seed: {seed}," in text
        with Image.open(path) as saved:
            assert saved.text["parameters"] == text
            fields = json.loads(saved.text["atelier"])
            assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(image.convert("RGB")))
        assert fields["prompt"] == "a tiny 猫 house"
        assert fields["negative_prompt"] == "fog"
        assert fields["steps"] == 2
        assert fields["seed"] == seed
        assert fields["model"] == result.model

    items, total = saving_engine.outputs.page("猫 HOUSE")
    assert total == 4
    assert {i.path for i in items} == set(result.paths)


def test_generate_without_save_writes_nothing(saving_engine: Engine) -> None:
    root = saving_engine.outputs.root
    before = _all_files(root) if root.exists() else []
    result = saving_engine.generate(Txt2Img(prompt="unsaved", steps=2, width=64, height=64, seed=3))
    assert len(result.images) == 1
    assert result.paths == []
    assert (_all_files(root) if root.exists() else []) == before


def test_generate_keeps_the_images_when_the_outputs_folder_is_unwritable(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file where the outputs folder should be")
    settings = EngineSettings(models_dir=tmp_path / "m", outputs_dir=blocker / "out", default_model="builtin:demo")
    engine = Engine(settings)
    result = engine.generate(Txt2Img(prompt="lost?", steps=2, width=64, height=64, seed=7, batch_size=2), save=True)

    assert len(result.images) == 2
    assert all(image.size == (64, 64) for image in result.images)
    assert result.paths == []
    unsaved = [note for note in result.notes if "not saved" in note]
    assert len(unsaved) == 2
    assert "seed 7 " in unsaved[0] and "seed 8 " in unsaved[1]
    assert blocker.read_bytes() == b"a file where the outputs folder should be"
