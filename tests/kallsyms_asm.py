"""Decode the assembler that scripts/kallsyms writes (kallsyms_names and
kallsyms_token_table) back into (type, name) rows in kallsyms order.

Used to compare klpsym's emulation with the real scripts/kallsyms binary
(Debian ships it in linux-kbuild-<version>, which the headers link to)."""

from __future__ import annotations

import re

_ASCIZ = re.compile(r'\s*\.asciz\s+"(.*)"\s*$')


def decode_kallsyms_asm(text: str) -> list[tuple[str, str]]:
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith(".globl "):
            current = None
            continue
        m = re.match(r"^(kallsyms_\w+):$", line)
        if m:
            current = m.group(1)
            sections[current] = []
            continue
        if current is not None:
            sections[current].append(line)
    tokens: list[str] = []
    for line in sections["kallsyms_token_table"]:
        m = _ASCIZ.match(line)
        if m:
            tokens.append(bytes(m.group(1), "ascii").decode("unicode_escape"))
    assert len(tokens) == 256, len(tokens)
    rows: list[tuple[str, str]] = []
    for line in sections["kallsyms_names"]:
        line = line.strip()
        if not line.startswith(".byte"):
            continue
        data = [int(x, 16) for x in line[len(".byte"):].split(",")]
        if data[0] & 0x80:  # two-byte ULEB128 length (v6.1+)
            length = (data[0] & 0x7F) | (data[1] << 7)
            body = data[2:]
        else:
            length = data[0]
            body = data[1:]
        assert len(body) == length, line
        expanded = "".join(tokens[b] for b in body)
        rows.append((expanded[0], expanded[1:]))
    return rows
