"""The benchmark driver's case lists (bench/python) build on any machine: every family yields
well-formed cases and every module imports, so the driver does not first fail on a GPU."""
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "python"


@pytest.fixture
def driver(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their siblings, as when run from there
    run = importlib.import_module("run")
    for name in ("cases", "cases.attention", "cases.indexer", "cases.moe", "cases.compress"):
        monkeypatch.setattr(importlib.import_module(name), "DEV", "cpu")  # the cases' few eager tensors
    return run


@pytest.mark.parametrize("quick", [True, False])
def test_every_family_yields_well_formed_cases(driver, quick):
    seen = set()
    for family, cases in driver.FAMILIES.items():
        listed = list(cases(quick))
        assert listed, family
        for op, case, flops, nbytes, ours, baselines, *context in listed:
            assert (op, case) not in seen, f"{op} {case} listed twice"
            seen.add((op, case))
            assert flops >= 0 and nbytes > 0 and callable(ours), (op, case)
            assert all(callable(make) for make in baselines.values()), (op, case)
            assert len(context) <= 1 and all(c >= 0 for c in context), (op, case)  # 0: no context


def test_the_bench_scripts_import(driver):
    for name in ("layers", "profile_case", "profile_decode", "profile_layer", "attention_once", "expert_parallel",
                 "decode_gemm"):
        importlib.import_module(name)


def test_switch_settings(driver):
    """--switch: the reference setting first, then one changed switch at a time."""
    assert driver.switch_settings([]) == [{}]
    assert driver.switch_settings(["LCATTN_A=0,1", "LCATTN_B=0,8,4"]) == [
        {"LCATTN_A": "0", "LCATTN_B": "0"}, {"LCATTN_A": "1", "LCATTN_B": "0"},
        {"LCATTN_A": "0", "LCATTN_B": "8"}, {"LCATTN_A": "0", "LCATTN_B": "4"}]
    with pytest.raises(SystemExit, match="NAME=A,B"):
        driver.switch_settings(["LCATTN_A"])
