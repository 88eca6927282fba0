"""Example plug-in on a state the cache does not hold: MSE of the last layer's token states (live teacher),
and a KL term between the last layers' attention maps."""

import torch

from harness.spec.methods import register_method


def token_loss(student, teacher, modules, context):
    mask = student.attention_mask[:, :, None].float()
    diff = (student.tokens[:, -1] - teacher.tokens[:, -1].detach()).pow(2) * mask
    return diff.sum() / (mask.sum() * student.tokens.shape[-1])


def attention_loss(student, teacher, modules, context):
    s, t = student.attentions[:, -1], teacher.attentions[:, -1].detach()
    return (t * (torch.log(t + 1e-9) - torch.log(s + 1e-9))).sum(-1).mean()


register_method(
    "tok-mse", description="MSE of last-layer token states (test plug-in)", states=("tokens",), loss=token_loss
)
register_method(
    "attn-kl", description="KL of last-layer attention maps (test plug-in)", states=("attentions",), loss=attention_loss
)
