"""Feature-level distillation: intermediate activations of a student pulled towards its teacher's.

A student trained only towards its teacher's outputs learns what a pruned model's fine-tune learns
(the same loss on the same cut). :class:`FeatureMatch` adds what only distillation has: at a few
layers the student shares with its teacher by name (a pruned or narrower student of the same
architecture), a learned adapter (a 1x1 convolution for feature maps, a Linear otherwise) maps the
student's narrower activation to the teacher's width, and the mean squared distance to the
teacher's activation, relative to its mean square, joins the loss (FitNets' hints). Each adapter
starts as the least-squares map from the student's activations to the teacher's on a batch of
training samples, so the term starts at what the student cannot yet express rather than at a
random projection's error (which, at weight 1, pulled a pruned student far from its kept weights
in the first epoch). The adapters are trained with the student and dropped afterwards: the
student's architecture does not change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Layers matched at most: enough to guide every stage, few enough to stay cheap.
MAX_POINTS = 4


def _tensor_of(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]  # a recurrent layer's sequence output
    return None


def _channel_dim(tensor: torch.Tensor) -> int:
    return 1 if tensor.dim() == 4 else -1


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """Channels last, everything else as rows: (samples x positions, channels)."""
    if tensor.dim() == 4:
        tensor = tensor.permute(0, 2, 3, 1)
    return tensor.reshape(-1, tensor.shape[-1]).double()


def _least_squares(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The (teacher channels x student channels) matrix that best maps one to the other."""
    s, t = _rows(student), _rows(teacher)
    ridge = 1e-4 * s.square().mean().clamp_min(1e-12) * torch.eye(s.shape[1], dtype=s.dtype)
    solution = torch.linalg.solve(s.T @ s + len(s) * ridge, s.T @ t)
    return solution.T.float()


def _layer_outputs(
    module: nn.Module, examples: tuple[torch.Tensor, ...], names: list[str]
) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:

        def record(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            tensor = _tensor_of(out)
            if tensor is not None and name not in seen:
                seen[name] = tensor.detach()

        hooks.append(module.get_submodule(name).register_forward_hook(record))
    try:
        with torch.no_grad():
            module.eval()(*examples)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _candidate_layers(module: nn.Module) -> list[str]:
    from host.models.recurrent import LinearRecurrent

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.RNNBase, LinearRecurrent)
    names = []
    for name, layer in module.named_modules():
        if not name or not isinstance(layer, kinds):
            continue
        if any(name.startswith(f"{other}.") for other in names):
            continue  # inside a recurrent layer already chosen
        names.append(name)
    return names


@dataclass
class FeatureMatch:
    """Hooks on the student's and the teacher's matched layers, and the adapters between them."""

    student: nn.Module
    teacher: nn.Module
    names: list[str]
    adapters: nn.ModuleDict
    weight: float = 1.0
    _student_out: dict[str, torch.Tensor] = field(default_factory=dict)
    _teacher_out: dict[str, torch.Tensor] = field(default_factory=dict)
    _hooks: list[Any] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        student: nn.Module,
        teacher: nn.Module,
        examples: tuple[torch.Tensor, ...],
        weight: float = 1.0,
        exclude: list[nn.Module] | None = None,
        samples: tuple[torch.Tensor, ...] | None = None,
    ) -> FeatureMatch | None:
        """Match up to :data:`MAX_POINTS` layers, evenly spread over the teacher's, that the student
        has under the same name with an output of the same shape but its channel count; None when
        there is none (a student of another architecture learns from the outputs alone). The
        adapters are fitted on ``samples`` (a batch of inputs; default the examples)."""
        excluded = {id(m) for m in exclude or []}
        teacher_names = [
            n for n in _candidate_layers(teacher) if id(teacher.get_submodule(n)) not in excluded
        ]
        student_modules = dict(student.named_modules())
        shared = [n for n in teacher_names if n in student_modules]
        if not shared:
            return None
        t_out = _layer_outputs(teacher, examples, shared)
        s_out = _layer_outputs(student, examples, shared)
        usable = []
        for name in shared:
            t, s = t_out.get(name), s_out.get(name)
            if t is None or s is None or t.dim() != s.dim() or t.dim() < 2:
                continue
            dim = _channel_dim(t) % t.dim()
            if any(a != b for i, (a, b) in enumerate(zip(t.shape, s.shape)) if i != dim):
                continue
            usable.append(name)
        if not usable:
            return None
        step = max(1, len(usable) // MAX_POINTS)
        chosen = usable[::step][-MAX_POINTS:]
        adapters = nn.ModuleDict()
        for name in chosen:
            t, s = t_out[name], s_out[name]
            c_s, c_t = s.shape[_channel_dim(s)], t.shape[_channel_dim(t)]
            adapter = (
                nn.Conv2d(c_s, c_t, 1, bias=False)
                if t.dim() == 4
                else nn.Linear(c_s, c_t, bias=False)
            )
            adapters[name.replace(".", "__")] = adapter
        return cls(student, teacher, chosen, adapters, weight)

    def attach(self) -> None:
        """Start recording the matched layers' outputs (the student's with their gradients)."""
        self.detach()
        for name in self.names:

            def keep(target: dict[str, torch.Tensor], name: str = name) -> Any:
                def hook(_m: nn.Module, _i: Any, out: Any) -> None:
                    tensor = _tensor_of(out)
                    if tensor is not None:
                        target[name] = tensor

                return hook

            self._hooks.append(
                self.student.get_submodule(name).register_forward_hook(keep(self._student_out))
            )
            self._hooks.append(
                self.teacher.get_submodule(name).register_forward_hook(keep(self._teacher_out))
            )

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._student_out.clear()
        self._teacher_out.clear()

    def teacher_pass(self, tensors: list[torch.Tensor]) -> Any:
        """Run the teacher on a batch (recording its matched layers); returns its outputs."""
        with torch.no_grad():
            return self.teacher(*tensors)

    def loss(self) -> torch.Tensor:
        """Sum over matched layers of the adapted student's relative squared distance."""
        total: torch.Tensor | None = None
        for name in self.names:
            s, t = self._student_out.get(name), self._teacher_out.get(name)
            if s is None or t is None:
                continue
            adapted = self.adapters[name.replace(".", "__")](s)
            term = (adapted - t).square().mean() / t.square().mean().clamp_min(1e-8)
            total = term if total is None else total + term
        self._student_out.clear()
        self._teacher_out.clear()
        if total is None:
            return torch.zeros(())
        return self.weight * total / len(self.names)

    def to(self, device: torch.device) -> FeatureMatch:
        self.adapters.to(device)
        self.teacher.to(device)
        return self


__all__ = ["MAX_POINTS", "FeatureMatch"]
