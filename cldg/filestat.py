"""When a file's earlier sha256 can be trusted without reading it again: its stat is what it was when it was
hashed, and its last write lies clearly before that hash. One rule for the artifact store's verification cache
(WORKDIR/.verified.json) and the hf: directory digests (WORKDIR/.hf-digests.json). Torch-free and store-free."""
from __future__ import annotations

import os

# A cache entry is trusted only when the file's mtime is this much older than the check: a write in the
# same timestamp tick as the check (coarse clocks, 2 s on some filesystems) would otherwise go unseen.
RACY_NS = 2_000_000_000


def stat_key(st: os.stat_result) -> list[int]:
    """One version of a file, told without reading it: size, mtime, ctime, inode."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def written_before(mtime_ns: int, checked_ns: int) -> bool:
    """The file was last written clearly before the hash taken at `checked_ns` (outside the racy window)."""
    return mtime_ns < checked_ns - RACY_NS
