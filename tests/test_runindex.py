"""The run index: runs of one origin's rows, and what a remote lacks as pieces of them."""

from __future__ import annotations

import pytest

from replica.runindex import MOST_RUNS, Piece, RunIndex


def _index() -> RunIndex:
    """Origin 1 seqs 1-10 (rows 1-10), origin 2 seqs 1-5 (rows 11-15), a span row
    of origin 3 (seqs 1-4, row 16), origin 1 seqs 11-20 (rows 17-26)."""
    runs = RunIndex()
    for pos in range(1, 11):
        assert runs.add(pos, 1, pos, pos, 10)
    for seq in range(1, 6):
        assert runs.add(10 + seq, 2, seq, seq, 10)
    assert runs.add(16, 3, 1, 4, 40, span=True)
    for seq in range(11, 21):
        assert runs.add(6 + seq, 1, seq, seq, 10)
    return runs


def test_rows_make_runs_and_a_span_is_a_run_of_its_own() -> None:
    assert len(_index()) == 4


def test_what_a_remote_lacks_comes_as_pieces_in_applied_order() -> None:
    runs = _index()
    assert runs.take(1, {1: 0, 2: 0, 3: 0}) == [
        Piece(1, 1, 10, 1, False, 100),
        Piece(2, 1, 5, 11, False, 50),
        Piece(3, 1, 4, 16, True, 40),
        Piece(1, 11, 20, 17, False, 100),
    ]
    # It holds origin 1 up to 14 and all of origin 3: the rest of origin 1 starts at row 21.
    assert runs.take(11, {1: 14, 2: 2}) == [Piece(2, 3, 5, 13, False, 30), Piece(1, 15, 20, 21, False, 60)]
    assert runs.take(1, {2: 5}) == []


def test_a_bounded_answer_ends_at_a_multiple_of_align() -> None:
    runs = _index()
    assert runs.take(1, {1: 0}, most=3, align=4) == [Piece(1, 1, 4, 1, False, 40)]
    assert runs.take(1, {1: 0}, most=3) == [Piece(1, 1, 3, 1, False, 30)]
    assert runs.take(1, {1: 0}, most=12, align=8) == [Piece(1, 1, 10, 1, False, 100), Piece(1, 11, 16, 17, False, 60)]
    assert runs.take(1, {1: 0}, most_bytes=25, align=1) == [Piece(1, 1, 3, 1, False, 30)]
    # Bounded by bytes, it goes on to the multiple of align only if the rows to there hold at most as many again.
    assert runs.take(1, {1: 0}, most_bytes=60, align=8) == [Piece(1, 1, 8, 1, False, 80)]
    assert runs.take(1, {1: 0}, most_bytes=25, align=8) == [Piece(1, 1, 3, 1, False, 30)]
    # At least one row, whatever the bound.
    assert runs.take(1, {3: 0}, most=1, most_bytes=1) == [Piece(3, 1, 4, 16, True, 40)]


def test_upto_ends_the_answer_before_the_first_row_it_does_not_cover() -> None:
    runs = _index()
    assert runs.take(1, {1: 0, 2: 0}, upto={1: 6, 2: 5}) == [Piece(1, 1, 6, 1, False, 60)]
    assert runs.take(1, {1: 0, 2: 0, 3: 0}, upto={1: 10, 2: 5, 3: 2}) == [
        Piece(1, 1, 10, 1, False, 100),
        Piece(2, 1, 5, 11, False, 50),
    ]  # the span is not covered whole: nothing after it either


def test_rows_out_of_order_are_refused_and_too_many_runs_are_not_kept() -> None:
    runs = RunIndex()
    assert runs.add(5, 1, 1, 1, 1)
    with pytest.raises(ValueError):
        runs.add(5, 2, 1, 1, 1)
    for n in range(1, MOST_RUNS):
        assert runs.add(5 + n, n % 2 + 1, n, n, 1)  # alternating origins: a run per row
    assert len(runs) == MOST_RUNS
    assert not runs.add(5 + MOST_RUNS, 1 if MOST_RUNS % 2 else 2, 10**6, 10**6, 1)
