"""RAFT's update block regrouped for tensor cores, with the same arithmetic as torchvision's (RAFT Small and Large).

Three changes, none of which alters the result beyond float rounding:

- every convolution input has a multiple of 8 channels: the correlation features (Small 196, Large 324) are
  zero-padded to 200 / 328 channels and the flow (2) to 8 for the flow convolution, with zero weight columns
  for the padding. In the GRU's input (context, motion features, flow) the flow is padded only as far as the
  motion features need: RAFT Small's 80 motion channels + 8 flow channels (hidden 96 + context 64 + 88 = 248
  instead of 242); RAFT Large's 126 + 2 flow channels are already 128 (hidden 128 + context 128 + 128 = 384).
  cuDNN then needs no padding copies around each convolution;
- each GRU's update and reset gates (``convz``, ``convr``), which read the same input, run as one convolution
  (RAFT Large has two GRUs, 1x5 then 5x1; RAFT Small one, 3x3);
- with ``context_gates_once`` (the default), the GRU convolutions' share that reads the context runs once per
  model call instead of once per update: a convolution is linear in its input channels, so
  ``conv([hidden, context, motion]) = conv_h+m([hidden, motion]) + conv_c(context)``, and the context (with the
  gates' biases) is the same at every update. :meth:`FastUpdateBlock.context_gates` computes the per-GRU term
  ``[update, reset, candidate]`` (``3 x hidden`` channels) from the context once; each update's convolutions then
  read only the hidden state, motion features and flow (RAFT Small: 184 channels instead of 248, a quarter of the
  GRU's multiply-adds; RAFT Large: 256 instead of 384).

RAFT Large's second correlation convolution (``convcorr2``, 3x3, 256 -> 192) is used as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.optical_flow.raft import UpdateBlock

CHANNEL_MULTIPLE = 8
# The default of FastUpdateBlock(context_gates_once=...); benchmarks/bench_flow.py turns it off for its
# side-by-side row.
CONTEXT_GATES_ONCE = True


def padded_channels(channels: int) -> int:
    return -(-channels // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE


def _conv_like(conv: nn.Conv2d, in_channels: int, weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    """A copy of ``conv`` with ``in_channels`` inputs and the given weight/bias."""
    # skip_init: no random initial values (they would be drawn from the host's random stream), then overwritten
    new = nn.utils.skip_init(nn.Conv2d, in_channels, weight.shape[0], conv.kernel_size, conv.stride, conv.padding,
                             bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _pad_inputs(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """``conv`` taking ``in_channels`` inputs, the extra (trailing) ones with zero weights."""
    extra = in_channels - conv.in_channels
    weight = F.pad(conv.weight.detach(), (0, 0, 0, 0, 0, extra))
    return _conv_like(conv, in_channels, weight, conv.bias)


def _columns(conv: nn.Conv2d, columns: list[int]) -> Tensor:
    """``conv``'s weight restricted to the given input channels."""
    return conv.weight.detach()[:, columns]


class FastUpdateBlock(nn.Module):
    """``forward(hidden, context, corr_padded, flow_padded) -> (hidden, delta_flow)``.

    ``context`` is what :meth:`context_gates` made of the context encoder's context (with
    ``context_gates_once``), else that context itself. ``corr_padded`` has :attr:`corr_channels` channels
    (correlation features, then zeros) and ``flow_padded`` has :attr:`flow_channels` (the 2 flow channels, then
    zeros). Built from torchvision's RAFT Small or RAFT Large ``UpdateBlock``.
    """

    def __init__(self, block: UpdateBlock, context_gates_once: bool | None = None) -> None:
        super().__init__()
        motion = block.motion_encoder
        recurrent = block.recurrent_block
        self.hidden_size = hidden = recurrent.hidden_size
        self.context_gates_once = CONTEXT_GATES_ONCE if context_gates_once is None else context_gates_once
        self.corr_channels = padded_channels(motion.convcorr1[0].in_channels)
        self.flow_channels = padded_channels(2)
        self.convcorr1 = _pad_inputs(motion.convcorr1[0], self.corr_channels)
        self.convcorr2 = None if isinstance(motion.convcorr2, nn.Identity) else motion.convcorr2[0]
        self.convflow1 = _pad_inputs(motion.convflow1[0], self.flow_channels)
        self.convflow2 = motion.convflow2[0]
        self.conv = motion.conv[0]
        motion_channels = self.conv.out_channels  # the motion encoder's output is these, then the flow (2)
        self.gru_flow_channels = padded_channels(motion_channels + 2) - motion_channels
        # RAFT Small's second GRU is a pass-through function, RAFT Large's a ConvGRU module
        grus = [gru for gru in (recurrent.convgru1, recurrent.convgru2) if isinstance(gru, nn.Module)]
        gru_inputs = grus[0].convz.in_channels + self.gru_flow_channels - 2  # hidden, context, motion, flow
        self.context_channels = grus[0].convz.in_channels - hidden - (motion_channels + 2)
        # input channels of each GRU convolution: all, or all but the context's (hidden, then motion and flow)
        columns = list(range(gru_inputs))
        if self.context_gates_once:
            columns = columns[:hidden] + columns[hidden + self.context_channels:]
        context_columns = list(range(hidden, hidden + self.context_channels))
        self.convzr = nn.ModuleList()
        self.convq = nn.ModuleList()
        self.context_convs = nn.ModuleList()  # per GRU: context -> [update, reset, candidate] terms, with biases
        for gru in grus:
            convz, convr, convq = (_pad_inputs(conv, gru_inputs) for conv in (gru.convz, gru.convr, gru.convq))
            biases = None if self.context_gates_once else torch.cat([convz.bias, convr.bias])
            self.convzr.append(_conv_like(convz, len(columns), torch.cat([_columns(convz, columns),
                                                                          _columns(convr, columns)]), biases))
            self.convq.append(_conv_like(convq, len(columns), _columns(convq, columns),
                                         None if self.context_gates_once else convq.bias))
            if self.context_gates_once:
                self.context_convs.append(_conv_like(
                    convz, self.context_channels,
                    torch.cat([_columns(conv, context_columns) for conv in (convz, convr, convq)]),
                    torch.cat([convz.bias, convr.bias, convq.bias])))
        self.head1 = block.flow_head.conv1
        self.head2 = block.flow_head.conv2

    def context_gates(self, context: Tensor) -> Tensor:
        """What :meth:`forward` takes as ``context``: the GRUs' context terms ``[N, GRUs x 3 x hidden, h, w]``
        (update, reset and candidate gate per GRU, biases included) with ``context_gates_once``, else
        ``context`` as it is."""
        if not self.context_gates_once:
            return context
        return torch.cat([conv(context) for conv in self.context_convs], dim=1)

    def forward(self, hidden: Tensor, context: Tensor, corr: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        corr = F.relu(self.convcorr1(corr))
        if self.convcorr2 is not None:
            corr = F.relu(self.convcorr2(corr))
        flow_features = F.relu(self.convflow2(F.relu(self.convflow1(flow))))
        motion = F.relu(self.conv(torch.cat([corr, flow_features], dim=1)))
        gru_flow = flow if self.gru_flow_channels == self.flow_channels else flow[:, : self.gru_flow_channels]
        size = self.hidden_size
        if self.context_gates_once:  # the context's share of each gate comes in `context`, computed once per call
            inputs = torch.cat([motion, gru_flow], dim=1)
        else:
            inputs = torch.cat([context, motion, gru_flow], dim=1)  # torchvision: [context, motion, flow(2)]
        for index, (convzr, convq) in enumerate(zip(self.convzr, self.convq)):
            gates = convzr(torch.cat([hidden, inputs], dim=1))
            terms = context[:, 3 * size * index: 3 * size * (index + 1)] if self.context_gates_once else None
            if terms is not None:
                gates = gates + terms[:, : 2 * size]
            update, reset = torch.sigmoid(gates).split(size, dim=1)
            candidate = convq(torch.cat([reset * hidden, inputs], dim=1))
            if terms is not None:
                candidate = candidate + terms[:, 2 * size:]
            hidden = (1 - update) * hidden + update * torch.tanh(candidate)
        return hidden, self.head2(F.relu(self.head1(hidden)))
