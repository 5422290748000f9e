"""flashtron.keras against Keras 3's own attention (PyTorch backend, on the CPU).

dot_product_attention is held to flash-attn's rule against Keras's own path: Keras in float64
is the truth, Keras in float32 the yardstick.  The layers must match keras.layers.MultiHeadAttention
with the same weights, save and load, and train with fit(); enable() must route Keras's own
functions to flashtron and leave Keras's path for what flashtron does not do.
"""

import os

import pytest
import torch

if os.environ.setdefault("KERAS_BACKEND", "torch") != "torch":
    pytest.skip("flashtron.keras needs KERAS_BACKEND=torch", allow_module_level=True)
keras = pytest.importorskip("keras")

import flashtron.keras as fk  # noqa: E402
from flashtron.keras import ops as fk_ops  # noqa: E402
from conftest import INTERPRET  # noqa: E402
from reference import assert_within_rule  # noqa: E402

KERAS_ATTENTION = keras.src.backend.torch.nn.dot_product_attention  # Keras's own PyTorch implementation


@pytest.fixture
def count_flashtron_calls(monkeypatch):
    calls = []
    original = fk_ops.flash_attn_func

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(fk_ops, "flash_attn_func", counting)
    return calls


@pytest.fixture
def enabled():
    fk.enable()
    yield
    fk.disable()
    keras.config.enable_flash_attention()  # Keras's default ("auto")


def _qkv(batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim):
    return (torch.randn(batch, seqlen_q, heads, head_dim), torch.randn(batch, seqlen_k, heads_kv, head_dim),
            torch.randn(batch, seqlen_k, heads_kv, head_dim))


def _against_keras(query, key, value, bias=None, **kwargs):
    """Output and input gradients (bias's too) within the rule against Keras's own path."""
    leaves = [t for t in (query, key, value, bias) if t is not None]
    grad_out = torch.randn(query.shape[:-1] + value.shape[-1:])

    def run(fn, dtype):
        inputs = [t.to(dtype).requires_grad_() for t in leaves]
        out = fn(*inputs[:3], bias=inputs[3] if bias is not None else None, **kwargs)
        return out, torch.autograd.grad(out, inputs, grad_out.to(dtype))

    ours = run(fk.dot_product_attention, torch.float32)
    truth, plain = run(KERAS_ATTENTION, torch.float64), run(KERAS_ATTENTION, torch.float32)
    assert_within_rule("out", ours[0], truth[0], plain[0], 2)
    for name, g, g_truth, g_plain in zip(["dquery", "dkey", "dvalue", "dbias"], ours[1], truth[1], plain[1]):
        assert_within_rule(name, g, g_truth, g_plain, 3)


@pytest.mark.parametrize("seqlen_q,seqlen_k", [(9, 9), (5, 12), (12, 5)])
def test_causal_masks_and_gqa_match_keras(seqlen_q, seqlen_k):
    query, key, value = _qkv(2, seqlen_q, seqlen_k, 4, 2, 16)
    mask = torch.rand(2, 1, seqlen_q, seqlen_k) > 0.3
    mask[..., 0] = True  # no empty rows: Keras averages those where flashtron gives 0
    _against_keras(query, key, value, is_causal=True)
    _against_keras(query, key, value, mask=mask, is_causal=True, scale=0.2)


def test_bias_and_its_gradient_match_keras():
    query, key, value = _qkv(1, 7, 10, 2, 1, 8)
    _against_keras(query, key, value, bias=torch.randn(2, 7, 10))


def test_soft_cap_is_tanh_on_the_scaled_scores():
    query, key, value = _qkv(1, 6, 8, 2, 2, 8)
    cap, scale = 2.0, 0.7
    scores = torch.einsum("bqhd,bkhd->bhqk", query.double(), key.double()) * scale
    probs = torch.softmax(cap * torch.tanh(scores / cap), dim=-1)
    truth = torch.einsum("bhqk,bkhd->bqhd", probs, value.double())
    plain_probs = torch.softmax(cap * torch.tanh(torch.einsum("bqhd,bkhd->bhqk", query, key) * scale / cap), -1)
    plain = torch.einsum("bhqk,bkhd->bqhd", plain_probs, value)
    ours = fk.dot_product_attention(query, key, value, scale=scale, attn_logits_soft_cap=cap)
    assert_within_rule("out", ours, truth, plain, 2)


def test_functional_model_with_symbolic_inputs():
    inputs = [keras.Input((6, 2, 8)), keras.Input((9, 2, 8)), keras.Input((9, 2, 8))]
    model = keras.Model(inputs, fk.dot_product_attention(*inputs, is_causal=True))
    query, key, value = _qkv(3, 6, 9, 2, 2, 8)
    torch.testing.assert_close(model([query, key, value]), KERAS_ATTENTION(query, key, value, is_causal=True),
                               rtol=1e-5, atol=1e-5)


def _layer_pair(**config):
    """A Keras layer and a flashtron layer with the same weights."""
    plain, ours = keras.layers.MultiHeadAttention(**config), fk.MultiHeadAttention(**config)
    query, value = torch.randn(2, 7, 12), torch.randn(2, 9, 12)
    plain(query, value), ours(query, value)
    ours.set_weights(plain.get_weights())
    return plain, ours


@pytest.mark.parametrize("case", ["plain", "causal", "attention_mask"])
def test_multi_head_attention_matches_keras(case):
    plain, ours = _layer_pair(num_heads=3, key_dim=8, value_dim=6, dropout=0.25)
    query, value = torch.randn(2, 7, 12), torch.randn(2, 9, 12)
    kwargs = {}
    if case == "causal":
        kwargs = dict(use_causal_mask=True)
    elif case == "attention_mask":
        mask = torch.rand(2, 7, 9) > 0.4
        mask[:, :, 2] = True
        kwargs = dict(attention_mask=mask, use_causal_mask=True)
    expected, got = plain(query, value, **kwargs), ours(query, value, **kwargs)  # inference: no dropout
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    weights = [v.value for v in ours.trainable_variables]
    expected_grads = torch.autograd.grad(expected.square().sum(), [v.value for v in plain.trainable_variables])
    for g, g_expected in zip(torch.autograd.grad(got.square().sum(), weights), expected_grads):
        torch.testing.assert_close(g, g_expected, rtol=1e-4, atol=1e-5)


def test_dropout_runs_in_training_only(count_flashtron_calls):
    _, ours = _layer_pair(num_heads=2, key_dim=8, dropout=0.3)
    count_flashtron_calls.clear()
    query = torch.randn(2, 7, 12)
    torch.manual_seed(5)
    first = ours(query, query, training=True)
    torch.manual_seed(5)
    assert torch.equal(first, ours(query, query, training=True))
    assert not torch.allclose(first, ours(query, query, training=False))
    assert [call["dropout_p"] for call in count_flashtron_calls] == [0.3, 0.3, 0.0]


def test_attention_scores_fall_back_to_keras(count_flashtron_calls):
    plain, ours = _layer_pair(num_heads=2, key_dim=8)
    count_flashtron_calls.clear()
    query = torch.randn(2, 7, 12)
    out, scores = ours(query, query, return_attention_scores=True, use_causal_mask=True)
    expected, expected_scores = plain(query, query, return_attention_scores=True, use_causal_mask=True)
    torch.testing.assert_close(scores, expected_scores)
    torch.testing.assert_close(out, expected)
    assert not count_flashtron_calls


def test_save_load_and_load_into_keras_layer(tmp_path, monkeypatch):
    inputs = keras.Input((5, 12))
    model = keras.Model(inputs, fk.MultiHeadAttention(num_heads=2, key_dim=6, dropout=0.1)(inputs, inputs))
    x = torch.randn(3, 5, 12)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[-1], fk.MultiHeadAttention)
    torch.testing.assert_close(loaded(x), model(x))
    # Where flashtron is not installed (its registration absent), the saved name maps onto Keras's layer.
    monkeypatch.delitem(keras.saving.get_custom_objects(), "flashtron>MultiHeadAttention")
    as_keras = keras.saving.load_model(path, custom_objects={"flashtron>MultiHeadAttention":
                                                             keras.layers.MultiHeadAttention})
    assert type(as_keras.layers[-1]) is keras.layers.MultiHeadAttention
    assert as_keras.layers[-1].get_config() == model.layers[-1].get_config()
    torch.testing.assert_close(as_keras(x), model(x), rtol=1e-5, atol=1e-5)
    # The weights alone load into a Keras model of the same shape.
    weights = str(tmp_path / "model.weights.h5")
    model.save_weights(weights)
    plain = keras.Model(inputs, keras.layers.MultiHeadAttention(num_heads=2, key_dim=6, dropout=0.1)(inputs, inputs))
    plain.load_weights(weights)
    torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-5)


def test_enable_routes_keras_to_flashtron(enabled, count_flashtron_calls):
    query, key, value = _qkv(2, 6, 6, 2, 2, 8)
    expected = KERAS_ATTENTION(query, key, value, is_causal=True)
    torch.testing.assert_close(keras.ops.dot_product_attention(query, key, value, is_causal=True), expected,
                               rtol=1e-5, atol=1e-5)
    assert len(count_flashtron_calls) == 1
    keras.ops.dot_product_attention(query, key, value, flash_attention=False)  # Keras's own, as asked
    keras.ops.dot_product_attention(query, key, value, attn_logits_soft_cap=3.0)  # Keras refuses; flashtron can
    assert len(count_flashtron_calls) == 2 and count_flashtron_calls[-1]["softcap"] == 3.0
    # A Keras layer, with dropout under Keras's global flash switch (which Keras alone refuses)
    keras.config.enable_flash_attention()
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, dropout=0.2)
    x = torch.randn(2, 5, 12)
    layer(x, x, use_causal_mask=True, training=True)
    assert count_flashtron_calls[-1]["dropout_p"] == 0.2 and count_flashtron_calls[-1]["causal"]
    _, scores = layer(x, x, return_attention_scores=True)  # Keras alone refuses this with flash on
    assert scores.shape == (2, 2, 5, 5)
    keras.config.disable_flash_attention()
    calls = len(count_flashtron_calls)
    keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    keras.ops.dot_product_attention(query, key, value)
    assert len(count_flashtron_calls) == calls  # flash attention off: Keras's path


def test_disable_restores_keras():
    fk.enable()
    fk.disable()
    assert not fk.is_enabled()
    assert keras.src.backend.torch.nn.dot_product_attention is KERAS_ATTENTION
    assert keras.layers.MultiHeadAttention._compute_attention is fk.layers.KERAS_METHODS["_compute_attention"]


def test_other_backends_are_refused(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=torch"):
        fk.enable()
    assert not fk.is_enabled()


@pytest.mark.skipif(INTERPRET, reason="exercises Keras's training loop around the kernels; the plain run covers it")
def test_a_model_trains_with_fit():
    """Predict each token's predecessor: only attention to the previous position can do it."""
    torch.manual_seed(0)
    keras.utils.set_random_seed(0)
    tokens = torch.randint(1, 16, (96, 8))
    targets = torch.cat([torch.zeros(96, 1, dtype=torch.long), tokens[:, :-1]], dim=1)
    positions = torch.arange(8).expand(96, 8)
    token_input, position_input = keras.Input((8,), dtype="int32"), keras.Input((8,), dtype="int32")
    hidden = keras.layers.Embedding(16, 32)(token_input) + keras.layers.Embedding(8, 32)(position_input)
    hidden = hidden + fk.MultiHeadAttention(num_heads=2, key_dim=16, dropout=0.1)(hidden, hidden,
                                                                                  use_causal_mask=True)
    model = keras.Model([token_input, position_input], keras.layers.Dense(16)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.03),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit([tokens.numpy(), positions.numpy()], targets.numpy(), batch_size=48, epochs=5, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.75 * losses[0], losses
