"""The model computes what the spec says: XSA, causality, SmearGate at BOS, BigramHash, size."""

import pytest
import torch

from trainer.config import TrainerConfig
from trainer.model import GPT, Attention, SmearGate, bigram_hash_indices, count_parameters, exclusive_self_attention

TINY = dict(num_layers=4, model_dim=64, num_heads=4, num_kv_heads=2, vocab_size=64, bos_token_id=1,
            train_seq_len=32, eval_seq_len=32, rope_dims=8, xsa_last_n=2, bigram_vocab_size=97, bigram_dim=16,
            ve_enabled=True, ve_dim=16, ve_layers="2,3")


def tiny_model(**over) -> GPT:
    """A tiny model with every feature on and every weight randomised: the zero-initialised
    projections would otherwise hide whole paths from the tests."""
    torch.manual_seed(0)
    model = GPT(TrainerConfig(**{**TINY, **over}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def test_default_config_has_the_seed_stack_parameter_count():
    # 26,829,913 is the records' model_params for this stack (11L, 512d, MLP3x, BigramHash 2048x128).
    assert count_parameters(GPT(TrainerConfig())) == 26_829_913


def test_default_stack_has_the_2026_04_27_records_parameter_count():
    # A spec without STACK gets the 2026-04-27 stack. Its record's model_params is 35,945,671: that counts the
    # parallel-lane weights of all 11 layers (parallel_resid_lambdas (11, 2), parallel_post_lambdas (11, 2, 2)),
    # of which only layers 8-10 use theirs; caddie makes them only for those: 8 layers x 6 = 48 fewer.
    assert count_parameters(GPT(TrainerConfig.from_dict({}))) == 35_945_671 - 8 * (2 + 2 * 2)


def test_xsa_output_is_orthogonal_to_own_value_per_head_with_gqa():
    cfg = TrainerConfig(**TINY)
    torch.manual_seed(1)
    attn = Attention(cfg, xsa=True, use_fa3=False)
    seen = {}
    attn.proj.register_forward_pre_hook(lambda mod, args: seen.update(y=args[0]))
    x = torch.randn(2, 16, cfg.model_dim)
    attn(x)
    y = seen["y"].view(2, 16, cfg.num_heads, cfg.head_dim)
    v = attn.c_v(x).view(2, 16, cfg.num_kv_heads, cfg.head_dim)
    group = cfg.num_heads // cfg.num_kv_heads
    for h in range(cfg.num_heads):
        v_hat = torch.nn.functional.normalize(v[:, :, h // group], dim=-1)
        assert (y[:, :, h] * v_hat).sum(-1).abs().max() < 1e-5
    # ...and the other KV head's value is not what got removed
    v_other = torch.nn.functional.normalize(v[:, :, 1], dim=-1)
    assert (y[:, :, 0] * v_other).sum(-1).abs().max() > 1e-3


def test_xsa_keeps_the_orthogonal_part_unchanged():
    y = torch.randn(1, 3, 4, 8)
    v = torch.randn(1, 3, 2, 8)
    out = exclusive_self_attention(y, v)
    # removing the v̂ component twice changes nothing more (a projection)
    assert torch.allclose(exclusive_self_attention(out, v), out, atol=1e-6)


@pytest.mark.parametrize("over", [{}, {"unet_skips": False, "mlp_activation": "relu2", "tie_embeddings": False}])
def test_changing_token_i_never_changes_earlier_logits(over):
    model = tiny_model(**over)
    torch.manual_seed(2)
    idx = torch.randint(0, 64, (2, 32))
    idx[:, 10] = 1  # a BOS in the middle exercises the SmearGate mask too
    base = model.forward_logits(idx)
    for i in (0, 5, 11, 20, 31):
        changed = idx.clone()
        changed[:, i] = (changed[:, i] + 7) % 64
        out = model.forward_logits(changed)
        assert torch.equal(out[:, :i], base[:, :i]), f"logits before position {i} changed"
        assert not torch.allclose(out[:, i], base[:, i]), f"position {i} ignores its own token"


def test_smeargate_does_not_blend_across_bos():
    torch.manual_seed(3)
    smear = SmearGate(8, bos_token_id=1)
    with torch.no_grad():
        smear.gate.fill_(2.0)  # strongly open: g ≈ 0.88
    x = torch.randn(1, 6, 8)
    idx = torch.tensor([[5, 6, 7, 1, 8, 9]])
    out = smear(x, idx)
    g = torch.sigmoid(torch.tensor(2.0))
    assert torch.allclose(out[0, 3], (1 - g) * x[0, 3])  # BOS: nothing of the previous document
    assert torch.allclose(out[0, 0], (1 - g) * x[0, 0])  # position 0: zero history
    assert torch.allclose(out[0, 4], (1 - g) * x[0, 4] + g * x[0, 3])  # inside a document: blends
    x2 = x.clone()
    x2[0, 2] += 10.0  # the previous document's last token
    assert torch.equal(smear(x2, idx)[0, 3:], out[0, 3:])


def test_smeargate_at_init_is_an_even_blend():
    smear = SmearGate(4, bos_token_id=1)
    x = torch.randn(1, 3, 4)
    out = smear(x, torch.tensor([[3, 4, 5]]))
    assert torch.allclose(out[0, 1], 0.5 * x[0, 1] + 0.5 * x[0, 0])


def test_bigram_hash_indices_follow_the_formula():
    torch.manual_seed(4)
    rows = 2048
    idx = torch.randint(0, 1024, (3, 50))
    got = bigram_hash_indices(idx, rows)
    for b in range(3):
        assert got[b, 0] == rows - 1
        for i in range(1, 50):
            cur, prev = int(idx[b, i]), int(idx[b, i - 1])
            assert got[b, i] == ((36313 * cur) ^ (27191 * prev)) % (rows - 1)
    assert got.max() < rows and got.min() >= 0


def test_every_switch_builds_and_runs():
    x = torch.randint(0, 64, (2, 16))
    for over in [{"bigram_vocab_size": 0}, {"smear_gate": False}, {"xsa_last_n": 0}, {"rope_dims": 0},
                 {"ln_scale": False}, {"ve_enabled": False}, {"logit_softcap": 0.0}, {"num_layers": 1, "xsa_last_n": 1, "ve_layers": "0"}]:
        model = tiny_model(**over)
        loss = model(x, x)
        assert torch.isfinite(loss), over


def test_zero_initialised_paths_still_learn():
    """BigramHash, value embeddings and the block out-projections start at zero (the model
    is the embedding alone at init), yet after two plain SGD steps every parameter gets
    a gradient: no path is stuck at zero (as zero table AND zero projection would be)."""
    torch.manual_seed(5)
    model = GPT(TrainerConfig(**TINY))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randint(0, 64, (2, 16))
    for _ in range(3):
        opt.zero_grad()
        model(x, x).backward()
        opt.step()
    stuck = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert stuck == []


def test_softcap_bounds_logits():
    model = tiny_model(logit_softcap=5.0)
    with torch.no_grad():
        model.tok_emb.weight.mul_(100)
    logits = model.forward_logits(torch.randint(0, 64, (1, 8)))
    assert logits.abs().max() <= 5.0 and logits.dtype == torch.float32


def test_late_qat_quantises_forward_but_passes_gradients():
    model = tiny_model()
    x = torch.randint(0, 64, (2, 16))
    plain = model(x, x)
    model.set_qat(True)
    quantised = model(x, x)
    assert not torch.equal(plain, quantised)
    quantised.backward()
    assert model.blocks[0].mlp.up.weight.grad.abs().sum() > 0
    model.set_qat(False)
    assert torch.equal(model(x, x), plain)


@pytest.mark.parametrize("residual, expected", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_residual_stream_takes_the_autocast_dtype_only_when_asked(residual, expected):
    # The blocks' inputs (residual x and x0) are what RESIDUAL_DTYPE sets; master weights
    # and their gradients stay fp32 either way, and without autocast nothing changes.
    model = tiny_model(residual_dtype=residual).train()
    seen = []
    model.blocks[1].register_forward_pre_hook(lambda mod, args: seen.append((args[0].dtype, args[1].dtype)))
    idx = torch.randint(0, 64, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(idx, idx)
    loss.backward()
    assert seen[-1] == (expected, expected)
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32) for p in model.parameters())
    model(idx, idx)
    assert seen[-1] == (torch.float32, torch.float32)
