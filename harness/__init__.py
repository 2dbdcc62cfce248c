"""The harness the tests and the benchmarks share (never shipped in the agent's wheel):

    netns     network namespaces entered in-process (setns), shell set-up commands
    frames    hand-built Ethernet/IPv4/UDP/TCP frames and memcached requests and replies
    testrun   pinned programs run on frames with BPF_PROG_TEST_RUN (through the agent's
              own kernel binding, mcache_agent.dataplane.libbpf)
"""
