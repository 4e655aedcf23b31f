"""The partitioned snapshot's CTID ranges: every row of the table in exactly one of them."""

import operator
import re

import pytest

from user_code.sync.snapshot import page_ranges

_COMPARISON = re.compile(r"ctid (>=|<) '\((\d+),0\)'::tid")
_OPERATORS = {">=": operator.ge, "<": operator.lt}


def holds(condition: str, page: int) -> bool:
    """Whether a row on `page` (offsets start at 1) meets a WHERE condition made of `ctid`
    comparisons joined by AND or OR: each connective is evaluated as Postgres would."""
    if not condition:
        return True
    parts = re.split(r" (AND|OR) ", condition)
    comparisons, connectives = parts[::2], parts[1::2]
    values = []
    for comparison in comparisons:
        matched = _COMPARISON.fullmatch(comparison)
        assert matched, f"not a ctid comparison: {comparison!r}"
        symbol, bound = matched.groups()
        values.append(_OPERATORS[symbol]((page, 1), (int(bound), 0)))
    groups = [[values[0]]]  # AND binds tighter than OR, as in SQL
    for connective, value in zip(connectives, values[1:], strict=True):
        if connective == "AND":
            groups[-1].append(value)
        else:
            groups.append([value])
    return any(all(group) for group in groups)


def test_one_partition_reads_the_whole_table():
    assert page_ranges(1000, 1) == [""]


def test_three_partitions_of_a_thousand_pages():
    assert page_ranges(1000, 3) == [
        "ctid < '(333,0)'::tid",
        "ctid >= '(333,0)'::tid AND ctid < '(666,0)'::tid",
        "ctid >= '(666,0)'::tid",
    ]


@pytest.mark.parametrize(("pages", "partitions"), [(1000, 2), (1000, 3), (7, 4), (0, 4), (3, 16)])
def test_every_page_is_in_exactly_one_range_and_pages_added_later_too(pages, partitions):
    ranges = page_ranges(pages, partitions)
    assert len(ranges) == partitions
    for page in range(pages + 3):  # the last range is open above: pages added later are read
        holding = [i for i, condition in enumerate(ranges) if holds(condition, page)]
        assert len(holding) == 1, (page, [ranges[i] for i in holding])
