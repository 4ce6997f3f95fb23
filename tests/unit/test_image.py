"""klpsym.kernel.image on synthetic images: every kallsyms layout, every
compression, the damaged and foreign images, the symbol cache, discovery
and the CLI.  (The real images of Debian's three suites are compared with
their booted /proc/kallsyms in tests/real/test_image_real.py.)"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

import imagebuilder as ib
from klpsym.cli.main import main
from klpsym.errors import KlpsymError
from klpsym.kernel import image as image_mod
from klpsym.kernel.image import (
    ImageError,
    kallsyms_from_image,
    layout_for,
    read_image,
    read_image_kallsyms,
)
from klpsym.kernel.target import discover
from klpsym.kernel.version import KernelVersion

COMPRESSIONS = ("gzip", "xz", "lzma", "bzip2", "zstd", "lz4")


def rows_for(layout: str) -> list[tuple[int, str, str]]:
    spec = ib.LAYOUTS[layout][1]
    return ib.sample_rows(long_name=spec.big_lengths, abs_percpu=spec.abs_percpu)


def elf_for(layout: str, **kw: object) -> bytes:
    release, spec = ib.LAYOUTS[layout]
    return ib.vmlinux(release, rows_for(layout), spec, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", sorted(ib.LAYOUTS))
def test_every_layout_reads_back_exactly(layout: str) -> None:
    release, spec = ib.LAYOUTS[layout]
    stats: dict[str, int] = {}
    elf = ib.vmlinux(release, rows_for(layout), spec, stats=stats)
    table = kallsyms_from_image(elf, "vmlinux")
    assert list(table) == rows_for(layout)
    assert table.has_addresses
    assert f"kallsyms layout {layout_for(KernelVersion.parse(release)).name}" in table.notes[0]
    # more than one marker, and (v6.1+) a two-byte length
    assert len(table) > 512
    assert (stats["longest"] > 0x7F) == spec.big_lengths
    assert table.rows_of("duplicated_static") == [i for i, r in enumerate(rows_for(layout))
                                                  if r[2] == "duplicated_static"]


def test_layout_by_version() -> None:
    def name(rel: str) -> str:
        return layout_for(KernelVersion.parse(rel)).name

    assert [name(r) for r in ("5.8.0", "6.0.19", "6.1.0-57-amd64", "6.2.1", "6.3.13",
                              "6.4.0", "6.12.118+deb13-amd64", "6.19.3", "7.0.0", "7.2.13")] \
        == ["v5.8", "v5.8", "v6.1", "v6.2", "v6.2", "v6.4", "v6.4", "v6.4", "v7.0", "v7.0"]
    with pytest.raises(ImageError, match="from 5.8 on"):
        layout_for(KernelVersion.parse("5.7.0"))


@pytest.mark.parametrize("kind", COMPRESSIONS)
def test_every_compression_in_a_bzimage(kind: str, tmp_path: Path) -> None:
    elf = elf_for("v6.4")
    path = tmp_path / "vmlinuz"
    path.write_bytes(ib.bzimage(ib.compress(kind, elf)))
    table = read_image_kallsyms(path)
    assert list(table) == rows_for("v6.4")
    assert f"bzImage, {kind}" in table.notes[0]


def test_bare_compressed_and_plain_vmlinux(tmp_path: Path) -> None:
    elf = elf_for("v7.0")
    (tmp_path / "vmlinux.gz").write_bytes(ib.compress("gzip", elf))
    (tmp_path / "vmlinux").write_bytes(elf)
    assert list(read_image_kallsyms(tmp_path / "vmlinux.gz")) == rows_for("v7.0")
    assert list(read_image_kallsyms(tmp_path / "vmlinux")) == rows_for("v7.0")


def test_the_target_version_chooses_the_layout_and_must_match(tmp_path: Path) -> None:
    release = ib.LAYOUTS["v6.4"][0]
    path = tmp_path / "vmlinuz"
    path.write_bytes(ib.bzimage(ib.compress("zstd", elf_for("v6.4"))))
    assert list(read_image_kallsyms(path, KernelVersion.parse(release))) == rows_for("v6.4")
    with pytest.raises(ImageError) as exc:
        read_image_kallsyms(path, KernelVersion.parse("6.12.1-other"))
    assert str(exc.value) == (f"{path}: is the image of kernel {release}, but the target is "
                              "6.12.1-other; pass the image of the same kernel")


# -- damaged and foreign images ---------------------------------------------------


def one_line_error(path: Path, version: KernelVersion | None = None) -> str:
    with pytest.raises(ImageError) as exc:
        read_image_kallsyms(path, version)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    return msg


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("hello\n")
    assert "not a kernel image" in one_line_error(p)
    assert "no such file" in one_line_error(tmp_path / "missing")
    assert "is a directory" in one_line_error(tmp_path)


@pytest.mark.parametrize("kind", ["xz", "zstd", "gzip"])
def test_truncated_payload(kind: str, tmp_path: Path) -> None:
    whole = ib.bzimage(ib.compress(kind, elf_for("v6.4")))
    p = tmp_path / "vmlinuz"
    start = 1024 + len(b"\xe8decompressor stub") + 0x200
    # cut inside the compressed stream: the header's payload_length then
    # points past the end, so the payload is found by its magic
    p.write_bytes(whole[: start + 64])
    msg = one_line_error(p)
    assert "truncated" in msg or "does not decompress" in msg or "not a kernel image" in msg


def test_truncated_inside_the_tables(tmp_path: Path) -> None:
    elf = elf_for("v6.4")
    cut = elf.index(b"after the tables") - 2000  # inside seqs_of_names/offsets
    p = tmp_path / "vmlinux"
    p.write_bytes(elf[:cut])
    msg = one_line_error(p)
    assert "truncated" in msg or "do not fit" in msg


def test_wrong_architecture(tmp_path: Path) -> None:
    p = tmp_path / "vmlinuz"
    p.write_bytes(ib.bzimage(ib.compress("gzip", elf_for("v6.4", machine=183))))
    assert "ELF machine 183, not x86-64" in one_line_error(p)


def test_no_kallsyms(tmp_path: Path) -> None:
    p = tmp_path / "vmlinuz"
    p.write_bytes(ib.bzimage(ib.compress("gzip", elf_for("v6.4", tables=False))))
    assert "no kallsyms token table" in one_line_error(p)


def test_no_banner(tmp_path: Path) -> None:
    p = tmp_path / "vmlinux"
    p.write_bytes(elf_for("v6.4").replace(b"Linux version", b"Linux Version"))
    assert "no 'Linux version' banner" in one_line_error(p)


@pytest.mark.parametrize(("image_layout", "claimed"), [
    ("v6.4", "6.1.0-99-amd64"), ("v6.1-seqs", "6.12.99+deb13-amd64"),
    ("v7.0", "6.12.99+deb13-amd64"), ("v6.4", "7.2.99+deb14-amd64"),
    ("v6.1", "5.10.0-30-amd64"),
])
def test_another_layout_is_an_error_not_a_wrong_table(image_layout: str, claimed: str,
                                                      tmp_path: Path) -> None:
    """Tables of one layout in an image whose banner claims a release of
    another (a kernel with an unknown patch): the reader refuses it."""
    release, spec = ib.LAYOUTS[image_layout]
    elf = ib.vmlinux(release, rows_for(image_layout), spec)
    elf = elf.replace(f"Linux version {release} ".encode(), f"Linux version {claimed} ".encode())
    p = tmp_path / "vmlinux"
    p.write_bytes(elf)
    msg = one_line_error(p)
    assert "layout" in msg or "damaged" in msg


def _tables_at(elf: bytes) -> tuple[int, int]:
    """(start of kallsyms_num_syms .. end of the tables) in a v6.4 image."""
    start = elf.index(ib.DECOY, elf.index(b"Linux version")) + len(ib.DECOY) + 37
    return start, elf.index(b"after the tables")


def test_damaged_markers_and_lengths(tmp_path: Path) -> None:
    elf = bytearray(elf_for("v6.4"))
    rows = rows_for("v6.4")
    n = len(rows)
    start, _ = _tables_at(bytes(elf))
    num_at = elf.index(struct.pack("<I", n), start)
    names_at = num_at + 8
    # a marker that points elsewhere
    markers_bad = bytearray(elf)
    tok = markers_bad.index(ib.DECOY, names_at)
    marker1 = next(i for i in range(names_at, tok, 4)
                   if struct.unpack_from("<I", markers_bad, i)[0] == 0
                   and struct.unpack_from("<I", markers_bad, i + 4)[0] > 1000)
    struct.pack_into("<I", markers_bad, marker1 + 4,
                     struct.unpack_from("<I", markers_bad, marker1 + 4)[0] + 1)
    p = tmp_path / "markers"
    p.write_bytes(markers_bad)
    one_line_error(p)
    # a length byte of the first name
    lengths_bad = bytearray(elf)
    lengths_bad[names_at] += 1
    p = tmp_path / "lengths"
    p.write_bytes(lengths_bad)
    one_line_error(p)
    # a symbol count one off
    count_bad = bytearray(elf)
    struct.pack_into("<I", count_bad, num_at, n + 1)
    p = tmp_path / "count"
    p.write_bytes(count_bad)
    one_line_error(p)


def test_random_damage_is_an_error_or_a_table(tmp_path: Path) -> None:
    """Byte flips anywhere in the tables: the reader returns a table or
    raises ImageError, nothing else (no crash, no hang)."""
    elf = elf_for("v6.4")
    start, end = _tables_at(elf)
    rng = random.Random(17)
    p = tmp_path / "vmlinux"
    errors = 0
    for _ in range(60):
        data = bytearray(elf)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
        p.write_bytes(data)
        try:
            table = read_image_kallsyms(p)
        except ImageError:
            errors += 1
        else:
            assert len(table) == len(rows_for("v6.4"))
    assert errors > 0


# -- the symbol cache ------------------------------------------------------------


def test_second_read_comes_from_the_symbol_cache(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPSYM_SYMCACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KLPSYM_NO_CACHE", raising=False)
    p = tmp_path / "vmlinuz"
    p.write_bytes(ib.bzimage(ib.compress("xz", elf_for("v6.4"))))
    version = KernelVersion.parse(ib.LAYOUTS["v6.4"][0])
    first = read_image(p, version)
    assert list((tmp_path / "cache").iterdir())

    def no_parse(*a: object, **k: object) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(image_mod, "read_image_kallsyms", no_parse)
    again = read_image(p, version)
    assert list(again) == list(first) == rows_for("v6.4")
    assert again.notes == first.notes
    with pytest.raises(AssertionError):  # another file version: parsed afresh
        p.write_bytes(p.read_bytes() + b"\0")
        read_image(p, version)


# -- discovery ---------------------------------------------------------------------


def fake_host(tmp_path: Path, release: str) -> dict[str, object]:
    """A host running another kernel, with ``release``'s headers installed."""
    kdir = tmp_path / "lib_modules" / release / "build"
    (kdir / "include" / "generated").mkdir(parents=True)
    (kdir / "include" / "generated" / "utsrelease.h").write_text(
        f'#define UTS_RELEASE "{release}"\n')
    (kdir / "Module.symvers").write_text("0x12345678\tjiffies\tvmlinux\tEXPORT_SYMBOL\t\n")
    (kdir / ".config").write_text("CONFIG_KALLSYMS_ALL=y\n")
    (tmp_path / "boot").mkdir()
    proc = tmp_path / "proc_kallsyms"
    proc.write_text("ffffffff81000000 T _stext\n")
    return {"kernel_release": release, "running_release": "6.0.0-running",
            "proc_kallsyms": proc, "boot_dir": tmp_path / "boot",
            "modules_root": tmp_path / "lib_modules", "debug_dir": tmp_path / "debug",
            "cache": False}


def test_default_for_a_kernel_that_is_not_running_is_its_image(tmp_path: Path) -> None:
    release = ib.LAYOUTS["v6.4"][0]
    host = fake_host(tmp_path, release)
    vmlinuz = tmp_path / "boot" / f"vmlinuz-{release}"
    vmlinuz.write_bytes(ib.bzimage(ib.compress("zstd", elf_for("v6.4"))))
    t = discover(**host)  # type: ignore[arg-type]
    assert t.kallsyms_source == f"image {vmlinuz}"
    assert f"symbols from image {vmlinuz}" in t.describe()
    assert any("its own image" in n for n in t.notes)
    assert list(t.kallsyms) == rows_for("v6.4")


def test_usr_lib_modules_vmlinuz_when_boot_has_none(tmp_path: Path) -> None:
    release = ib.LAYOUTS["v7.0"][0]
    host = fake_host(tmp_path, release)
    vmlinuz = tmp_path / "lib_modules" / release / "vmlinuz"
    vmlinuz.write_bytes(ib.bzimage(ib.compress("zstd", elf_for("v7.0"))))
    t = discover(**host)  # type: ignore[arg-type]
    assert t.kallsyms_source == f"image {vmlinuz}"
    assert list(t.kallsyms) == rows_for("v7.0")


def test_a_symbol_file_comes_before_the_image(tmp_path: Path) -> None:
    release = ib.LAYOUTS["v6.4"][0]
    host = fake_host(tmp_path, release)
    (tmp_path / "boot" / f"vmlinuz-{release}").write_bytes(
        ib.bzimage(ib.compress("gzip", elf_for("v6.4"))))
    system_map = tmp_path / "boot" / f"System.map-{release}"
    system_map.write_text("ffffffff81000000 T _stext\nffffffff81000010 T other\n")
    t = discover(**host)  # type: ignore[arg-type]
    assert t.kallsyms_source == f"System.map {system_map}"
    # Debian's placeholder System.map is skipped: the image is used
    system_map.write_text("ffffffffffffffff B The real System.map is in the "
                          "linux-image-<version>-dbg package\n")
    t = discover(**host)  # type: ignore[arg-type]
    assert t.kallsyms_source.startswith("image ")


def test_explicit_image_and_one_source_only(tmp_path: Path) -> None:
    release = ib.LAYOUTS["v6.4"][0]
    host = fake_host(tmp_path, release)
    img = tmp_path / "some.bzImage"
    img.write_bytes(ib.bzimage(ib.compress("lz4", elf_for("v6.4"))))
    t = discover(image=img, **host)  # type: ignore[arg-type]
    assert t.kallsyms_source == f"image {img}"
    assert list(t.kallsyms) == rows_for("v6.4")
    with pytest.raises(KlpsymError, match="both given"):
        discover(image=img, kallsyms=host["proc_kallsyms"], **host)  # type: ignore[arg-type]
    with pytest.raises(KlpsymError, match="no such file"):
        discover(image=tmp_path / "none", **host)  # type: ignore[arg-type]


# -- the CLI -----------------------------------------------------------------------


def test_kallsyms_command_prints_proc_kallsyms_format(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPSYM_NO_CACHE", "1")
    img = tmp_path / "vmlinuz"
    img.write_bytes(ib.bzimage(ib.compress("xz", elf_for("v6.1-seqs"))))
    assert main(["kallsyms", "--image", str(img)]) == 0
    out, err = capsys.readouterr()
    assert out == "".join(f"{a:016x} {t} {n}\n" for a, t, n in rows_for("v6.1-seqs"))
    assert err == (f"klpsym: {len(rows_for('v6.1-seqs'))} vmlinux symbols from image {img} "
                   "(link-time addresses)\n")
    assert main(["kallsyms", "--json", "--image", str(img)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"] == f"image {img}" and doc["runtime_addresses"] is False
    assert [(s["address"], s["type"], s["name"]) for s in doc["symbols"]] == \
        [(f"{a:#x}", t, n) for a, t, n in rows_for("v6.1-seqs")]  # hex: docs/json.md
    # a saved /proc/kallsyms as the source: the same lines back
    saved = tmp_path / "kallsyms"
    saved.write_text(out + "ffffffffc0000000 t mod_fn\t[some_module]\n")
    assert main(["kallsyms", "--kallsyms", str(saved)]) == 0
    assert capsys.readouterr().out == out


def test_kallsyms_command_error_is_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "vmlinuz"
    bad.write_bytes(ib.bzimage(ib.compress("gzip", elf_for("v6.4", machine=183))))
    assert main(["kallsyms", "--image", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"klpsym: error: {bad}: ")


def test_addr_with_image(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPSYM_NO_CACHE", "1")
    img = tmp_path / "vmlinuz"
    img.write_bytes(ib.bzimage(ib.compress("bzip2", elf_for("v7.0"))))
    assert main(["addr", "jiffies", "duplicated_static,2", "--image", str(img), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    want = {n: a for a, _, n in rows_for("v7.0") if n == "jiffies"}
    dup = [a for a, _, n in rows_for("v7.0") if n == "duplicated_static"]
    assert doc["source"] == f"image {img}" and doc["runtime_addresses"] is False
    assert [(s["name"], s["pos"], s["address"]) for s in doc["symbols"]] == \
        [("jiffies", 0, f"{want['jiffies']:#x}"), ("duplicated_static", 2, f"{dup[1]:#x}")]


def test_insmod_takes_image_only_for_print_args(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "vmlinuz"
    img.write_bytes(b"unused")
    assert main(["insmod", str(tmp_path / "m.ko"), "--image", str(img)]) == 2
    assert "other sources only with --print-args" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "rest"), [
    ("convert", ["m.ko"]), ("build", []), ("check", ["m.ko"]), ("addr", ["jiffies"]),
    ("insmod", ["m.ko", "--print-args"]), ("kallsyms", []),
])
def test_every_symbol_source_command_takes_image(command: str, rest: list[str]) -> None:
    from klpsym.cli.main import build_parser

    args = build_parser(command).parse_args([command, *rest, "--image", "/boot/vmlinuz-R"])
    assert args.image == Path("/boot/vmlinuz-R")
    with pytest.raises(SystemExit):  # one symbol source at a time
        build_parser(command).parse_args([command, *rest, "--image", "a", "--kallsyms", "b"])


def test_xz_of_one_block_is_read_raw_and_the_same(tmp_path: Path) -> None:
    """An xz payload as the kernel's (one block, x86 BCJ + LZMA2, size
    appended) is read by a raw LZMA2 decoder, which skips the block check
    that a partial read never reaches; the tables are the same.  A stream
    of another shape (two blocks), or whose headers' CRC32s do not
    hold, is left to the xz decoder."""
    import lzma

    from klpsym.kernel import vmlinuz

    elf = elf_for("v6.4")
    filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 6}]
    kernel_like = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                filters=filters) + struct.pack("<I", len(elf))
    found = vmlinuz._xz_single_block(kernel_like)
    assert found is not None and [f["id"] for f in found[1]] == [lzma.FILTER_X86,
                                                                 lzma.FILTER_LZMA2]
    p = tmp_path / "vmlinuz"
    p.write_bytes(ib.bzimage(kernel_like))
    assert list(read_image_kallsyms(p)) == rows_for("v6.4")
    # an index of two records (two blocks): not read raw
    index_size = (struct.unpack_from("<I", kernel_like, len(kernel_like) - 16 + 4)[0] + 1) * 4
    two = bytearray(kernel_like)
    two[len(two) - 16 - index_size + 1] = 2
    assert vmlinuz._xz_single_block(bytes(two)) is None
    # a damaged block header: its CRC32 does not hold
    broken = bytearray(kernel_like)
    broken[13 + 1] ^= 0x01
    assert vmlinuz._xz_single_block(bytes(broken)) is None
    p.write_bytes(ib.bzimage(bytes(broken)))
    assert "does not decompress" in one_line_error(p)
    # the whole vmlinux (the lab's read) goes through the xz decoder, check included
    stream, _ = vmlinuz.open_image(kernel_like, "x")
    assert stream.kind == "xz" and vmlinuz.read_vmlinux(kernel_like, "x") == elf


def _calls(rng: random.Random, n: int) -> bytes:
    """``n`` bytes as dense in what the x86 BCJ filter converts as they come:
    runs of E8/E9 (calls, jmps, and bytes that only look like them) whose
    4th byte after is often 00 or FF."""
    alphabet = b"\xe8\xe9\x00\xff\xe8\x00\x41\x90"
    return bytes(rng.choice(alphabet) for _ in range(n))


@pytest.mark.parametrize("ahead", [False, True])
def test_the_x86_filter_restarts_exactly_after_the_banner(ahead: bool) -> None:
    """An xz payload's x86 filter is not undone while the stream is only
    searched for text (skim), and is undone again from a position after 5
    bytes of text (keep_from): every byte from there on is the vmlinux's
    own, whatever E8/E9 runs come right after, wherever the position falls
    in the filter's stream.  A position after an E8 is refused as a bug."""
    from klpsym.errors import InternalError
    from klpsym.kernel import vmlinuz

    rng = random.Random(7)
    for shift in range(6):
        head = _calls(rng, 300_000 + shift)
        data = head + b"Linux version " + _calls(rng, 200_000)
        stream, _ = vmlinuz.open_image(ib.compress("xz", data), "x", partial=True)
        stream.CHUNK = stream.AHEAD_CHUNK = 1 << 13
        if ahead:
            stream.decompress_ahead()
        assert stream.ensure(4096) and bytes(stream.buf[:4096]) == data[:4096]
        stream.skim()
        at = len(head) + len(b"Linux version ")
        assert stream.ensure(at + 10)
        stream.drop_before(at - 1000)  # as the reader drops the text it searched
        with pytest.raises(InternalError):
            bad = next(i for i in range(at - 64, at) if data[i - 1] == 0xE8)
            stream.keep_from(bad)
        stream.keep_from(at)
        assert stream.base == at
        while stream.ensure(stream.end() + 1):
            pass
        assert bytes(stream.buf) == data[at:]
        stream.close()
    # a stream decoded whole before skim(): the paused decoder goes on, to the end
    small = _calls(rng, 3000) + b"Linux version " + _calls(rng, 3000)
    stream, _ = vmlinuz.open_image(ib.compress("xz", small), "x", partial=True)
    assert stream.ensure(64)
    stream.skim()
    while stream.ensure(stream.end() + 1):
        pass
    stream.keep_from(3014)
    assert bytes(stream.buf) == small[3014:]
    # the raw bytes do differ from the vmlinux's: the restart is what makes them equal
    import lzma

    raw = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    blob = ib.compress("xz", data)[:-4]
    start, _ = vmlinuz._xz_single_block(blob + b"\0" * 4) or (0, [])
    assert start and raw.decompress(blob[start:])[at:] != data[at:]
