"""The top layer of a BERT classifier computed for the [CLS] position only, where nothing reads its other positions.

A BERT classifier's logits read one vector of its top layer: the [CLS] one (the pooler takes ``[:, 0]``). So do
the loss terms of every method that reads logits and [CLS] states (NKD, KD, PKD, CKD, the ALP family with
``alp_tokens: cls``), and everything :func:`~harness.distill.train.predict` returns. The top layer's other
positions are computed and thrown away. :func:`cls_only` computes that layer with the [CLS] query alone: keys and
values over every token, as before, but the attention output, the feed-forward block and their LayerNorms for
one position instead of T. It is the same function of the same weights: the numbers differ by float rounding
(``tests/test_last_layer.py``; at most 1.9e-6 on the fine-tuned MiniLM's SST-2 dev [CLS] states, measured).

Measured on the project's 2-core CPU (2026-12-02, bench setting: 2-layer MiniLM student, SST-2, batch 32): an
ALP training step 75 ms instead of 87 ms, an NKD trial 10.6 s instead of 12.7 s, a dev evaluation 0.55 s instead
of 0.9 s. In training the top layer's dropout draws one row of masks instead of T rows: the same distribution,
other random numbers, so at the same seed a trial (and a newly fine-tuned teacher) ends elsewhere than without
this, within the seed-to-seed spread (README, "Speed").

It applies only where it is the same function: the model is exactly ``BertForSequenceClassification`` (a
subclass may read more), an encoder (no decoder, no cross-attention), with eager or sdpa attention (flash
attention unpads the queries and keys alike), called without a cache, and the caller asks for no attention maps
and no token states. Anywhere else the full layer runs.
"""

from __future__ import annotations

import contextlib
import types

from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertLayer, eager_attention_forward

__all__ = ["cls_only", "top_layer"]

ATTENTION = ("eager", "sdpa")


def top_layer(model) -> BertLayer | None:
    """The top encoder layer of ``model`` where :func:`cls_only` applies to it, else None."""
    if type(model) is not BertForSequenceClassification:
        return None
    config = model.config
    if config.is_decoder or config.add_cross_attention or config._attn_implementation not in ATTENTION:
        return None
    layers = model.bert.encoder.layer
    return layers[-1] if len(layers) and type(layers[-1]) is BertLayer else None


def _cls_forward(self: BertLayer, hidden_states, attention_mask=None, encoder_hidden_states=None, **kwargs):
    """``BertLayer.forward`` with the [CLS] query only: ``[B, T, H]`` in, ``[B, 1, H]`` out."""
    if encoder_hidden_states is not None or kwargs.get("cache") is not None:
        return BertLayer.forward(self, hidden_states, attention_mask, encoder_hidden_states, **kwargs)
    kwargs.pop("cache", None)
    kwargs.pop("encoder_attention_mask", None)
    attention = self.attention.self
    batch, length, _ = hidden_states.shape
    head = attention.attention_head_size
    query_input = hidden_states[:, :1]
    query = attention.query(query_input).view(batch, 1, -1, head).transpose(1, 2)
    key = attention.key(hidden_states).view(batch, length, -1, head).transpose(1, 2)
    value = attention.value(hidden_states).view(batch, length, -1, head).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] != 1:
        attention_mask = attention_mask[:, :, :1]  # the [CLS] query's row of a [B, 1, T, T] mask
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    output, _ = interface(
        attention,
        query,
        key,
        value,
        attention_mask,
        dropout=attention.dropout.p if attention.training else 0.0,
        scaling=attention.scaling,
        **kwargs,
    )
    output = self.attention.output(output.reshape(batch, 1, -1).contiguous(), query_input)
    return self.feed_forward_chunk(output)


@contextlib.contextmanager
def cls_only(model, enabled: bool = True):
    """Within the block, ``model``'s top layer computes the [CLS] position only, where that is the same function
    (:func:`top_layer`); its ``hidden_states[-1]`` is then ``[B, 1, H]``. ``enabled=False``, or a model it does not
    apply to: the full layer. Nested on one model it stays on until the outer block ends. Ask for no attention maps
    within it (the top layer would give none)."""
    layer = top_layer(model) if enabled else None
    if layer is None or "forward" in vars(layer):  # not applicable, or already inside cls_only (nested)
        yield
        return
    layer.forward = types.MethodType(_cls_forward, layer)
    try:
        yield
    finally:
        del layer.forward  # the class's forward again
