import pytest
import torch

from gpt.generate import filter_logits, generate
from gpt.model import GPT, GPTConfig, load_model, save_model


def tiny(norm="post", **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=12, dropout=0.0, norm=norm, **kw))


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
