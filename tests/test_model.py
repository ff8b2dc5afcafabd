from pathlib import Path

import pytest
import torch

from gpt.config.loader import load_config
from gpt.model.config import ModelConfig
from gpt.model.generate import filter_logits, generate
from gpt.model.transformer import GPT, KVCache, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]


def tiny(norm="post", **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=12, dropout=0.0, norm=norm, **kw))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_shapes_and_causality(norm):
    model = tiny(norm).eval()
    idx = torch.randint(0, 50, (3, 10))
    h = model(idx)
    assert h.shape == (3, 10, 50)
    assert model.hidden_states(idx).shape == (3, 10, 16)
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 50
    assert torch.allclose(model(changed)[:, :-1], h[:, :-1], atol=1e-6)  # the future does not leak back


def test_post_and_pre_ln_differ_in_structure():
    assert isinstance(tiny("post").ln_f, torch.nn.Identity)
    assert isinstance(tiny("pre").ln_f, torch.nn.LayerNorm)


def test_embeddings_are_tied_and_saved_once(tmp_path):
    model = tiny()
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    idx = torch.randint(0, 50, (1, 8))
    assert torch.equal(model.eval()(idx), again.eval()(idx))
    assert not any("lm_head" in k for k in model.state_dict())


def test_too_long_input_is_rejected():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 13, dtype=torch.long))


def test_generation_greedy_is_deterministic_and_stops():
    model = tiny()
    a = generate(model, [1, 2, 3], 5, temperature=0)
    assert a == generate(model, [1, 2, 3], 5, temperature=0) and len(a) == 5
    assert generate(model, [1, 2, 3], 5, temperature=0, stop_id=a[0]) == []


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert torch.isinf(filter_logits(logits, 2, None)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, None, 0.7)[0])
    assert kept.tolist() == [True, True, False, False]


def test_padded_vocab_is_never_predicted(tmp_path):
    model = tiny(pad_vocab_to=64).eval()
    assert model.wte.weight.shape[0] == 64
    with torch.no_grad():
        model.wte.weight[50:] = 100.0  # padding rows that would win every argmax if they leaked
    idx = torch.randint(0, 50, (2, 6))
    assert model(idx).shape == (2, 6, 50)
    assert all(t < 50 for t in generate(model, [1, 2], 8, temperature=0))
    save_model(model, tmp_path)
    assert torch.equal(load_model(tmp_path).eval()(idx), model(idx))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_kv_cache_gives_the_same_logits(norm):
    model = tiny(norm).eval()
    idx = torch.randint(0, 50, (2, 11))
    full = model(idx)
    cache = KVCache(model.config, 2, idx.device, torch.float32)
    parts = [model(idx[:, :4], cache), model(idx[:, 4:5], cache), model(idx[:, 5:11], cache)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    assert cache.pos == 11


@pytest.mark.parametrize(
    "opts", [{"temperature": 0}, {"temperature": 0.9, "top_k": 10}, {"temperature": 1.0, "top_p": 0.9}]
)
def test_cached_and_uncached_generation_are_identical(opts):
    model = tiny()

    def run(use_cache):
        gen = torch.Generator().manual_seed(3)
        return generate(model, [1, 2, 3], 20, use_cache=use_cache, generator=gen, **opts)  # past block_size 12

    assert run(True) == run(False)
    assert len(run(True)) == 20


@pytest.mark.parametrize(
    ("preset", "vocab", "millions"), [("gpt1.yaml", 40478, 116.5), ("gpt2-small.yaml", 50257, 124.4)]
)
def test_presets_load_and_have_the_published_size(preset, vocab, millions):
    cfg = load_config(ROOT / "configs" / preset)
    gcfg = cfg.model.with_vocab(vocab)
    with torch.device("meta"):
        model = GPT(gcfg)
    n = model.num_params(non_embedding=False) - (gcfg.padded_vocab_size - vocab) * gcfg.n_embd
    assert n / 1e6 == pytest.approx(millions, rel=0.005)


def test_the_training_loss_over_the_padded_width_is_the_loss_over_the_real_vocabulary():
    """lm_loss keeps the padded logits (-inf on padding) instead of slicing them: same value, same gradients."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, dropout=0.0, pad_vocab_to=64).with_vocab(70))
    assert model.config.padded_vocab_size == 128
    idx, targets = torch.randint(0, 70, (3, 16)), torch.randint(0, 70, (3, 16))
    targets[0, :5] = -100  # ignored positions (fine-tuning's padding)
    fast = model.next_token_loss(idx, targets)
    fast.backward()
    fast_grad = model.wte.weight.grad.clone()
    model.zero_grad()
    sliced = torch.nn.functional.cross_entropy(model(idx).reshape(-1, 70), targets.reshape(-1), ignore_index=-100)
    sliced.backward()
    assert torch.allclose(fast, sliced, atol=1e-6)
    assert torch.allclose(fast_grad, model.wte.weight.grad, atol=1e-7)
    assert fast_grad[70:].abs().max() == 0  # padding rows learn nothing
    assert "padding_logit_bias" not in model.state_dict()  # derived from the config, never saved


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_the_config_counts_the_parameters_the_module_has(norm):
    cfg = ModelConfig(n_layer=3, n_head=2, n_embd=48, block_size=32, norm=norm, pad_vocab_to=64).with_vocab(100)
    model = GPT(cfg)
    counted = sum(p.numel() for p in model.parameters())
    assert cfg.num_params(False) == model.num_params(non_embedding=False) == counted
    assert cfg.num_params() == counted - model.wpe.weight.numel()
