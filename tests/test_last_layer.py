"""The top layer computed for [CLS] only (harness.distill.last_layer): the same function, and only where it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from harness.data.encoding import EncodedSplit
from harness.distill.last_layer import cls_only, top_layer
from harness.distill.losses import InterLayerLoss
from harness.distill.train import Hyper, LossTerms, TeacherSignal, layer_cls, predict
from harness.spec.methods import get_method
from harness.spec.tasks import get_task


def classifier(dropout: float = 0.0, attention: str = "sdpa", layers: int = 2) -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=2,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config)


def padded_batch(lengths=(7, 3, 12, 1, 9)) -> dict[str, torch.Tensor]:
    """Sentences of different lengths, padded: the mask matters."""
    generator = torch.Generator().manual_seed(1)
    longest = max(lengths)
    ids = torch.randint(1, 60, (len(lengths), longest), generator=generator)
    mask = torch.zeros(len(lengths), longest, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_cls_only_top_layer_gives_the_same_logits_and_cls_states(attention):
    model = classifier(attention=attention).eval()
    batch = padded_batch()
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True)
        with cls_only(model):
            cut = model(**batch, output_hidden_states=True)
        again = model(**batch, output_hidden_states=True)
    assert cut.hidden_states[-1].shape[1] == 1  # the top layer really ran for one position
    assert again.hidden_states[-1].shape == full.hidden_states[-1].shape  # and the full layer is back after
    torch.testing.assert_close(cut.logits, full.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer_cls(cut.hidden_states), layer_cls(full.hidden_states), atol=1e-5, rtol=1e-5)


def test_cls_only_nests_and_restores_the_full_layer_after_an_error():
    model = classifier().eval()
    batch = padded_batch()
    with torch.no_grad():
        with cls_only(model):
            with cls_only(model):
                inner = model(**batch, output_hidden_states=True)
            outer = model(**batch, output_hidden_states=True)  # still one position after the inner block
        with pytest.raises(RuntimeError), cls_only(model):
            raise RuntimeError("a failed step")
        after = model(**batch, output_hidden_states=True)
    assert inner.hidden_states[-1].shape[1] == outer.hidden_states[-1].shape[1] == 1
    assert after.hidden_states[-1].shape[1] == batch["input_ids"].shape[1]


def test_the_cls_only_top_layer_gives_the_same_gradients():
    """Training without dropout: the loss on logits and [CLS] states and every weight's gradient are the same."""
    batch = padded_batch()
    labels = torch.tensor([0, 1, 1, 0, 1])
    grads = []
    for cut in (False, True):
        model = classifier().train()
        with cls_only(model, enabled=cut):
            out = model(**batch, output_hidden_states=True)
        loss = torch.nn.functional.cross_entropy(out.logits, labels) + layer_cls(out.hidden_states).pow(2).mean()
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_cls_only_top_layer_keeps_attention_dropout_in_training():
    """One layer with attention dropout only: the [CLS] output varies between training passes and not in eval."""
    model = classifier(layers=1)
    model.config.hidden_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.bert.encoder.layer[0].attention.self.dropout.p = 0.5
    batch = padded_batch()
    outputs = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with torch.no_grad(), cls_only(model):
            outputs[mode] = [model(**batch).logits for _ in range(2)]
    assert not torch.allclose(outputs["train"][0], outputs["train"][1])
    torch.testing.assert_close(outputs["eval"][0], outputs["eval"][1])


def test_predict_runs_the_top_layer_for_cls_only():
    model = classifier().eval()
    seen = []
    hook = model.bert.encoder.layer[-1].register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    predict(model, split(padded_batch()), 2, 0, torch.device("cpu"), states=True)
    hook.remove()
    assert seen == [1, 1, 1]  # three batches of at most 2


def test_it_applies_only_where_it_is_the_same_function():
    assert top_layer(classifier()) is not None
    assert top_layer(classifier(attention="eager")) is not None

    class Reads(BertForSequenceClassification):  # a subclass may read more than [CLS]
        pass

    assert top_layer(Reads(classifier().config)) is None
    assert top_layer(torch.compile(classifier())) is None  # fit's compiled forward runs the full layer
    decoder = classifier()
    decoder.config.is_decoder = True
    assert top_layer(decoder) is None


def split(batch: dict[str, torch.Tensor]) -> EncodedSplit:
    features = [
        {
            "input_ids": ids[mask.bool()].tolist(),
            "token_type_ids": [0] * int(mask.sum()),
            "attention_mask": [1] * int(mask.sum()),
        }
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]
    return EncodedSplit(features, np.array([0, 1, 1, 0, 1]))


def test_predict_returns_the_full_layers_numbers():
    model = classifier().eval()
    data = split(padded_batch())
    logits, cls = predict(model, data, 2, 0, torch.device("cpu"), states=True)
    batch = padded_batch()
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True)
    np.testing.assert_allclose(logits, full.logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(cls, layer_cls(full.hidden_states).numpy(), atol=1e-5)


@pytest.mark.parametrize(("alp_tokens", "positions"), [("cls", 1), ("all", 12)])
def test_a_method_reading_every_token_gets_the_full_top_layer(alp_tokens, positions):
    """ALP on [CLS] trains through the one-position top layer; ALP over every token (``alp_tokens: all``) needs all."""
    student, teacher = classifier(), classifier()
    inter = InterLayerLoss(get_method("alp"), 2, 2, 32, 32, alp_tokens=alp_tokens)
    terms = LossTerms(
        get_task("SST-2"), Hyper(lr=1e-4, eta=0.5, lam=0.2), inter, TeacherSignal(live=teacher), torch.device("cpu")
    )
    seen = []
    hook = student.bert.encoder.layer[-1].register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    batch = {**padded_batch(), "labels": torch.tensor([0, 1, 1, 0, 1])}
    values = terms(student, batch, np.arange(5))
    hook.remove()
    assert seen == [positions]
    assert torch.isfinite(terms.total(values))
