"""The data plane as the agent drives it.

    libbpf       the one binding to bpf(2): maps, pins, test runs, program and map accounts
    pins         the pin directory and the record of what runs (the commit point)
    layout       struct layouts from the compiler, packing, byte orders, the key hash
    configmap    a Config as struct mc_config, and the map hot swap
    plan         what an apply must do (the one planner: apply, apply --check, tests)
    sets         program sets: load (in loader workers), hold, switch the roots
    loader       the worker that compiles and loads with bcc (`python -m ...loader`)
    attach       XDP and TC attachment to interfaces
    readings     counters, fill level, generation, kernel memory
    transaction  Dataplane: apply / reconcile / flush / teardown behind one lock
    source       the C sources, their fingerprints, compiler flags
"""

from mcache_agent.dataplane.plan import Plan, PlanRefused
from mcache_agent.dataplane.readings import CacheUsage, Memory
from mcache_agent.dataplane.transaction import ApplyResult, Dataplane, DataplaneError

__all__ = ["ApplyResult", "CacheUsage", "Dataplane", "DataplaneError", "Memory", "Plan",
           "PlanRefused"]
