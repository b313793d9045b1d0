"""Working memory: how many views or pairs one chunk of a batched loop works on.

Every loop that works through views, pairs or spectra a chunk at a time takes
its chunk size from here: the budget for one chunk's temporaries on the device
(`working_bytes`) over the bytes of temporaries one item needs
(`items_per_chunk`). Each caller counts its own temporaries per item (arrays
alive at once times their element size); the budgets are the only sizes.

- On a GPU, large chunks: fewer kernel launches; 384 MiB stays far below any
  card's memory.
- On the CPU, two kinds of loop:
  - correlation and resampling pipelines (binning, stretch, spectra, peak search, the
    reconstruction's view filter and slabs, the fixed pattern's sums), with
    many steps per chunk: 32 MiB, temporaries that stay in the allocator's
    reused memory. Each fresh large block costs a page fault per 4 KiB
    (chunks of 10 views of 1024 px took the final pass from 0.9 s to 1.6 s);
    glibc serves blocks up to 32 MiB (its largest dynamic mmap threshold)
    from reused heap memory. Smaller chunks
    pay the steps' overhead more often (the 61 x 1024 x 1024 alignment:
    about 2.1 s of CPU at 2 MiB, 1.8 s at 32 MiB).
  - streaming loops (`cached=True`): a few elementwise operations and a
    reduction per chunk (spectrum energies and overlaps, ring sums,
    zero-shift spikes). They run at memory speed unless a chunk's
    temporaries stay in the cache: 4 MiB (the energies of 122 spectra of
    512 px views: about 8 ms at 4 MiB, 14 ms at 32 MiB).
"""

from __future__ import annotations

import torch

__all__ = ["CPU_CACHE_BYTES", "CPU_WORKING_BYTES", "GPU_WORKING_BYTES", "items_per_chunk",
           "working_bytes"]

#: Budget for the temporaries of one chunk on a GPU (bytes), either kind of loop.
GPU_WORKING_BYTES = 384 << 20
#: ...on the CPU, correlation and resampling pipelines.
CPU_WORKING_BYTES = 32 << 20
#: ...on the CPU, streaming loops (`cached=True`).
CPU_CACHE_BYTES = 4 << 20


def working_bytes(device: torch.device | str, *, cached: bool = False) -> int:
    """Budget (bytes) for the temporaries of one chunk on `device`; `cached`: a streaming loop
    (see the module docstring)."""
    if torch.device(device).type == "cuda":
        return GPU_WORKING_BYTES
    return CPU_CACHE_BYTES if cached else CPU_WORKING_BYTES


def items_per_chunk(item_bytes: int, device: torch.device | str, *, cached: bool = False
                    ) -> int:
    """How many items, each needing `item_bytes` of temporaries, one chunk on `device` holds
    (at least 1); `cached`: a streaming loop."""
    return max(1, working_bytes(device, cached=cached) // max(1, int(item_bytes)))
