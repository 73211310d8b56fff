"""RAFT Small's update block regrouped for tensor cores, with the same arithmetic as torchvision's.

Two changes, neither of which alters the result beyond float rounding:

- every convolution input has a multiple of 8 channels: the correlation features (196) and the flow (2) are
  zero-padded to 200 and 8 channels, and the matching weight columns are zero, so the GRU's input
  (hidden 96 + context 64 + motion 80 + flow 8) is 248 channels instead of 242; cuDNN then needs no
  padding copies around each convolution;
- the GRU's update and reset gates (``convz``, ``convr``), which read the same input, run as one convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.optical_flow.raft import UpdateBlock

CHANNEL_MULTIPLE = 8


def padded_channels(channels: int) -> int:
    return -(-channels // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE


def _conv_like(conv: nn.Conv2d, in_channels: int, weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    """A copy of ``conv`` with ``in_channels`` inputs and the given weight/bias."""
    new = nn.Conv2d(in_channels, weight.shape[0], conv.kernel_size, conv.stride, conv.padding,
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


class FastUpdateBlock(nn.Module):
    """``forward(hidden, context, corr_padded, flow_padded) -> (hidden, delta_flow)``.

    ``corr_padded`` has :attr:`corr_channels` channels (correlation features, then zeros) and ``flow_padded``
    has :attr:`flow_channels` (the 2 flow channels, then zeros). Built from torchvision's RAFT Small
    ``UpdateBlock`` (1x1 correlation conv, one GRU with 3x3 kernels); other update blocks are rejected.
    """

    def __init__(self, block: UpdateBlock) -> None:
        super().__init__()
        motion = block.motion_encoder
        recurrent = block.recurrent_block
        if not isinstance(motion.convcorr2, nn.Identity) or not callable(recurrent.convgru2) or isinstance(
            recurrent.convgru2, nn.Module
        ):
            raise ValueError("FastUpdateBlock supports RAFT Small's update block only (one corr conv, one GRU).")
        gru = recurrent.convgru1
        self.hidden_size = recurrent.hidden_size
        self.corr_channels = padded_channels(motion.convcorr1[0].in_channels)
        self.flow_channels = padded_channels(2)
        self.convcorr1 = _pad_inputs(motion.convcorr1[0], self.corr_channels)
        self.convflow1 = _pad_inputs(motion.convflow1[0], self.flow_channels)
        self.convflow2 = motion.convflow2[0]
        self.conv = motion.conv[0]
        gru_inputs = gru.convz.in_channels + self.flow_channels - 2
        convz, convr = _pad_inputs(gru.convz, gru_inputs), _pad_inputs(gru.convr, gru_inputs)
        self.convzr = _conv_like(gru.convz, gru_inputs, torch.cat([convz.weight, convr.weight]),
                                 torch.cat([convz.bias, convr.bias]))
        self.convq = _pad_inputs(gru.convq, gru_inputs)
        self.head1 = block.flow_head.conv1
        self.head2 = block.flow_head.conv2

    def forward(self, hidden: Tensor, context: Tensor, corr: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        corr = F.relu(self.convcorr1(corr))
        flow_features = F.relu(self.convflow2(F.relu(self.convflow1(flow))))
        motion = F.relu(self.conv(torch.cat([corr, flow_features], dim=1)))
        inputs = torch.cat([context, motion, flow], dim=1)  # torchvision: [context, motion, flow(2)]
        gates = torch.sigmoid(self.convzr(torch.cat([hidden, inputs], dim=1)))
        update, reset = gates.split(self.hidden_size, dim=1)
        candidate = torch.tanh(self.convq(torch.cat([reset * hidden, inputs], dim=1)))
        hidden = (1 - update) * hidden + update * candidate
        return hidden, self.head2(F.relu(self.head1(hidden)))
