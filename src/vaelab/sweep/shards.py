"""A sweep in shares: ``vaelab sweep … --shard I/N`` trains the I-th of N shares of the grid.

Many machines (a SLURM job array, GNU parallel, a few terminals) can then train one sweep into
one folder on a shared file system. The split is a pure function of the grid, so every share
computes the same one without talking to the others:

- the unit of work is a group of members that train together as one stacked model
  (``vaelab.sweep.run.groups_of``): a group is never cut, so a member trains in the same stack,
  and ends with the same weights bit for bit, as in the sweep run whole;
- groups go, largest first, to the share with the fewest members so far (ties: the lower
  share), which balances the members across shares.

A grid of G groups therefore splits into at most G shares; more are refused with the number to
use. Shares write only their own members' run directories; the first share to start writes
sweep.json (created atomically: see ``prepare_share``) and the others check theirs against it.
``vaelab sweep --collect SWEEP`` writes metrics.csv and sweep.html once every member is done.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

from vaelab.sweep.grid import GridError

T = TypeVar("T")

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), 1 <= I <= N: the I-th share of N (as SLURM_ARRAY_TASK_ID counts from 1)."""
    match = _SHARD.match(str(text))
    if match is None:
        raise GridError(f"--shard {text!r}: give the share as I/N, the I-th of N shares counted from 1 "
                        "(e.g. --shard 2/4; in a SLURM array: --shard $SLURM_ARRAY_TASK_ID/4)")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise GridError(f"--shard {text}: I/N needs 1 <= I <= N (shares are counted from 1); got I = {index}, "
                        f"N = {count}")
    return index, count


def split_groups(groups: Sequence[Sequence[T]], count: int) -> list[list[Sequence[T]]]:
    """The groups of each of ``count`` shares (list i: share i + 1), each share in grid order.

    Largest group first (ties: grid order) to the share with the fewest members (ties: the
    lower share): deterministic, and balanced in members. Refuses more shares than groups,
    which would leave a share with nothing to train.
    """
    if count > len(groups):
        raise GridError(f"--shard …/{count}: this grid trains as {len(groups)} group(s) of members that share one "
                        f"stacked model, and a group is never split (its members would end with other weights "
                        f"than in the whole sweep): use at most {len(groups)} shares")
    loads = [0] * count
    chosen: list[list[int]] = [[] for _ in range(count)]
    for g in sorted(range(len(groups)), key=lambda g: (-len(groups[g]), g)):
        share = min(range(count), key=lambda s: (loads[s], s))
        chosen[share].append(g)
        loads[share] += len(groups[g])
    return [[groups[g] for g in sorted(picked)] for picked in chosen]
