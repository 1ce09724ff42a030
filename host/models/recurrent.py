"""Recurrent layers written with ``nn.Linear``: what every converter, quantizer and compression step
understands.

``nn.GRU``, ``nn.LSTM`` and ``nn.RNN`` keep their weights as flat parameters of one fused op: the
PT2E quantizer has no pattern for it (full int8 of a GRU failed in preparation, and an LSTM's "int8"
file kept every gate matrix in float, larger than its fp32 file), structured pruning sees no layer
it may narrow, and low-rank no matrix it may factorize. :class:`LinearRecurrent` computes the same
function with one input projection and one recurrent projection (``nn.Linear``, gates stacked in
PyTorch's order) per layer and direction, stepping through the sequence in Python: at export the
sequence length is fixed, so the steps unroll into FULLY_CONNECTED ops and element-wise gates that
every runtime runs and the int8 quantizer annotates.

:func:`linearize_recurrent` swaps every such layer of a model for its linear form in place.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Stacked gate matrices per cell, in PyTorch's order: GRU (r, z, n), LSTM (i, f, g, o), RNN (one).
GATES = {"GRU": 3, "LSTM": 4, "RNN_TANH": 1, "RNN_RELU": 1}


class RecurrentCell(nn.Module):
    """One layer and direction: ``ih`` maps the input, ``hh`` the previous state, to the gates."""

    def __init__(self, input_size: int, hidden_size: int, gates: int, bias: bool) -> None:
        super().__init__()
        self.ih = nn.Linear(input_size, gates * hidden_size, bias=bias)
        self.hh = nn.Linear(hidden_size, gates * hidden_size, bias=bias)


class LinearRecurrent(nn.Module):
    """``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` (any depth, either direction, batch-first or not) in
    linear form; same inputs, outputs and numbers as the layer it was made from."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if mode not in GATES:
            raise ValueError(f"unknown recurrent mode {mode!r}")
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = dropout
        self.bidirectional = bidirectional
        directions = 2 if bidirectional else 1
        self.cells = nn.ModuleList(
            RecurrentCell(
                input_size if layer == 0 else hidden_size * directions,
                hidden_size,
                GATES[mode],
                bias,
            )
            for layer in range(num_layers)
            for _ in range(directions)
        )

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @classmethod
    def from_layer(cls, layer: nn.RNNBase) -> LinearRecurrent:
        """The linear form of ``layer`` with its weights (an LSTM with ``proj_size`` has none)."""
        if getattr(layer, "proj_size", 0):
            raise ValueError("an LSTM with proj_size has no linear form here")
        linear = cls(
            layer.mode,
            layer.input_size,
            layer.hidden_size,
            layer.num_layers,
            layer.bias,
            layer.batch_first,
            float(layer.dropout),
            layer.bidirectional,
        )
        suffixes = ("", "_reverse")[: linear.directions]
        with torch.no_grad():
            for index, cell in enumerate(linear.cells):
                layer_index, direction = divmod(index, linear.directions)
                suffix = f"_l{layer_index}{suffixes[direction]}"
                cell.ih.weight.copy_(getattr(layer, f"weight_ih{suffix}"))
                cell.hh.weight.copy_(getattr(layer, f"weight_hh{suffix}"))
                if layer.bias:
                    cell.ih.bias.copy_(getattr(layer, f"bias_ih{suffix}"))
                    cell.hh.bias.copy_(getattr(layer, f"bias_hh{suffix}"))
        linear.train(layer.training)
        return linear.to(layer.weight_ih_l0.device)

    def _step(
        self, gates_x: torch.Tensor, cell: RecurrentCell, h: torch.Tensor, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        gates_h = cell.hh(h)
        if self.mode == "GRU":
            x_r, x_z, x_n = gates_x.chunk(3, dim=-1)
            h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
            reset = torch.sigmoid(x_r + h_r)
            update = torch.sigmoid(x_z + h_z)
            new = torch.tanh(x_n + reset * h_n)
            return new + update * (h - new), None
        if self.mode == "LSTM":
            i, f, g, o = (gates_x + gates_h).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        total = gates_x + gates_h
        return (torch.tanh(total) if self.mode == "RNN_TANH" else torch.relu(total)), None

    def forward(
        self, x: torch.Tensor, hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0 if self.batch_first else 1)
        if not self.batch_first:
            x = x.transpose(0, 1)
        batch, steps = x.shape[0], x.shape[1]
        states = self.num_layers * self.directions
        lstm = self.mode == "LSTM"
        if hx is None:
            h0 = x.new_zeros(states, batch, self.hidden_size)
            c0 = x.new_zeros(states, batch, self.hidden_size) if lstm else None
        elif lstm:
            h0, c0 = hx
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        else:
            h0, c0 = hx, None
            if unbatched:
                h0 = h0.unsqueeze(1)
        finals_h: list[torch.Tensor] = []
        finals_c: list[torch.Tensor] = []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                cell = self.cells[index]
                gates_x = cell.ih(layer_input)
                h = h0[index]
                c = c0[index] if c0 is not None else None
                order = range(steps - 1, -1, -1) if direction else range(steps)
                sequence: list[torch.Tensor] = [h] * steps
                for t in order:
                    h, c = self._step(gates_x[:, t], cell, h, c)
                    sequence[t] = h
                outputs.append(torch.stack(sequence, dim=1))
                finals_h.append(h)
                if c is not None:
                    finals_c.append(c)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, True)
        output = layer_input if self.batch_first else layer_input.transpose(0, 1)
        h_n = torch.stack(finals_h)
        if unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n = h_n.squeeze(1)
        if lstm:
            c_n = torch.stack(finals_c)
            return output, (h_n, c_n.squeeze(1) if unbatched else c_n)
        return output, h_n

    def extra_repr(self) -> str:
        return (
            f"{self.mode}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"batch_first={self.batch_first}, bidirectional={self.bidirectional}"
        )


def linearize_recurrent(module: nn.Module) -> list[str]:
    """Replace, in place, every ``nn.GRU``/``nn.LSTM``/``nn.RNN`` of ``module`` with its
    :class:`LinearRecurrent` form; returns the names replaced. An LSTM with ``proj_size`` stays."""
    replaced = []
    for name, layer in list(module.named_modules()):
        if not isinstance(layer, (nn.GRU, nn.LSTM, nn.RNN)) or getattr(layer, "proj_size", 0):
            continue
        linear = LinearRecurrent.from_layer(layer)
        parent_name, _, child = name.rpartition(".")
        if not child:
            raise ValueError("the model itself is a recurrent layer; wrap it in a module")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, linear)
        replaced.append(name)
    if replaced:
        logger.info("recurrent layers in linear form: %s", ", ".join(replaced))
    return replaced


def recurrent_macs(layer: nn.RNNBase | LinearRecurrent, x: torch.Tensor | object) -> int:
    """Multiply-accumulates of one call of a recurrent layer on ``x``: per sample and step, each
    layer and direction multiplies its input and its previous state by the stacked gate matrices
    (``gates x hidden x (input + hidden)``), plus an LSTM's projection. Element-wise gate work is
    not counted, as torch's flop counter counts no element-wise op elsewhere either."""
    data = getattr(x, "data", x)  # a PackedSequence holds its steps of every sample as rows
    if not isinstance(data, torch.Tensor):
        return 0
    if isinstance(x, torch.Tensor):
        rows = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
    else:
        rows = data.shape[0]
    mode = layer.mode
    gates = GATES.get(mode, 1)
    hidden = layer.hidden_size
    proj = int(getattr(layer, "proj_size", 0) or 0)
    state = proj or hidden
    directions = 2 if layer.bidirectional else 1
    per_row = 0
    for index in range(layer.num_layers):
        width = layer.input_size if index == 0 else state * directions
        per_row += directions * (gates * hidden * (width + state) + proj * hidden)
    return int(rows) * per_row


def recurrent_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The recurrent layers of ``module``, fused or in linear form."""
    return [
        (name, layer)
        for name, layer in module.named_modules()
        if isinstance(layer, (nn.RNNBase, LinearRecurrent))
    ]


__all__ = [
    "GATES",
    "LinearRecurrent",
    "RecurrentCell",
    "linearize_recurrent",
    "recurrent_layers",
    "recurrent_macs",
]
