"""Notebook stall workaround, loaded for every pytest run by `-p tests.nbstall` (pyproject.toml).

The workaround (see shared/notes/notebook-test-stalls.md): when a widget cell sends a
burst of comm messages on IOPub at the moment its `execute_reply` arrives, jupyter_client's
asynchronous `socket.poll(timeout)` on the shell channel sometimes misses the wake-up and returns
only when the whole cell timeout has run out; nbmake (through nbclient) then passes minutes late.
Polling in short slices bounds a missed wake-up to one slice. Measured there: 5 of 60 widget
notebook runs stalled before, 0 of 60 after. Remove this when jupyter_client fixes the race.
"""

import os
import time
from queue import Empty

from jupyter_client.channels import AsyncZMQSocketChannel

_SLICE_S = 0.2


async def _get_msg_in_slices(self, timeout=None):
    """Like AsyncZMQSocketChannel.get_msg, but polls at most _SLICE_S seconds at a time."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _SLICE_S if deadline is None else min(_SLICE_S, deadline - time.monotonic())
        if await self.socket.poll(max(0, int(left * 1000))):
            return await self._recv()
        if deadline is not None and time.monotonic() >= deadline:
            raise Empty


AsyncZMQSocketChannel.get_msg = _get_msg_in_slices

# One intra-op thread for every kernel nbmake starts (they inherit this environment): on the
# 2-core test machine two torch threads spin-waiting on each other made notebook 04 take over
# 280 s instead of about 60 s. A learner's own JupyterLab is not affected.
os.environ.setdefault("OMP_NUM_THREADS", "1")
