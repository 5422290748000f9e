"""flashtron as a Hugging Face Transformers attention implementation, on a tiny random Llama.

No downloads: the model is built from a LlamaConfig with random weights.  flashtron's logits must
match attn_implementation="sdpa" (torch's own kernels) within float32 tolerance, on full and
left-padded batches, and greedy generation with a cache must produce the same tokens.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from flashtron.integrations.transformers import NAME, register  # noqa: E402
from conftest import INTERPRET  # noqa: E402


def _models(name=NAME, **config_overrides):
    """The same random weights under "sdpa" and flashtron's implementation `name`."""
    register(name)
    settings = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    settings.update(config_overrides)
    # One config each: from_config records the implementation on the config it is given.
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**settings),
                                                              attn_implementation="sdpa").eval()
    ours = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**settings),
                                                         attn_implementation=name).eval()
    ours.load_state_dict(reference.state_dict())
    assert reference.config._attn_implementation == "sdpa" and ours.config._attn_implementation == name
    return reference, ours


def _left_padded_batch(lengths, seqlen):
    input_ids = torch.randint(1, 128, (len(lengths), seqlen))
    attention_mask = torch.zeros(len(lengths), seqlen, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, seqlen - length:] = 1
    return input_ids, attention_mask


@pytest.mark.parametrize("name", [NAME, "flashtron"])  # the second: a name transformers counts as flash-attention
def test_logits_match_sdpa_without_padding(name):
    reference, ours = _models(name)
    assert "flash" not in NAME
    input_ids = torch.randint(0, 128, (2, 11))
    with torch.no_grad():
        expected, got = reference(input_ids).logits, ours(input_ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_logits_match_sdpa_on_a_left_padded_batch():
    reference, ours = _models()
    input_ids, attention_mask = _left_padded_batch([9, 4, 1], 9)
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask).logits
        got = ours(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()  # padded positions carry no meaning in either implementation
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-4)


def test_gradients_match_sdpa():
    reference, ours = _models()
    input_ids, attention_mask = _left_padded_batch([7, 5], 7)
    losses = []
    for model in (reference, ours):
        model.zero_grad()
        loss = model(input_ids, attention_mask=attention_mask, labels=input_ids.masked_fill(attention_mask == 0,
                                                                                              -100)).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (name, p_ref), p_ours in zip(reference.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_a_4d_mask_goes_through_the_bias():
    """A caller-built 4-D float mask (here: causal plus a blocked key) reaches the kernels as attn_bias."""
    reference, ours = _models()
    input_ids = torch.randint(0, 128, (1, 8))
    mask = torch.full((8, 8), float("-inf")).triu(1)
    mask[5:, 2] = float("-inf")
    mask = mask[None, None]
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=mask).logits
        got = ours(input_ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(INTERPRET, reason="exercises the Python glue of generate(); the plain run covers it")
def test_greedy_generation_gives_the_same_tokens():
    reference, ours = _models()
    input_ids, attention_mask = _left_padded_batch([6, 3], 6)
    settings = dict(attention_mask=attention_mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = reference.generate(input_ids, **settings)
        got = ours.generate(input_ids, **settings)
    assert torch.equal(got, expected)


def test_packed_sequences_from_position_ids():
    """Two sequences packed in one row, told apart only by position_ids: transformers' own mask pattern
    (not plain causal) reaches flashtron as an exact 4-D mask."""
    reference, ours = _models()
    input_ids = torch.randint(0, 128, (1, 10))
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
    with torch.no_grad():
        # transformers looks for packing only without a cache
        expected = reference(input_ids, position_ids=position_ids, use_cache=False).logits
        got = ours(input_ids, position_ids=position_ids, use_cache=False).logits
        alone = ours(input_ids[:, 4:], use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[:, 4:], alone, rtol=1e-4, atol=1e-4)


def test_gpt_oss_sinks_and_window_under_the_default_name():
    """gpt-oss (attention sinks, a sliding window on alternate layers, padding) against "eager".  Under a name
    with "flash" in it transformers would swap in a hub kernel for this model; the default name keeps flashtron."""
    register()
    config = dict(vocab_size=97, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, head_dim=16, num_local_experts=4,
                  num_experts_per_tok=2, sliding_window=4)
    torch.manual_seed(0)
    reference = transformers.GptOssForCausalLM._from_config(transformers.GptOssConfig(**config),
                                                            attn_implementation="eager").eval()
    with torch.no_grad():
        for layer in reference.model.layers:
            layer.self_attn.sinks.normal_(0, 1.5)
    ours = transformers.GptOssForCausalLM._from_config(transformers.GptOssConfig(**config),
                                                       attn_implementation=NAME).eval()
    ours.load_state_dict(reference.state_dict())
    assert ours.config._attn_implementation == NAME
    input_ids = torch.randint(1, 97, (3, 13))
    attention_mask = torch.ones(3, 13, dtype=torch.long)
    attention_mask[1, 9:] = 0
    attention_mask[2, :5] = 0
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask).logits
        got = ours(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-4)
