"""torch.library.opcheck on every op (schema, fake kernel, autograd registration, AOT dispatch), one
signature per op (wrapper = schema), and no silent backward."""
import inspect

import pytest
import torch

from lcattn import ops


def cases(device):
    def i32(v):
        return torch.tensor(v, dtype=torch.int32, device=device)

    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=device).to(dtype)

    bf = torch.bfloat16
    ring_kv, ring_score = ops.compress_state(2, 4, 16, True, device)
    q, kv, ckv = rand(2, 3, 4, 32, dtype=bf), rand(2, 10, 32, dtype=bf), rand(2, 5, 32, dtype=bf)
    attn = (q, kv, i32([0, 0]), i32([4, 7]), ckv)
    sink, inv_freq = rand(4), torch.rand(8, device=device)
    indices = i32([[[0, -1], [3, 4], [2, -1]], [[1, 2], [-1, -1], [0, 4]]])
    iq, iw, ik = rand(2, 3, 2, 16, dtype=bf), rand(2, 3, 2), rand(2, 6, 16, dtype=bf)
    e4m3 = torch.float8_e4m3fn
    fq, fk, scales = rand(2, 3, 2, 16).to(e4m3), rand(2, 6, 16).to(e4m3), torch.rand(2, 6, device=device)
    x, w = rand(6, 8, dtype=bf), rand(3, 16, 8, dtype=bf)
    return {
        "compress_kv": (rand(2, 9, 16), rand(2, 9, 16), i32([9, 5]), i32([0, 3]), ring_kv, ring_score, rand(4, 16),
                        rand(8), torch.rand(2, device=device), torch.zeros(2, 4, 8, device=device), 4, True, 1e-6),
        "compress_kv (fp8)": (rand(2, 9, 16), rand(2, 9, 16), i32([9, 5]), i32([0, 3]),
                              *ops.compress_state(2, 4, 16, True, device), rand(4, 16), rand(8),
                              torch.rand(2, device=device), torch.zeros(2, 4, 8, device=device).to(e4m3), 4, True,
                              1e-6, torch.zeros(2, 4, device=device)),
        "compress_kv (kv_fp8)": (rand(2, 9, 16), rand(2, 9, 16), i32([9, 5]), i32([0, 3]),
                                 *ops.compress_state(2, 4, 16, True, device), rand(4, 16), rand(8),
                                 torch.rand(2, device=device),
                                 torch.zeros(2, 4, ops.kv_fp8_bytes(8, 4), dtype=torch.uint8, device=device), 4, True,
                                 1e-6),
        "indexer_scores": (iq, iw, ik, i32([2, 20]), 4),
        "topk_indices": (rand(3, 20), 5),
        "indexer_scores (fp8)": (fq, iw, fk, i32([2, 20]), 4, scales),
        "indexer_topk": (iq, iw, ik, i32([2, 20]), 3, 4, 2),
        "indexer_topk (fp8)": (fq, iw, fk, i32([2, 20]), 3, 4, 2, scales),
        "gather_rows": (ckv, indices),
        "sparse_attn": (*attn, indices, sink, inv_freq, 0.1, 4),
        "sparse_attn (defaults)": (*attn, indices, sink, inv_freq),
        "dense_attn": (*attn, sink, inv_freq, 4, 0.1, 4),
        "sparse_attn (kv_fp8)": (*attn[:4], ops.quantize_kv_fp8(ckv, 16), indices, sink, inv_freq),
        "dense_attn (kv_fp8)": (*attn[:4], ops.quantize_kv_fp8(ckv, 16), sink, inv_freq, 4),
        "grouped_gemm_contiguous": (x, w, i32([0, 2, 2, 6])),
        "grouped_gemm_masked": (rand(3, 4, 8, dtype=bf), w, i32([4, 0, 2])),
        "moe_route": (rand(5, 8), 3, 1.5, rand(8)),
        "moe_permute": (x, i32([[0, 1], [2, 0], [1, 2], [0, 2], [1, 0], [2, 1]]), 3),
        "moe_unpermute": (rand(12, 8, dtype=bf), i32([[0, 5], [11, 2]]), rand(2, 2)),
        "moe_experts": (x, rand(6, 2), i32([[0, 1], [2, 0], [1, 2], [0, 2], [1, 0], [2, 1]]), w,
                        rand(3, 8, 8, dtype=bf), 10.0),
        "hc_sinkhorn": (rand(2, 3, 4, 4), 20, 1e-6),
        "hc_sinkhorn (defaults)": (rand(5, 4, 4), 3),
        "hc_post": (rand(2, 3, 4, 16, dtype=bf), rand(2, 3, 16, dtype=bf), rand(2, 3, 4), rand(2, 3, 4, 4)),
        "hc_post (fp32)": (rand(5, 4, 12), rand(5, 12), rand(5, 4), rand(5, 4, 4)),
        "hc_collapse": (rand(2, 3, 4, 16, dtype=bf), rand(2, 3, 4)),
    }


@pytest.mark.parametrize("name", list(cases("cpu")))
def test_opcheck(device, name):
    args = cases(device)[name]
    # SchemaCheckMode compares the inputs before and after with arithmetic float8 lacks on the CPU.
    utils = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    utils = utils if name.endswith("(fp8)") else ("test_schema", *utils)
    torch.library.opcheck(getattr(torch.ops.lcattn, name.split()[0]).default, args, test_utils=utils)


OPS = sorted({name.split()[0] for name in cases("cpu")})


@pytest.mark.parametrize("name", OPS)
def test_wrapper_takes_the_schema(name):
    """ops.<name> has the schema's arguments, in its order, with its defaults, so a positional call
    to the wrapper and to torch.ops.lcattn.<name> mean the same."""
    schema = getattr(torch.ops.lcattn, name).default._schema
    wrapper = inspect.signature(getattr(ops, name)).parameters
    assert list(wrapper) == [a.name for a in schema.arguments]
    for arg in schema.arguments:
        want = arg.default_value if arg.has_default_value() else inspect.Parameter.empty
        assert wrapper[arg.name].default == want, f"{name}({arg.name}): wrapper default differs from the schema's"


def test_no_silent_backward():
    q, kv, kv_start, q_start, ckv, sink, inv_freq = cases("cpu")["dense_attn"][:7]
    sink = sink.clone().requires_grad_()
    with pytest.raises(RuntimeError, match=r"\[lcattn\] dense_attn: an input requires grad, but the lcattn ops "
                                           r"have no backward"):
        ops.dense_attn(q, kv, kv_start, q_start, ckv, sink, inv_freq, 4)
    with torch.no_grad():
        out, _ = ops.dense_attn(q, kv, kv_start, q_start, ckv, sink, inv_freq, 4)
    with torch.inference_mode():
        assert torch.equal(ops.dense_attn(q, kv, kv_start, q_start, ckv, sink, inv_freq, 4)[0], out)


@pytest.mark.parametrize("name", list(cases("cpu")))
def test_meta_tensor_among_cpu_ones_is_an_error(name):
    """A meta tensor among CPU ones (a parameter left unloaded) reaches the op's fake kernel, which is
    also its Meta kernel: it raises as the adapters do rather than return empty tensors as a result."""
    args = list(cases("cpu")[name])
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    if len(tensors) < 2:
        pytest.skip("one tensor: all meta is a meta call")
    last = tensors[-1]
    args[last] = args[last].to("meta")
    schema = getattr(torch.ops.lcattn, name.split()[0]).default._schema
    with pytest.raises(RuntimeError, match=rf"\[lcattn\] {name.split()[0]}: {schema.arguments[last].name} must be on "
                                           r"cpu, got meta"):
        getattr(torch.ops.lcattn, name.split()[0])(*args)


def test_fake_kernels_check_the_sizes_of_their_outputs():
    """On meta tensors (and under torch.compile) an integer argument that sizes an output is checked as
    the adapters check it, not turned into a negative or absurd dimension."""
    scores = torch.empty(3, 5, device="meta")
    with pytest.raises(RuntimeError, match=r"\[lcattn\] topk_indices: k must lie in \[0, 65536\], got -1"):
        ops.topk_indices(scores, -1)
    q, w = torch.empty(1, 2, 4, 8, device="meta", dtype=torch.bfloat16), torch.empty(1, 2, 4, device="meta")
    keys, q_start = torch.empty(1, 6, 8, device="meta", dtype=torch.bfloat16), torch.empty(1, device="meta",
                                                                                          dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] indexer_topk: k must lie in \[0, 65536\], got 70000"):
        ops.indexer_topk(q, w, keys, q_start, 70000)
    x, idx = torch.empty(3, 8, device="meta", dtype=torch.bfloat16), torch.empty(3, 2, device="meta",
                                                                                dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_permute: num_experts must lie in \[1, 65536\], got -2"):
        ops.moe_permute(x, idx, -2)
    assert ops.topk_indices(scores, 4).shape == (3, 4)
