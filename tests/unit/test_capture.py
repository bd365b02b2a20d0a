"""The one output rule every executor follows: lines cut at max_line_bytes, the run capped at max_output_bytes."""

from __future__ import annotations

from flwd_server.runs.capture import (
    LIMIT_NOTICE,
    MIN_MASKED_BYTES,
    TRUNCATED_MARK,
    OutputBudget,
    SecretMask,
    StepOutput,
)


class Lines:
    def __init__(self) -> None:
        self.got: list[tuple[str, str, bool]] = []

    def __call__(self, stream: str, lines: list[tuple[str, bool]]) -> None:
        self.got.extend((stream, line, truncated) for line, truncated in lines)


def stored_bytes(got: list[tuple[str, str, bool]]) -> int:
    return sum(len(line) + 1 for _, line, _ in got if not line.startswith("[flwd: output limit"))


def test_a_line_is_stored_whole_or_not_at_all_and_nothing_after_the_first_that_does_not_fit():
    lines = Lines()
    out = StepOutput(lines, OutputBudget(1024), max_line_bytes=4096)
    out.feed("stdout", b"a" * 600 + b"\n" + b"b" * 600 + b"\n" + b"c\n")  # 601 fits, 601 does not, then 2 would
    out.feed("stderr", b"d\n")
    out.finish()
    assert [line for _, line, _ in lines.got] == ["a" * 600, LIMIT_NOTICE.format(limit=1024)]
    assert out.budget.used == 601 and out.budget.dropped == 601 + 2 + 2


def test_the_cap_is_the_run_s_over_all_its_steps():
    budget = OutputBudget(1024)
    first, second = Lines(), Lines()
    StepOutput(first, budget, 4096).feed("stdout", b"x" * 7 + b"\n" * 1 + (b"y" * 7 + b"\n") * 99)  # 800 bytes
    later = StepOutput(second, budget, 4096)
    later.feed("stdout", (b"z" * 7 + b"\n") * 100)
    later.finish()
    assert stored_bytes(first.got) == 800
    assert stored_bytes(second.got) == 224 and budget.used == 1024  # exactly full, never over
    assert [line for _, line, _ in second.got].count(LIMIT_NOTICE.format(limit=1024)) == 1
    assert second.got[-1][1] == LIMIT_NOTICE.format(limit=1024)


def test_long_lines_are_cut_and_marked_and_their_rest_skipped():
    lines = Lines()
    out = StepOutput(lines, OutputBudget(1 << 20), max_line_bytes=4)
    out.feed("stdout", b"abcdefgh")
    out.feed("stdout", b"ijk\nok\r\n")
    out.feed("stderr", b"no newline at the end")
    out.finish()
    assert lines.got == [
        ("stdout", "abcd" + TRUNCATED_MARK, True),
        ("stdout", "ok", False),
        ("stderr", "no n" + TRUNCATED_MARK, True),
    ]


def test_flwd_s_own_notes_are_not_counted():
    lines = Lines()
    budget = OutputBudget(1024)
    StepOutput(lines, budget, 4096).note("cannot prepare image x: gone")
    assert lines.got == [("stderr", "[flwd: cannot prepare image x: gone]", False)] and budget.used == 0


def masked(chunks: list[bytes], secrets: list[str], max_line_bytes: int = 4096) -> list[str]:
    lines = Lines()
    out = StepOutput(lines, OutputBudget(1 << 20), max_line_bytes, SecretMask(secrets))
    for chunk in chunks:
        out.feed("stdout", chunk)
    out.finish()
    return [line for _, line, _ in lines.got]


def test_a_secret_is_masked_wherever_it_stands_in_a_line():
    assert masked([b"token=hunter22 and again hunter22\n", b"hunter22"], ["hunter22"]) == [
        "token=*** and again ***",
        "***",
    ]


def test_a_secret_split_across_two_reads_is_masked():
    assert masked([b"the key is hun", b"ter22, noted\n"], ["hunter22"]) == ["the key is ***, noted"]


def test_a_secret_of_several_lines_is_masked_on_each_of_its_lines():
    key = "-----BEGIN KEY-----\nMIIEabcdefgh\r\nijklmnop\n-----END KEY-----"
    printed = b"key: -----BEGIN KEY-----\nMIIEabcdefgh\nijklmnop\n-----END KEY----- done\n"
    assert masked([printed], [key]) == ["key: ***", "***", "***", "*** done"]


def test_a_secret_inside_a_cut_line_or_straddling_the_cut_is_masked():
    mark = TRUNCATED_MARK
    assert masked([b"x" * 10 + b"hunter22" + b"y" * 100 + b"\n"], ["hunter22"], max_line_bytes=40) == [
        "x" * 10 + "***" + "y" * 22 + mark
    ]
    # the cut leaves "hunt": the start of the secret is masked too, in a complete line and in an unfinished one
    assert masked([b"x" * 36 + b"hunter22 and more\n"], ["hunter22"], max_line_bytes=40) == ["x" * 36 + "***" + mark]
    assert masked([b"x" * 36 + b"hunt", b"er22 and more"], ["hunter22"], max_line_bytes=40) == ["x" * 36 + "***" + mark]
    assert masked([b"x" * 39 + b"h" + b"unter22\n"], ["hunter22"], max_line_bytes=40) == ["x" * 39 + "***" + mark]


def test_values_shorter_than_the_minimum_are_not_masked_and_the_longer_of_two_overlapping_wins():
    assert MIN_MASKED_BYTES == 4
    assert masked([b"a cat sat on abc\n"], ["abc", "a"]) == ["a cat sat on abc"]
    assert masked([b"pass=hunter22!\n"], ["hunt", "hunter22!"]) == ["pass=***"]
    assert not SecretMask(["abc", "", "a\nbc"])


def test_the_budget_counts_what_is_stored():
    lines = Lines()
    out = StepOutput(lines, OutputBudget(1 << 20), 4096, SecretMask(["a-long-secret-value"]))
    out.feed("stdout", b"a-long-secret-value\n")
    out.finish()
    assert out.budget.used == len("***\n")
