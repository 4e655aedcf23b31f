"""The partitioned snapshot's CTID ranges: together they cover every page, and more."""

import re
from itertools import pairwise

import pytest

from user_code.sync.snapshot import page_ranges

BOUND = re.compile(r"ctid (>=|<) '\((\d+),0\)'::tid")


def bounds(condition: str) -> tuple[int | None, int | None]:
    lower = upper = None
    for operator, page in BOUND.findall(condition):
        if operator == ">=":
            lower = int(page)
        else:
            upper = int(page)
    return lower, upper


def test_one_partition_reads_the_whole_table():
    assert page_ranges(1000, 1) == [""]


@pytest.mark.parametrize(("pages", "partitions"), [(1000, 2), (1000, 3), (7, 4), (0, 4), (3, 16)])
def test_ranges_are_contiguous_and_open_at_both_ends(pages, partitions):
    ranges = [bounds(condition) for condition in page_ranges(pages, partitions)]
    assert len(ranges) == partitions
    assert ranges[0][0] is None, "the first range is open below"
    assert ranges[-1][1] is None, "the last range is open above: pages added later are read"
    for (_, upper), (lower, _) in pairwise(ranges):
        assert upper == lower, "a gap or an overlap between two ranges"
