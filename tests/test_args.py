from __future__ import annotations

from dataclasses import dataclass, field

from lrenv.agents.args import dataclass_parser


@dataclass
class _Args:
    tasks: list[str] = field(default_factory=lambda: ["A"], metadata={"help": "tasks"})
    seed: int = field(default=0, metadata={"help": "seed"})


def _parse(argv):
    return _Args(**vars(dataclass_parser(_Args, "prog", "test").parse_args(argv)))


def test_a_list_flag_replaces_its_default_and_a_repeated_one_adds_to_it():
    assert _parse([]).tasks == ["A"]
    assert _parse(["--tasks", "B", "C"]).tasks == ["B", "C"]
    assert _parse(["--tasks", "B", "--seed", "3", "--tasks", "C", "D"]) == _Args(tasks=["B", "C", "D"], seed=3)
    assert _parse([]).tasks == ["A"]  # the default is not changed by an earlier parse
