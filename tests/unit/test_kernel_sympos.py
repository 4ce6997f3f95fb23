"""kernel.sympos: livepatch's POS rule (klp_find_object_symbol), which
convert, check, addr and insmod share."""

from __future__ import annotations

from klpsym.kernel.kallsyms import Candidate
from klpsym.kernel.sympos import PosError, choose_pos, listed_pos


def _cands(n: int) -> list[Candidate]:
    return [Candidate(i, "t", 0xFFFFFFFF81000000 + i, 10 + i) for i in range(1, n + 1)]


def test_choose_pos() -> None:
    one, three = _cands(1), _cands(3)
    assert choose_pos([], None).error == PosError.MISSING
    assert choose_pos(one, None)[:2] == (0, one[0])  # unique: POS 0
    assert choose_pos(one, 0)[:2] == (0, one[0])
    assert choose_pos(one, 1)[:2] == (1, one[0])  # POS 1 of a unique name is that entry
    assert choose_pos(one, 2).error == PosError.BEYOND
    assert choose_pos(three, None) == (None, None, 3, PosError.AMBIGUOUS)
    assert choose_pos(three, 0) == (0, None, 3, PosError.AMBIGUOUS)
    assert choose_pos(three, 2) == (2, three[1], 3, None)
    assert choose_pos(three, 4).error == PosError.BEYOND
    assert choose_pos(three, -1).error == PosError.NEGATIVE
    assert [listed_pos(c, 3) for c in three] == [1, 2, 3]
    assert listed_pos(one[0], 1) == 0
