"""Networks as stacks of blocks: dense, residual, normalized, attention, convolution, the user's.

* :func:`block` builds a :class:`Block` by kind (:func:`block_names`), :func:`user_block` wraps
  the user's own ``init``/``apply`` pair;
* :func:`net_init`/:func:`net_apply`: the network (an embedding, ``depth`` blocks under
  ``lax.scan``, a readout), :class:`NetParams`;
* :func:`trace_net` (also reached through :func:`stabkit.trace`): statistics at every block
  boundary and at the taps inside the blocks, forward and backward;
* :mod:`stabkit.networks.norms`: ``layer_norm``, ``rms_norm``, ``batch_norm``.
"""

from stabkit.networks.attention import rank_residual
from stabkit.networks.blocks import Block, Branch
from stabkit.networks.conv import circular_conv, delta_orthogonal_kernel
from stabkit.networks.kinds import block, block_names, user_block
from stabkit.networks.network import NetParams, net_apply, net_init
from stabkit.networks.norms import batch_norm, layer_norm, rms_norm
from stabkit.networks.trace import NetTrace, trace_net

__all__ = [
    "Block",
    "Branch",
    "NetParams",
    "NetTrace",
    "batch_norm",
    "block",
    "block_names",
    "circular_conv",
    "delta_orthogonal_kernel",
    "layer_norm",
    "net_apply",
    "net_init",
    "rank_residual",
    "rms_norm",
    "trace_net",
    "user_block",
]
