"""Example plug-in on cached [CLS] states: cosine distance between the student's last [CLS] (projected) and the
teacher's last [CLS]; the projection is learned with the student."""

import torch
import torch.nn.functional as F

from harness.spec.methods import register_method


def projection(context):
    return torch.nn.Linear(context.student_hidden, context.teacher_hidden)


def cosine_loss(student, teacher, modules, context):
    s = modules(student.cls[:, -1])
    return (1 - F.cosine_similarity(s, teacher.cls[:, -1].detach(), dim=-1)).mean()


register_method(
    "cls-cos",
    description="cosine distance of the last [CLS] states (test plug-in)",
    searches=("eta", "lambda"),
    states=("cls",),
    loss=cosine_loss,
    modules=projection,
)
