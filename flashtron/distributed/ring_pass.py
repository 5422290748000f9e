"""The ring's schedule: one forward pass and one backward pass over the steps, whatever a block is.

Both ring functions (dense and packed variable-length) walk the same schedule and differ only in
what a block call computes.  At step s of W a rank holds rank - s's stacked keys and values; it
starts shifting them to rank + 1 (one batched isend/irecv) before computing with them, so the
transfer overlaps the block's attention, and waits for the shift only when it needs the next
block.  In the backward, the running float32 sum of the block's dk, dv travels with it: each rank
adds its share and passes it on, so after W shifts every rank holds the gradient of its own keys
and values.  The caller supplies the per-call work as a function and keeps its own accumulators.
"""

from typing import Callable, Iterable

import torch

from flashtron.distributed.comm import TAG_GRADIENT, TAG_KEY_VALUE, Ring

# (step, key rank, the step's calls): what a ring function plans for each of the W steps.
Steps = Iterable[tuple]


def forward_pass(ring: Ring, key_value: torch.Tensor, steps: Steps,
                 attend: Callable[[torch.Tensor, int, int, object], None]) -> None:
    """Run attend(key_value, key_rank, index, call) for every call of every step, with key_value
    the stacked (k, v) of key_rank, shifting the blocks around the ring while they are used."""
    for step, key_rank, calls in steps:
        last = step + 1 == ring.world_size
        if not last:
            next_key_value, requests = ring.shift(key_value, TAG_KEY_VALUE)
        for index, call in enumerate(calls):
            attend(key_value, key_rank, index, call)
        if not last:
            ring.wait(requests)
            key_value = next_key_value


def backward_pass(ring: Ring, key_value: torch.Tensor, steps: Steps,
                  differentiate: Callable[[torch.Tensor, int, int, object, torch.Tensor], None]) -> torch.Tensor:
    """Run differentiate(key_value, key_rank, index, call, gradient) for every call of every step;
    it adds the call's dk, dv into `gradient` (float32, key_value's shape: the block's running sum)
    and keeps dq itself.  Returns this rank's own (dk, dv), stacked, in float32."""
    # (buffer, requests): the running dk, dv of the block in hand, coming from the previous rank.
    gradient_in_flight = None
    for step, key_rank, calls in steps:
        last = step + 1 == ring.world_size
        if not last:
            next_key_value, requests = ring.shift(key_value, TAG_KEY_VALUE)
        block_gradient = None
        for index, call in enumerate(calls):
            if block_gradient is None:
                block_gradient = torch.zeros(key_value.shape, dtype=torch.float32, device=key_value.device)
            differentiate(key_value, key_rank, index, call, block_gradient)
        if gradient_in_flight is not None:
            received, gradient_requests = gradient_in_flight
            ring.wait(gradient_requests)
            block_gradient = received if block_gradient is None else block_gradient.add_(received)
        elif block_gradient is None:
            block_gradient = torch.zeros(key_value.shape, dtype=torch.float32, device=key_value.device)
        gradient_in_flight = ring.shift(block_gradient, TAG_GRADIENT)
        if not last:
            ring.wait(requests)
            key_value = next_key_value
    # After W shifts the running sums are back at their owners: this rank's own dk, dv.
    own_gradient, gradient_requests = gradient_in_flight
    ring.wait(gradient_requests)
    return own_gradient
