"""Tests for harness.spec.methods: hand-computed losses, bucket layouts, registry and InterLayerLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.distill.losses import (
    InterLayerLoss,
    alp_attention,
    alp_context,
    alp_loss,
    alp_tokens_loss,
    ckd_loss,
    kd_loss,
    pkd_loss,
    regression_kd_loss,
)
from harness.spec.methods import (
    METHODS,
    MethodSpec,
    get_method,
    layer_mapping,
    no_buckets,
    pkd_pairs,
    po_buckets,
)
from harness.util.errors import HarnessError

D64 = torch.float64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------
# kd_loss / regression_kd_loss
# ------------------------------------------------------------------------------------------


def test_kd_loss_uniform_is_log2_times_t_squared() -> None:
    zeros = torch.zeros(3, 2)
    assert kd_loss(zeros, zeros).item() == pytest.approx(math.log(2))
    assert kd_loss(zeros, zeros, temperature=2.0).item() == pytest.approx(4 * math.log(2))


def test_kd_loss_hand_value() -> None:
    # student probs [1/4, 3/4], teacher [1/2, 1/2]: CE = -(1/2)log(1/4) - (1/2)log(3/4)
    s = torch.tensor([[0.0, math.log(3.0)]])
    t = torch.zeros(1, 2)
    expected = -0.5 * math.log(0.25) - 0.5 * math.log(0.75)
    assert kd_loss(s, t).item() == pytest.approx(expected)


def test_kd_loss_mean_over_batch() -> None:
    s = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    t = torch.zeros(2, 2)
    expected = 0.5 * ((-0.5 * math.log(0.25) - 0.5 * math.log(0.75)) + math.log(2))
    assert kd_loss(s, t).item() == pytest.approx(expected)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kd_gradient_has_t_squared_factor(temperature: float) -> None:
    s = torch.randn(4, 3, dtype=D64, requires_grad=True)
    t = torch.randn(4, 3, dtype=D64)
    kd_loss(s, t, temperature).backward()
    # d/ds of mean_b CE(softmax(t/T), softmax(s/T)) is (p_s - p_t)/(T B); times T^2 gives T/B.
    unscaled = (F.softmax(s.detach() / temperature, -1) - F.softmax(t / temperature, -1)) / (temperature * 4)
    torch.testing.assert_close(s.grad, temperature**2 * unscaled)


def test_kd_loss_detaches_teacher() -> None:
    s = torch.randn(2, 3, requires_grad=True)
    t = torch.randn(2, 3, requires_grad=True)
    kd_loss(s, t, 2.0).backward()
    assert t.grad is None
    assert s.grad is not None


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_kd_loss_rejects_bad_temperature(bad: float) -> None:
    with pytest.raises(HarnessError, match="temperature"):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), bad)


def test_regression_kd_loss_is_mse() -> None:
    s = torch.tensor([[1.0], [3.0]])
    t = torch.tensor([[0.0], [1.0]])
    assert regression_kd_loss(s, t).item() == pytest.approx((1 + 4) / 2)


def test_regression_kd_loss_rejects_multi_logit() -> None:
    with pytest.raises(ValueError):
        regression_kd_loss(torch.zeros(2, 2), torch.zeros(2, 2))


# ------------------------------------------------------------------------------------------
# pkd_loss / ckd_loss
# ------------------------------------------------------------------------------------------


def test_pkd_loss_hand_value() -> None:
    s = torch.tensor([[[3.0, 4.0]]])  # -> [0.6, 0.8]
    t = torch.tensor([[[2.0, 0.0]]])  # -> [1, 0]
    assert pkd_loss(s, t).item() == pytest.approx(0.4**2 + 0.8**2)


def test_pkd_loss_sums_layers_and_averages_batch() -> None:
    # per-layer terms: b0: 0.8 ([.6,.8] vs [1,0]) and 2 (orthogonal units); b1: 0 and 4 (opposite units)
    s = torch.tensor([[[3.0, 4.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    t = torch.tensor([[[2.0, 0.0], [0.0, 5.0]], [[7.0, 0.0], [-1.0, 0.0]]])
    expected = ((0.8 + 2.0) + (0.0 + 4.0)) / 2
    assert pkd_loss(s, t).item() == pytest.approx(expected)


def test_pkd_loss_is_scale_invariant_and_empty_is_zero() -> None:
    s, t = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    assert pkd_loss(10 * s, 0.1 * t).item() == pytest.approx(pkd_loss(s, t).item(), rel=1e-5)
    assert pkd_loss(torch.zeros(3, 0, 5), torch.zeros(3, 0, 5)).item() == 0.0


def test_ckd_loss_hand_value() -> None:
    p1 = torch.tensor([[3.0, 4.0, 0.0, 0.0]])  # -> [.6,.8,0,0]
    q1 = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    p2 = torch.tensor([[1.0, 0.0]])
    q2 = torch.tensor([[0.0, 2.0]])
    assert ckd_loss([p1, p2], [q1, q2]).item() == pytest.approx(0.8 + 2.0)


def test_ckd_single_layer_identity_projection_equals_pkd() -> None:
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    proj = torch.nn.Linear(6, 6, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(6))
    torch.testing.assert_close(ckd_loss([proj(s)], [t]), pkd_loss(s[:, None], t[:, None]))


def test_ckd_concatenation_matters() -> None:
    # Two-layer bucket: the student's projection is compared to the concatenated teacher vector.
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B=1, k=2, H=2]
    q = t.flatten(start_dim=1)  # [1, 0, 0, 1]
    p_match = torch.tensor([[2.0, 0.0, 0.0, 2.0]])
    p_other = torch.tensor([[0.0, 2.0, 2.0, 0.0]])
    assert ckd_loss([p_match], [q]).item() == pytest.approx(0.0, abs=1e-7)
    assert ckd_loss([p_other], [q]).item() == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------
# ALP
# ------------------------------------------------------------------------------------------


def _two_layer_teacher() -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.tensor([[[1.0, 0.0]]])  # [B=1, M=1, H=2]
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B=1, N=2, H=2]
    return s, t


def test_alp_attention_hand_value() -> None:
    s, t = _two_layer_teacher()
    a = math.e / (1 + math.e)
    torch.testing.assert_close(alp_attention(s, t), torch.tensor([[[a, 1 - a]]]))
    a2 = math.e**2 / (1 + math.e**2)
    torch.testing.assert_close(alp_attention(s, t, scale=2.0), torch.tensor([[[a2, 1 - a2]]]))


def test_alp_loss_hand_value() -> None:
    s, t = _two_layer_teacher()
    a = math.e / (1 + math.e)
    # c = [a, 1-a]; s - c = [1-a, a-1]; mean over h = (1-a)^2
    assert alp_loss(s, t).item() == pytest.approx((1 - a) ** 2)
    # bucket {1}: c = t_1 = [0, 1]; s - c = [1, -1]; mean = 1
    assert alp_loss(s, t, buckets=[[1]]).item() == pytest.approx(1.0)


def test_alp_loss_sums_over_student_layers() -> None:
    s = torch.randn(3, 2, 4)
    t = torch.randn(3, 5, 4)
    total = alp_loss(s, t)
    per_layer = alp_loss(s[:, :1], t) + alp_loss(s[:, 1:], t)
    torch.testing.assert_close(total, per_layer)


def test_alp_attention_rows_sum_to_one_and_bucket_zeros() -> None:
    s, t = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    buckets = po_buckets(6, 4)
    alpha = alp_attention(s, t, buckets=buckets)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, 4))
    for i, bucket in enumerate(buckets):
        outside = [j for j in range(6) if j not in bucket]
        assert torch.all(alpha[:, i, outside] == 0.0)
        assert torch.all(alpha[:, i, bucket] > 0.0)


def test_alp_identical_teacher_layers_give_teacher_context_and_zero_loss() -> None:
    v = torch.randn(2, 1, 5)
    t = v.expand(2, 4, 5).clone()
    s = torch.randn(2, 3, 5)
    torch.testing.assert_close(alp_context(s, t), v.expand(2, 3, 5))
    s_eq = v.expand(2, 3, 5).clone()
    assert alp_loss(s_eq, t).item() == pytest.approx(0.0, abs=1e-7)


def test_alp_one_hot_attention_reduces_to_single_layer_mse() -> None:
    s = torch.tensor([[[1.0, 0.0, 0.5]]])
    t = torch.tensor([[[0.0, 1.0, 0.0], [60.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # layer 1 dominates
    alpha = alp_attention(s, t)
    assert alpha[0, 0, 1].item() == pytest.approx(1.0, abs=1e-12)
    expected = F.mse_loss(s[:, 0], t[:, 1])
    torch.testing.assert_close(alp_loss(s, t), expected)


def test_alp_gradient_flows_through_attention_not_teacher() -> None:
    s = torch.randn(2, 3, 4, dtype=D64, requires_grad=True)
    t = torch.randn(2, 5, 4, dtype=D64, requires_grad=True)
    alp_loss(s, t).backward()
    assert t.grad is None
    # the same loss with alpha detached has a different gradient: alpha contributes
    s2 = s.detach().clone().requires_grad_(True)
    alpha = alp_attention(s2, t.detach()).detach()
    c = torch.einsum("bmn,bnh->bmh", alpha, t.detach())
    (s2 - c).pow(2).mean(dim=(0, 2)).sum().backward()
    assert not torch.allclose(s.grad, s2.grad)


def test_alp_stable_at_large_dot_products() -> None:
    s = (100 * torch.randn(2, 3, 4)).requires_grad_(True)
    t = 100 * torch.randn(2, 6, 4)
    scores = torch.einsum("bmh,bnh->bmn", s.detach(), t)
    assert scores.abs().max() > 1e4  # really in the overflow regime of a raw exp
    alpha = alp_attention(s, t, buckets=no_buckets(6, 3))
    assert torch.isfinite(alpha).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, 3))
    loss = alp_loss(s, t, buckets=po_buckets(6, 3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_alp_rejects_bad_buckets() -> None:
    s, t = torch.randn(1, 2, 3), torch.randn(1, 4, 3)
    with pytest.raises(ValueError):
        alp_attention(s, t, buckets=[[0]])  # one bucket for two student layers
    with pytest.raises(ValueError):
        alp_attention(s, t, buckets=[[0], [4]])
    with pytest.raises(ValueError):
        alp_attention(s, t, buckets=[[0], []])


def test_alp_tokens_single_token_equals_cls_loss() -> None:
    s, t = torch.randn(3, 2, 1, 4), torch.randn(3, 5, 1, 4)
    mask = torch.ones(3, 1, dtype=torch.long)
    buckets = no_buckets(5, 2)
    torch.testing.assert_close(
        alp_tokens_loss(s, t, mask, buckets=buckets), alp_loss(s[:, :, 0], t[:, :, 0], buckets=buckets)
    )


def test_alp_tokens_is_token_average_of_per_token_loss() -> None:
    s, t = torch.randn(1, 2, 3, 4), torch.randn(1, 3, 3, 4)
    mask = torch.ones(1, 3)
    expected = sum(alp_loss(s[:, :, k], t[:, :, k], scale=0.5) for k in range(3)) / 3
    torch.testing.assert_close(alp_tokens_loss(s, t, mask, scale=0.5), expected)


def test_alp_tokens_ignores_padding() -> None:
    s, t = torch.randn(2, 2, 4, 3), torch.randn(2, 4, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss = alp_tokens_loss(s, t, mask)
    s2, t2 = s.clone(), t.clone()
    s2[0, :, 3] = 1e6
    t2[1, :, 2:] = float("nan")
    torch.testing.assert_close(alp_tokens_loss(s2, t2, mask), loss)
    # and the padding really is excluded: same as computing over the valid tokens only
    expected = (
        3 * alp_tokens_loss(s[:1, :, :3], t[:1, :, :3], mask[:1, :3])
        + 2 * alp_tokens_loss(s[1:, :, :2], t[1:, :, :2], mask[1:, :2])
    ) / 5
    torch.testing.assert_close(loss, expected)
    # while changing a valid position does change it
    s3 = s.clone()
    s3[0, :, 0] += 1.0
    assert not torch.allclose(alp_tokens_loss(s3, t, mask), loss)


def test_alp_tokens_padding_gets_no_gradient() -> None:
    s = torch.randn(1, 2, 3, 4, requires_grad=True)
    t = torch.randn(1, 3, 3, 4)
    mask = torch.tensor([[1, 1, 0]])
    alp_tokens_loss(s, t, mask).backward()
    assert torch.all(s.grad[:, :, 2] == 0)
    assert torch.any(s.grad[:, :, :2] != 0)


# ------------------------------------------------------------------------------------------
# gradcheck (float64)
# ------------------------------------------------------------------------------------------


def test_gradcheck_kd_loss() -> None:
    s = torch.randn(3, 4, dtype=D64, requires_grad=True)
    t = torch.randn(3, 4, dtype=D64)
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, 2.5), (s,))


def test_gradcheck_pkd_loss() -> None:
    s = torch.randn(2, 3, 4, dtype=D64, requires_grad=True)
    t = torch.randn(2, 3, 4, dtype=D64)
    assert torch.autograd.gradcheck(lambda x: pkd_loss(x, t), (s,))


def test_gradcheck_ckd_loss() -> None:
    p1 = torch.randn(2, 6, dtype=D64, requires_grad=True)
    p2 = torch.randn(2, 3, dtype=D64, requires_grad=True)
    q1, q2 = torch.randn(2, 6, dtype=D64), torch.randn(2, 3, dtype=D64)
    assert torch.autograd.gradcheck(lambda a, b: ckd_loss([a, b], [q1, q2]), (p1, p2))


def test_gradcheck_alp_attention() -> None:
    s = torch.randn(2, 3, 4, dtype=D64, requires_grad=True)
    t = torch.randn(2, 5, 4, dtype=D64, requires_grad=True)
    buckets = po_buckets(5, 3)
    assert torch.autograd.gradcheck(lambda a, b: alp_attention(a, b, 0.7, buckets), (s, t))


def test_gradcheck_alp_loss() -> None:
    s = torch.randn(2, 3, 4, dtype=D64, requires_grad=True)
    t = torch.randn(2, 5, 4, dtype=D64)
    assert torch.autograd.gradcheck(lambda x: alp_loss(x, t), (s,))
    assert torch.autograd.gradcheck(lambda x: alp_loss(x, t, 0.5, no_buckets(5, 3)), (s,))


def test_gradcheck_alp_tokens_loss() -> None:
    s = torch.randn(2, 2, 3, 4, dtype=D64, requires_grad=True)
    t = torch.randn(2, 4, 3, 4, dtype=D64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.autograd.gradcheck(lambda x: alp_tokens_loss(x, t, mask, 0.5, po_buckets(4, 2)), (s,))


# ------------------------------------------------------------------------------------------
# Buckets and pairs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_teacher", "n_student", "expected"),
    [
        (6, 4, [[0, 1], [2, 3], [4], [5]]),
        (12, 4, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]),
        (6, 2, [[0, 1, 2], [3, 4, 5]]),
        (12, 6, [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]),
        (7, 3, [[0, 1, 2], [3, 4], [5, 6]]),
        (5, 1, [[0, 1, 2, 3, 4]]),
        (3, 3, [[0], [1], [2]]),
    ],
)
def test_no_buckets(n_teacher: int, n_student: int, expected: list[list[int]]) -> None:
    assert no_buckets(n_teacher, n_student) == expected


@pytest.mark.parametrize(
    ("n_teacher", "n_student", "expected"),
    [
        (6, 4, [[0, 1, 2], [1, 2, 3, 4], [3, 4, 5], [4, 5]]),
        (12, 4, [[0, 1, 2, 3], [2, 3, 4, 5, 6], [5, 6, 7, 8, 9], [8, 9, 10, 11]]),
        (6, 2, [[0, 1, 2, 3], [2, 3, 4, 5]]),
        (5, 1, [[0, 1, 2, 3, 4]]),
        (3, 3, [[0, 1], [0, 1, 2], [1, 2]]),
    ],
)
def test_po_buckets(n_teacher: int, n_student: int, expected: list[list[int]]) -> None:
    assert po_buckets(n_teacher, n_student) == expected


@pytest.mark.parametrize(("n_teacher", "n_student"), [(4, 6), (6, 0), (0, 0)])
def test_buckets_reject_bad_counts(n_teacher: int, n_student: int) -> None:
    with pytest.raises(HarnessError, match="layer counts"):
        no_buckets(n_teacher, n_student)
    with pytest.raises(HarnessError, match="layer counts"):
        pkd_pairs(n_teacher, n_student, "skip")


def test_pkd_pairs_values() -> None:
    skip = pkd_pairs(12, 6, "skip")
    assert [s + 1 for s, _ in skip] == [1, 2, 3, 4, 5]
    assert [t + 1 for _, t in skip] == [2, 4, 6, 8, 10]
    last = pkd_pairs(12, 6, "last")
    assert [s + 1 for s, _ in last] == [1, 2, 3, 4, 5]
    assert [t + 1 for _, t in last] == [7, 8, 9, 10, 11]
    # not divisible: floor(i * 6 / 4) for i = 1..3 -> 1, 3, 4 (1-based)
    assert pkd_pairs(6, 4, "skip") == [(0, 0), (1, 2), (2, 3)]
    assert pkd_pairs(12, 1, "skip") == [] and pkd_pairs(12, 1, "last") == []


def test_pkd_pairs_rejects_unknown_mode() -> None:
    with pytest.raises(HarnessError, match="unknown PKD mode 'first'"):
        pkd_pairs(12, 6, "first")


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------


def test_registry_keys_and_flags() -> None:
    assert list(METHODS) == ["nkd", "kd", "pkd-skip", "pkd-last", "ckd", "alp", "alp-no", "alp-po"]
    assert [k for k, s in METHODS.items() if not s.searches_eta] == ["nkd"]
    assert [k for k, s in METHODS.items() if not s.searches_lambda] == ["nkd", "kd"]
    assert {k: (s.inter, s.mapping) for k, s in METHODS.items()} == {
        "nkd": (None, None),
        "kd": (None, None),
        "pkd-skip": ("pkd", "skip"),
        "pkd-last": ("pkd", "last"),
        "ckd": ("ckd", "no"),
        "alp": ("alp", "all"),
        "alp-no": ("alp", "no"),
        "alp-po": ("alp", "po"),
    }
    assert all(isinstance(s, MethodSpec) and s.key == k and s.description for k, s in METHODS.items())


def test_get_method() -> None:
    assert get_method("alp-po") is METHODS["alp-po"]
    with pytest.raises(HarnessError, match=r"unknown method 'x' \(allowed: nkd, kd, pkd-skip, .*alp-po\)"):
        get_method("x")


def test_layer_mapping() -> None:
    assert layer_mapping(get_method("kd"), 12, 6) == []
    assert layer_mapping(get_method("pkd-skip"), 12, 6) == [(0, [1]), (1, [3]), (2, [5]), (3, [7]), (4, [9])]
    assert layer_mapping(get_method("pkd-last"), 12, 6)[0] == (0, [6])
    assert layer_mapping(get_method("ckd"), 6, 4) == [(0, [0, 1]), (1, [2, 3]), (2, [4]), (3, [5])]
    assert layer_mapping(get_method("alp-no"), 6, 4) == layer_mapping(get_method("ckd"), 6, 4)
    assert layer_mapping(get_method("alp-po"), 6, 2) == [(0, [0, 1, 2, 3]), (1, [2, 3, 4, 5])]
    assert layer_mapping(get_method("alp"), 3, 2) == [(0, [0, 1, 2]), (1, [0, 1, 2])]


# ------------------------------------------------------------------------------------------
# InterLayerLoss
# ------------------------------------------------------------------------------------------

N_T, N_S, B, TOK = 4, 2, 3, 5


def _states(module: InterLayerLoss, h_s: int, h_t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mid = (TOK,) if module.needs_tokens else ()
    s = torch.randn(B, N_S, *mid, h_s, requires_grad=True)
    t = torch.randn(B, N_T, *mid, h_t)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    return s, t, mask


@pytest.mark.parametrize("key", list(METHODS))
@pytest.mark.parametrize(("h_s", "h_t"), [(8, 8), (6, 8)])
@pytest.mark.parametrize("alp_tokens", ["cls", "all"])
def test_inter_layer_loss_every_method(key: str, h_s: int, h_t: int, alp_tokens: str) -> None:
    spec = get_method(key)
    module = InterLayerLoss(spec, N_T, N_S, h_s, h_t, alp_scale="sqrt_d", alp_tokens=alp_tokens)
    assert module.needs_tokens == (alp_tokens == "all" and spec.inter == "alp")
    s, t, mask = _states(module, h_s, h_t)
    loss = module(s, t, mask)
    assert loss.shape == () and torch.isfinite(loss)
    if spec.inter is None:
        assert loss.item() == 0.0 and list(module.parameters()) == []
        return
    assert loss.item() > 0.0
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    params = list(module.parameters())
    assert (len(params) > 0) == (h_s != h_t or spec.inter == "ckd")
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_inter_layer_loss_hidden_mismatch_adds_projection() -> None:
    same = InterLayerLoss(get_method("alp"), N_T, N_S, 8, 8)
    diff = InterLayerLoss(get_method("alp"), N_T, N_S, 6, 8)
    assert same.proj is None and list(same.parameters()) == []
    assert isinstance(diff.proj, torch.nn.Linear)
    assert tuple(diff.proj.weight.shape) == (8, 6)
    assert set(diff.state_dict()) == {"proj.weight", "proj.bias"}
    assert list(InterLayerLoss(get_method("kd"), N_T, N_S, 6, 8).parameters()) == []


def test_inter_layer_loss_ckd_projections_registered() -> None:
    module = InterLayerLoss(get_method("ckd"), 6, 4, 5, 7)
    assert module.proj is None
    shapes = [tuple(p.shape) for p in module.parameters()]
    assert shapes == [(14, 5), (14,), (14, 5), (14,), (7, 5), (7,), (7, 5), (7,)]
    assert "ckd_proj.3.weight" in module.state_dict()


def test_inter_layer_loss_matches_pure_functions() -> None:
    s, t = torch.randn(B, 3, 8), torch.randn(B, 6, 8)
    alp_po = InterLayerLoss(get_method("alp-po"), 6, 3, 8, 8, alp_scale="sqrt_d")
    torch.testing.assert_close(alp_po(s, t), alp_loss(s, t, scale=8**-0.5, buckets=po_buckets(6, 3)))
    alp = InterLayerLoss(get_method("alp"), 6, 3, 8, 8)
    torch.testing.assert_close(alp(s, t), alp_loss(s, t))
    pkd = InterLayerLoss(get_method("pkd-skip"), 6, 3, 8, 8)
    torch.testing.assert_close(pkd(s, t), pkd_loss(s[:, [0, 1]], t[:, [1, 3]]))
    ckd = InterLayerLoss(get_method("ckd"), 6, 3, 8, 8)
    projected = [ckd.ckd_proj[i](s[:, i]) for i in range(3)]
    concat = [t[:, 2 * i : 2 * i + 2].reshape(B, 16) for i in range(3)]
    torch.testing.assert_close(ckd(s, t), ckd_loss(projected, concat))


def test_inter_layer_loss_one_layer_student_pkd_is_zero() -> None:
    module = InterLayerLoss(get_method("pkd-last"), 4, 1, 8, 8)
    assert module(torch.randn(2, 1, 8), torch.randn(2, 4, 8)).item() == 0.0


def test_inter_layer_loss_tokens_masks_padding() -> None:
    module = InterLayerLoss(get_method("alp-no"), N_T, N_S, 8, 8, alp_tokens="all")
    s, t, mask = _states(module, 8, 8)
    loss = module(s, t, mask)
    s2, t2 = s.detach().clone(), t.clone()
    s2[1, :, 3:] = 123.0
    t2[2, :, 1:] = -55.0
    torch.testing.assert_close(module(s2, t2, mask), loss)
    with pytest.raises(ValueError, match="attention_mask"):
        module(s, t)


def test_inter_layer_loss_rejects_bad_options() -> None:
    with pytest.raises(HarnessError, match=r"unknown alp_scale 'sqrt' \(allowed: 1, sqrt_d\)"):
        InterLayerLoss(get_method("alp"), N_T, N_S, 8, 8, alp_scale="sqrt")
    with pytest.raises(HarnessError, match=r"unknown alp_tokens 'some' \(allowed: cls, all\)"):
        InterLayerLoss(get_method("alp"), N_T, N_S, 8, 8, alp_tokens="some")


def test_inter_layer_loss_rejects_wrong_shapes() -> None:
    module = InterLayerLoss(get_method("alp"), N_T, N_S, 8, 8)
    with pytest.raises(ValueError, match="student"):
        module(torch.randn(B, N_S + 1, 8), torch.randn(B, N_T, 8))
    with pytest.raises(ValueError, match="teacher"):
        module(torch.randn(B, N_S, 8), torch.randn(B, N_T, 7))
