"""Random draws from a private generator, never the process's global one.

torchvision builds RAFT with random initial weights (``nn.init`` draws from torch's default generator), even when
pretrained weights replace them right after. The host's random stream must not move because a model was built,
and two threads building models at once must not share one stream (each would get the other's draws). Inside
:func:`drawing_from`, every random draw the calling thread makes without a generator of its own comes from the
given generator instead: a ``TorchFunctionMode``, which is per thread, so other threads draw as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# Tensor methods, torch functions and nn.init functions that draw random numbers and take ``generator=``.
RANDOM_FUNCTIONS = frozenset({
    "uniform_", "normal_", "random_", "bernoulli_", "exponential_", "geometric_", "log_normal_", "cauchy_",
    "rand", "randn", "randint", "randperm", "normal", "bernoulli", "multinomial",
    "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "trunc_normal_", "orthogonal_",
    "sparse_",
})


class _PrivateGenerator(TorchFunctionMode):
    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if getattr(func, "__name__", None) in RANDOM_FUNCTIONS and kwargs.get("generator") is None:
            kwargs["generator"] = self.generator
        return func(*args, **kwargs)


@contextmanager
def drawing_from(generator: torch.Generator) -> Iterator[torch.Generator]:
    """Make this thread's random draws without a generator of their own come from ``generator`` (a CPU
    generator: models are built on the CPU) for the duration of the block."""
    with _PrivateGenerator(generator):
        yield generator


def seeded_generator(seed: int) -> torch.Generator:
    """A private CPU generator seeded with ``seed``: the same draws as ``torch.manual_seed(seed)`` would give."""
    return torch.Generator().manual_seed(seed)
