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
from flashtron.keras import fused as fk_fused  # noqa: E402
from flashtron.keras import ops as fk_ops  # noqa: E402
from conftest import INTERPRET  # noqa: E402
from reference import assert_within_rule  # noqa: E402

KERAS_ATTENTION = keras.src.backend.torch.nn.dot_product_attention  # Keras's own PyTorch implementation


@pytest.fixture
def count_flashtron_calls(monkeypatch):
    """Records each call flashtron serves: flash_attn_func's keyword arguments (attention behind Keras's
    sublayers) or, for a whole layer run by `fused`, {"fused": True, "dropout_p", "window"}."""
    calls = []
    original, original_fused = fk_ops.flash_attn_func, fk_fused.multi_head_attention

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    def counting_fused(*args):
        calls.append(dict(fused=True, window=args[-2], dropout_p=args[-1]))
        return original_fused(*args)

    monkeypatch.setattr(fk_ops, "flash_attn_func", counting)
    monkeypatch.setattr(fk_fused, "multi_head_attention", counting_fused)
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


def _weights_as(source, target):
    target.set_weights([w.astype(v.dtype) for w, v in zip(source.get_weights(), target.weights)])


def _layer_against_keras(dtype, inputs, call_kwargs, **config):
    """flashtron's layer in `dtype` against Keras's own layer in float64 (the truth) and in `dtype`, one set of
    weights: the output, the inputs' gradients and every weight's gradient, by flash-attn's 2x / 3x rule."""
    layers = {d: keras.layers.MultiHeadAttention(dtype=d, **config) for d in ("float64", dtype)}
    ours = fk.MultiHeadAttention(dtype=dtype, **config)
    for layer in (*layers.values(), ours):
        layer(*inputs)
        _weights_as(layers["float64"], layer)
    compute = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
               "mixed_float16": torch.float16}
    grad_out = torch.randn(inputs[0].shape[:-1] + (config.get("output_shape") or inputs[0].shape[-1],))

    def run(layer, dtype):
        leaves = [t.to(compute[dtype]).requires_grad_() for t in inputs]
        if len(leaves) == 2 and inputs[0] is inputs[1]:  # self-attention: one tensor
            leaves[1] = leaves[0]
        args = dict(zip(("query", "value", "key"), leaves))
        out = layer(**args, **call_kwargs)
        variables = [v.value for v in layer.trainable_variables]
        distinct = list({id(t): t for t in leaves}.values())
        return out, torch.autograd.grad(out, distinct + variables, grad_out.to(out))

    truth, plain, got = run(layers["float64"], "float64"), run(layers[dtype], dtype), run(ours, dtype)
    assert_within_rule("out", got[0], truth[0], plain[0], 2)
    names = [f"gradient {i}" for i in range(len(got[1]))]
    for name, g, g_truth, g_plain in zip(names, got[1], truth[1], plain[1]):
        assert g.dtype == g_plain.dtype, name
        assert_within_rule(name, g, g_truth, g_plain, 3)


@pytest.mark.parametrize("inputs", ["self", "cross", "three"])
@pytest.mark.parametrize("causal", [False, True])
def test_whole_layer_path_matches_keras(inputs, causal, count_flashtron_calls):
    """Plain calls run the layer as one Function (projections included): self-attention (one tensor, q, k, v
    projected together), cross-attention (key is value) and three inputs; causal with fewer keys than
    queries (a window of right = T - S); with and without biases."""
    query = torch.randn(2, 9, 12)
    tensors = {"self": (query, query), "cross": (query, torch.randn(2, 7, 10)),
               "three": (query, torch.randn(2, 7, 10), torch.randn(2, 7, 6))}[inputs]
    for use_bias in (True, False):
        _layer_against_keras("float32", tensors, dict(use_causal_mask=causal), num_heads=3, key_dim=8,
                             use_bias=use_bias)
        window = ((-1, 0) if inputs == "self" else (-1, 2)) if causal else (-1, -1)
        assert count_flashtron_calls[-1] == dict(fused=True, dropout_p=0.0, window=window)
    assert all(call.get("fused") for call in count_flashtron_calls)


def test_whole_layer_path_under_a_mixed_policy(count_flashtron_calls):
    """float32 variables, float16 compute: the kernels are cast as Keras's sublayers cast them, and their
    gradients come back in float32."""
    query = torch.randn(2, 11, 16)
    _layer_against_keras("mixed_float16", (query, query), dict(use_causal_mask=True), num_heads=2, key_dim=16,
                         output_shape=8)
    assert all(call.get("fused") for call in count_flashtron_calls)
    assert count_flashtron_calls[-1]["window"] == (-1, 0)


@pytest.mark.gpu
def test_whole_layer_path_on_the_gpu(count_flashtron_calls, monkeypatch):
    """bfloat16 self-attention with head dim 128 on CUDA tensors: the GPU engine's kernels (on an sm_90 GPU the
    Hopper backward, writing into the packed gradient)."""
    from flashtron.kernels import hopper_backward
    contiguous = []
    original = hopper_backward.backward
    monkeypatch.setattr(hopper_backward, "backward",
                        lambda *args, **kwargs: contiguous.append(args[7].is_contiguous()) or original(*args, **kwargs))
    query = torch.randn(2, 600, 256, device="cuda")
    _layer_against_keras("bfloat16", (query, query), dict(use_causal_mask=True), num_heads=2, key_dim=128)
    assert count_flashtron_calls and all(call.get("fused") for call in count_flashtron_calls)
    if torch.cuda.get_device_capability() == (9, 0):
        assert contiguous and not any(contiguous)


@pytest.mark.parametrize("case", ["attention_mask", "keras_mask", "value_dim", "scores", "lora", "keys_past_queries",
                                  "float64"])
def test_whole_layer_path_leaves_the_rest_to_keras(case, count_flashtron_calls):
    """What the one-Function path does not do goes through Keras's call (and flashtron's attention where it
    can), with the same results as Keras's layer."""
    config = dict(num_heads=2, key_dim=8, value_dim=6 if case == "value_dim" else None,
                  dtype="float64" if case == "float64" else None)
    plain, ours = keras.layers.MultiHeadAttention(**config), fk.MultiHeadAttention(**config)
    query, value = torch.randn(2, 7, 12), torch.randn(2, 9 if case == "keys_past_queries" else 7, 12)
    plain(query, value), ours(query, value)
    ours.set_weights(plain.get_weights())
    if case == "lora":
        for layer in (plain, ours):
            layer._query_dense.enable_lora(2)
        lora_b = plain._query_dense.lora_kernel_b  # zeros when enabled: make the adapter count
        lora_b.assign(torch.randn(*lora_b.shape) * 0.1)
        ours.set_weights(plain.get_weights())
    kwargs = dict(use_causal_mask=True)
    # Every query keeps its first key: Keras averages the values of a query with none, flashtron gives 0.
    if case == "attention_mask":
        kwargs["attention_mask"] = torch.rand(2, 7, 7) > 0.3
        kwargs["attention_mask"][..., 0] = True
    elif case == "keras_mask":
        value_mask = torch.rand(2, 7) > 0.2
        value_mask[:, 0] = True
    elif case == "scores":
        kwargs["return_attention_scores"] = True
    count_flashtron_calls.clear()
    results = []
    for layer in (ours, plain):
        if case == "keras_mask":
            value._keras_mask = value_mask  # each call takes it off
        results.append(layer(query, value, **kwargs))
    got, expected = results
    for g, e in zip(*((got, expected) if case == "scores" else ((got,), (expected,)))):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert not any(call.get("fused") for call in count_flashtron_calls)
    assert len(count_flashtron_calls) == (0 if case in ("scores", "float64") else 1)


def test_whole_layer_dropout_matches_the_attention_path():
    """Attention dropout in the one-Function path draws the same mask as flashtron's attention behind Keras's
    sublayers (one seed from torch's generator per call), and its backward regenerates that mask."""
    _, ours = _layer_pair(num_heads=2, key_dim=8, dropout=0.4)
    query = torch.randn(2, 7, 12)
    keep_all = torch.ones(2, 7, 7, dtype=torch.bool)  # an attention mask: Keras's call and flashtron's attention
    results = []
    for kwargs in (dict(), dict(attention_mask=keep_all)):
        x = query.clone().requires_grad_()
        torch.manual_seed(11)
        out = ours(x, x, training=True, use_causal_mask=True, **kwargs)
        weights = [v.value for v in ours.trainable_variables]
        results.append((out, *torch.autograd.grad(out.square().sum(), [x] + weights)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


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
    assert count_flashtron_calls[-1] == dict(fused=True, dropout_p=0.2, window=(-1, 0))
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
