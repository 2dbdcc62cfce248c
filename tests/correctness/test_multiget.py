"""Multi-gets of 32 keys under concurrent writers: the coherence checker's readers send only
32-key multi-gets (the 8 keys the writers hammer and 24 stored once, in a new order each
time). The cache answers one only when all 32 keys hit, memcached's replies fill the rest;
no read may return a value a writer had already replaced."""

from __future__ import annotations

import os

from tests.correctness import checker
from tests.correctness import lab as L
from tests.correctness.test_coherence import assert_coherent

MULTI_OPS = int(os.environ.get("MCACHE_CORR_MULTI_OPS", "4000"))


def test_no_stale_reads_with_32_key_multiget_readers():
    lb = L.Lab("q", hold_ms=50).up()
    try:
        # writers slower than in the race runs: every request names the 8 written keys,
        # so the kernel answers only in the gaps between their writes
        rep = checker.run(MULTI_OPS, lab=lb, reads="multi32", pace=0.2, read_pace=0.01)
    finally:
        lb.down()
    print(rep["kernel_hit_ratio"], rep["values_by_via"], rep["counters"])
    assert_coherent(rep)
    assert set(rep["values_by_via"]) == {"multi32"}, rep["values_by_via"]
    c = rep["counters"]
    assert c.get("hit", 0) > 20, c  # 32-key multi-gets answered by the kernel
    assert c.get("fill", 0) > 50, c  # and memcached's replies to the others filled
    assert c.get("invalidate", 0) > 50, c
