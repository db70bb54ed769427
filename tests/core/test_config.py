from dataclasses import dataclass, field
from typing import Literal

import pytest

from edgecnn.config import check, from_dict, to_dict
from edgecnn.errors import RecipeError


@dataclass
class Inner:
    k: int = 1


@dataclass
class Cfg:
    mode: Literal["ptq", "qat"] = "ptq"
    ratio: float = 0.5
    names: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    opt: int | None = None

    def __post_init__(self):
        check(0 < self.ratio < 1, "ratio", f"{self.ratio} is outside (0, 1)")


def test_round_trip():
    cfg = from_dict(Cfg, {"mode": "qat", "ratio": "0.25", "names": "a", "inner": {"k": 3}})
    assert cfg == Cfg("qat", 0.25, ["a"], Inner(3))
    assert from_dict(Cfg, to_dict(cfg)) == cfg


def test_typo_gets_did_you_mean_and_allowed_keys():
    with pytest.raises(RecipeError) as e:
        from_dict(Cfg, {"raito": 0.3}, "stages[1].prune")
    assert e.value.key == "stages[1].prune.raito"
    assert "Did you mean 'ratio'?" in str(e.value) and "mode, ratio" in str(e.value)


def test_bad_literal_lists_allowed_values():
    with pytest.raises(RecipeError, match=r"mode: 'qta' is not allowed. Did you mean 'qat'\? Allowed: 'ptq', 'qat'"):
        from_dict(Cfg, {"mode": "qta"})


def test_post_init_error_names_full_key():
    with pytest.raises(RecipeError) as e:
        from_dict(Cfg, {"ratio": 1.5}, "stages[1].prune")
    assert e.value.key == "stages[1].prune.ratio" and "1.5 is outside (0, 1)" in str(e.value)


def test_nested_and_type_errors():
    with pytest.raises(RecipeError, match=r"x.inner.k: expected an integer, got 'many'"):
        from_dict(Cfg, {"inner": {"k": "many"}}, "x")
    with pytest.raises(RecipeError, match="expected true or false"):
        @dataclass
        class B:
            on: bool = False
        from_dict(B, {"on": "yes"})
