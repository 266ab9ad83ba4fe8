"""The benchmark driver's case lists (bench/python) build on any machine: every family yields
well-formed cases and every module imports, so the driver does not first fail on a GPU; and the
conversion of kv_fp8 entries and window rows into FlashMLA's paged fp8 decode inputs."""
import importlib
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "python"


@pytest.fixture
def driver(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their siblings, as when run from there
    run = importlib.import_module("run")
    for name in ("cases", "cases.attention", "cases.indexer", "cases.moe", "cases.compress", "cases.mhc"):
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
    for name in ("layers", "profile_case", "profile_decode", "profile_prefill", "profile_layer", "attention_once",
                 "expert_parallel", "decode_gemm"):
        importlib.import_module(name)


def test_switch_settings(driver):
    """--switch: the reference setting first, then one changed switch at a time."""
    assert driver.switch_settings([]) == [({}, None)]
    assert driver.switch_settings(["LCATTN_A=0,1", "LCATTN_B=0,8,4:topk_indices,layers"]) == [
        ({"LCATTN_A": "0", "LCATTN_B": "0"}, None), ({"LCATTN_A": "1", "LCATTN_B": "0"}, None),
        ({"LCATTN_A": "0", "LCATTN_B": "8"}, {"topk_indices", "layers"}),
        ({"LCATTN_A": "0", "LCATTN_B": "4"}, {"topk_indices", "layers"})]
    with pytest.raises(SystemExit, match="NAME=A,B"):
        driver.switch_settings(["LCATTN_A"])


def model1_read(cache, tokens):
    """FlashMLA's MODEL1 fp8 page layout read back: token t is row r = t % page of block t // page,
    whose 448 e4m3 and 64 bf16 RoPE values are at byte r * 576 of the block and whose 7 UE8M0
    scales (one per 64 values) and pad byte are at page * 576 + r * 8 -> (bf16 [T, 512], pad [T])."""
    blocks, page = cache.shape[:2]
    raw = torch.as_strided(cache, (blocks, page * 584), (cache.stride(0), 1))  # each block's bytes
    blk, row = tokens // page, tokens % page
    def at(offset, n):
        return raw[blk[:, None], offset[:, None] + torch.arange(n)]  # [T, n] bytes
    nope = at(row * 576, 448).view(torch.float8_e4m3fn).float()
    rope = at(row * 576 + 448, 128).view(torch.bfloat16)
    scales = at(page * 576 + row * 8, 8)
    values = nope * scales[:, :7].view(torch.float8_e8m0fnu).float().repeat_interleave(64, -1)
    return torch.cat((values.bfloat16(), rope), -1), scales[:, 7]


def test_kv_fp8_entries_convert_to_flashmla_pages(driver):
    """kv_fp8_paged puts lcattn's kv_fp8 entries in FlashMLA's MODEL1 pages (blocks shuffled as a block
    table would) and remaps the indices: read back per FlashMLA's layout, every index names the entry
    it named before, with the same values as ops.dequantize_kv_fp8."""
    from cases.attention import kv_fp8_paged

    from lcattn import ops
    torch.manual_seed(0)
    B, N, S, K, page = 3, 150, 2, 96, 64  # N not a multiple of the page: the last block is padded
    x = torch.randn(B, N, 512) * torch.rand(B, N, 1) * 8
    x8 = ops.quantize_kv_fp8(x, 64)
    blocks = B * -(-N // page)
    order = torch.randperm(blocks)
    idx = torch.randint(0, N, (B, S, K), dtype=torch.int32)
    idx[torch.rand(B, S, K) < 0.2] = -1
    everything = torch.arange(N, dtype=torch.int32).expand(B, 1, N)
    for picked in (idx, everything):
        cache, remapped = kv_fp8_paged(x8, picked, page, order)
        assert cache.dtype == torch.uint8 and cache.shape == (blocks, page, 1, 584) and cache.stride(1) == 584
        assert cache.stride(0) % 576 == 0 and remapped.dtype == torch.int32 and remapped.shape == picked.shape
        valid = picked >= 0
        assert torch.equal(remapped >= 0, valid)
        seq = torch.arange(B)[:, None, None].expand_as(picked)[valid]
        got, pad = model1_read(cache, remapped[valid].long())
        want = ops.dequantize_kv_fp8(x8[seq, picked[valid].long()], 512, 64)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)) and not pad.any()
    assert remapped.unique().numel() == B * N  # distinct entries, distinct cache rows


def test_window_indices_follow_the_window(driver):
    """FlashMLA's window indices: row j where the query at p reads it (SPEC 0.1), -1 elsewhere."""
    from cases.attention import window_indices
    kv_start = torch.tensor([-127, 10, -5], dtype=torch.int32)
    q_start = torch.tensor([0, 137, 2], dtype=torch.int32)
    idx = window_indices(kv_start, q_start, 2, 130)  # [3, 2, 192]
    assert idx.shape == (3, 2, 192) and idx.dtype == torch.int32
    for b in range(3):
        for s in range(2):
            p = int(q_start[b]) + s
            want = [j if max(0, p - 127) <= int(kv_start[b]) + j <= p and j < 130 else -1 for j in range(192)]
            assert idx[b, s].tolist() == want


@pytest.mark.cuda
def test_graphed_replay_keeps_its_inputs():
    """A graphed call holds the tensors its graph reads: after its maker returns and the allocator
    hands out memory again, a replay still reads the original values."""
    import torch

    from lcattn.testing.bench import graphed

    def make():
        x = torch.arange(1 << 20, device="cuda", dtype=torch.float32)
        return graphed(lambda: x * 2)
    replay = make()
    others = [torch.full((1 << 20,), -1.0, device="cuda") for _ in range(4)]
    assert torch.equal(replay(), torch.arange(1 << 20, device="cuda", dtype=torch.float32) * 2), len(others)
