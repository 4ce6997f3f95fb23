"""The image decompressed ahead in a thread (kernel.vmlinuz
decompress_ahead/prefetch, started by the command line before its imports):
the same bytes and the same errors as decompressed in the caller, bounded,
stopped by close(), never left running, never started for an image whose
kallsyms the symbol cache holds, and without numpy."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_image import COMPRESSIONS, elf_for, rows_for

import imagebuilder as ib
from klpsym.cli.main import main
from klpsym.kernel import vmlinuz
from klpsym.kernel.image import ImageError, read_image_kallsyms


def decompressor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "klpsym-decompress"]


def whole(stream: vmlinuz.VmlinuxStream) -> bytes:
    """Everything the stream gives, read as the image reader does (a chunk
    past the end each time)."""
    while stream.ensure(stream.end() + 1):
        pass
    return bytes(stream.buf)


@pytest.mark.parametrize("kind", COMPRESSIONS)
def test_the_same_bytes_as_decompressed_in_the_caller(kind: str) -> None:
    payload = ib.bzimage(ib.compress(kind, elf_for("v6.4")))
    plain, how = vmlinuz.open_image(payload, "p", partial=True)
    ahead, how2 = vmlinuz.open_image(payload, "p", partial=True)
    ahead.CHUNK = ahead.AHEAD_CHUNK = 1 << 12  # many chunks, the thread held back often
    ahead.AHEAD = 1 << 14
    ahead.decompress_ahead()
    assert how == how2 == f"bzImage, {kind}"
    assert whole(ahead) == whole(plain)
    ahead.close()
    assert not decompressor_threads()


def test_it_stays_a_bounded_amount_ahead_and_close_stops_it() -> None:
    stream, _ = vmlinuz.open_image(ib.compress("gzip", elf_for("v6.4")), "p", partial=True)
    stream.CHUNK, stream.AHEAD_CHUNK, stream.AHEAD = 1 << 12, 1 << 11, 1 << 14
    stream.decompress_ahead()
    ahead = stream._ahead
    assert ahead is not None
    deadline = time.monotonic() + 10
    while ahead._held < stream.AHEAD and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # had it not stopped at the limit, it would be past it now
    assert stream.AHEAD <= ahead._held < stream.AHEAD + stream.AHEAD_CHUNK
    assert ahead.running()  # waiting for the reader
    assert stream.ensure(stream.CHUNK)
    stream.close()
    assert not ahead.running() and not decompressor_threads()
    assert not stream.ensure(stream.end() + 1)  # closed: no more


@pytest.mark.parametrize("kind", ["xz", "zstd", "gzip", "bzip2"])
def test_an_error_in_the_thread_is_the_callers_error(kind: str) -> None:
    elf = elf_for("v6.4")
    damaged = bytearray(ib.compress(kind, elf))
    for i in range(len(damaged) // 3, len(damaged) // 3 + 64):
        damaged[i] ^= 0x5A
    comp = ib.compress(kind, elf)
    truncated = comp[: len(comp) * 2 // 3] + comp[-4:]  # the size appended kept
    for blob in (bytes(damaged), truncated):
        msgs = []
        for threaded in (False, True):
            stream, _ = vmlinuz.open_image(blob, "img", partial=True)
            if threaded:
                stream.decompress_ahead()
            with pytest.raises(ImageError) as exc:
                whole(stream)
            msgs.append(str(exc.value))
            if threaded:  # and again, if asked again
                with pytest.raises(ImageError):
                    stream.done = False
                    stream.ensure(stream.end() + 1)
            stream.close()
        assert msgs[0] == msgs[1]
        assert "\n" not in msgs[0] and ("truncated" in msgs[0] or "damaged" in msgs[0])
    assert not decompressor_threads()


def test_prefetch_is_taken_by_the_reader(tmp_path: Path) -> None:
    p = tmp_path / "vmlinuz"
    p.write_bytes(ib.bzimage(ib.compress("xz", elf_for("v6.1-seqs"))))
    vmlinuz.prefetch(p)
    # (its thread may have decoded this small image and ended already)
    assert vmlinuz._PREFETCHED[str(p)].stream._ahead is not None
    assert len(decompressor_threads()) <= 1
    assert list(read_image_kallsyms(p)) == rows_for("v6.1-seqs")
    assert not vmlinuz._PREFETCHED and not decompressor_threads()
    # a file changed since: not taken, read afresh
    vmlinuz.prefetch(p)
    p.write_bytes(ib.bzimage(ib.compress("zstd", elf_for("v7.0"))))
    table = read_image_kallsyms(p)
    assert list(table) == rows_for("v7.0") and "zstd" in table.notes[0]
    assert not vmlinuz._PREFETCHED and not decompressor_threads()
    # nothing to decompress, nothing readable, or a fast decoder: no thread
    (tmp_path / "vmlinux").write_bytes(elf_for("v6.4"))
    (tmp_path / "text").write_text("hello\n")
    for q in (tmp_path / "vmlinux", tmp_path / "text", tmp_path / "missing", tmp_path, p):
        vmlinuz.prefetch(q)
    assert not vmlinuz._PREFETCHED and not decompressor_threads()


@pytest.mark.parametrize("kind", ["xz", "bzip2", "gzip"])
def test_a_damaged_image_is_the_same_error_with_and_without_prefetch(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPSYM_NO_CACHE", "1")
    good = ib.bzimage(ib.compress(kind, elf_for("v6.4")))
    p = tmp_path / "vmlinuz"
    p.write_bytes(good[: len(good) * 2 // 3])  # the payload goes past the end
    for q in (p, tmp_path / "damaged"):
        if q != p:
            d = bytearray(good)
            for i in range(len(d) // 2, len(d) // 2 + 256):
                d[i] ^= 0xA5
            q.write_bytes(bytes(d))
        with pytest.raises(ImageError) as exc:
            read_image_kallsyms(q)
        assert main(["kallsyms", "--image", str(q)]) == 2
        assert capsys.readouterr().err == f"klpsym: error: {exc.value}\n"
        assert not vmlinuz._PREFETCHED and not decompressor_threads()


def test_the_command_prefetches_only_without_a_cached_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPSYM_SYMCACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KLPSYM_NO_CACHE", raising=False)
    img = tmp_path / "vmlinuz"
    img.write_bytes(ib.bzimage(ib.compress("gzip", elf_for("v6.4"))))
    started: list[Path] = []
    real = vmlinuz.prefetch
    monkeypatch.setattr(vmlinuz, "prefetch", lambda p: (started.append(p), real(p))[1])
    want = "".join(f"{a:016x} {t} {n}\n" for a, t, n in rows_for("v6.4"))
    for _ in range(2):
        assert main(["kallsyms", "--image", str(img)]) == 0
        assert capsys.readouterr().out == want
        assert not vmlinuz._PREFETCHED and not decompressor_threads()
    assert started == [img]  # the second run read the cache
    assert main(["kallsyms", "--no-cache", "--image", str(img)]) == 0
    assert capsys.readouterr().out == want and started == [img, img]
    # an error before the image is read (the headers of another kernel):
    # the prefetch is stopped
    kdir = tmp_path / "kdir"
    (kdir / "include" / "generated").mkdir(parents=True)
    (kdir / "include" / "generated" / "utsrelease.h").write_text(
        '#define UTS_RELEASE "6.3.0"\n')
    assert main(["kallsyms", "--no-cache", "--image", str(img), "--kernel-dir",
                 str(kdir)]) == 2
    assert "is the image of kernel" in capsys.readouterr().err
    assert len(started) == 3 and not vmlinuz._PREFETCHED and not decompressor_threads()


def test_prefetch_imports_no_numpy(tmp_path: Path) -> None:
    img = tmp_path / "vmlinuz"
    img.write_bytes(ib.bzimage(ib.compress("xz", elf_for("v6.4"))))
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from klpsym.kernel import cachekey, vmlinuz\n"
            f"p = Path({str(img)!r})\n"
            "assert not cachekey.has_image_entry(p)\n"
            "vmlinuz.prefetch(p)\n"
            "assert vmlinuz._PREFETCHED[str(p)].stream.ensure(1000)\n"
            "vmlinuz.cancel_prefetches()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy')[:3])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out == "[]\n"


def test_module_symvers_is_read_meanwhile_and_its_errors_come_after_the_images(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With --kernel-dir, its Module.symvers is read while the image
    decompresses; the errors and their order are those of reading it after."""
    monkeypatch.setenv("KLPSYM_NO_CACHE", "1")
    release = ib.LAYOUTS["v6.4"][0]
    kdir = tmp_path / "kdir"
    (kdir / "include" / "generated").mkdir(parents=True)
    (kdir / "include" / "generated" / "utsrelease.h").write_text(
        f'#define UTS_RELEASE "{release}"\n')
    symvers = kdir / "Module.symvers"
    img = tmp_path / "vmlinuz"
    img.write_bytes(ib.bzimage(ib.compress("xz", elf_for("v6.4"))))
    bad = tmp_path / "damaged"
    d = bytearray(img.read_bytes())
    for i in range(len(d) // 2, len(d) // 2 + 256):
        d[i] ^= 0xA5
    bad.write_bytes(bytes(d))
    with pytest.raises(ImageError) as exc:
        read_image_kallsyms(bad)
    image_error = f"klpsym: error: {exc.value}\n"

    def run(*flags: str) -> tuple[int, str, str]:
        rc = main(["kallsyms", "--kernel-dir", str(kdir), *flags])
        out, err = capsys.readouterr()
        assert not vmlinuz._PREFETCHED and not decompressor_threads()
        return rc, out, err

    symvers.write_text("garbage line\n")
    assert run("--image", str(bad)) == (2, "", image_error)  # the image's error first
    rc, out, err = run("--image", str(img))
    assert rc == 2 and out == "" and err.startswith(f"klpsym: error: {symvers}:1: not a "
                                                    "Module.symvers line")
    name = next(n for _, t, n in rows_for("v6.4") if t == "T")
    symvers.write_text(f"0x12345678\t{name}\tvmlinux\tEXPORT_SYMBOL\t\n")
    rc, out, err = run("--image", str(img))
    assert rc == 0 and out == "".join(f"{a:016x} {t} {n}\n" for a, t, n in rows_for("v6.4"))
