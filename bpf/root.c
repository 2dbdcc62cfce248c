/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The stable roots: what is attached to the interfaces (XDP, TC ingress, TC egress), to the
 * cgroup whose connections may join the local bypass (sockops) and to the bypass's sockhash
 * (sk_msg). Each tail-calls slot 0 of its pinned prog array, where the current program set's
 * entry sits; a program hot swap is one update of each slot. An empty slot passes; for a
 * connection in the bypass that is leaving it (the agent tore the data plane down).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "mcache_bypass.h"

#ifndef MC_PIN_DIR
#define MC_PIN_DIR "/sys/fs/bpf/mcache"
#endif

BPF_TABLE_PINNED("prog", u32, u32, xdp_root_jmp, MC_PROG_SETS, MC_PIN_DIR "/xdp_root_jmp");
BPF_TABLE_PINNED("prog", u32, u32, tc_root_jmp, MC_PROG_SETS, MC_PIN_DIR "/tc_root_jmp");
BPF_TABLE_PINNED("prog", u32, u32, tc_in_root_jmp, MC_PROG_SETS, MC_PIN_DIR "/tc_in_root_jmp");
BPF_TABLE_PINNED("prog", u32, u32, sock_root_jmp, MC_PROG_SETS, MC_PIN_DIR "/sock_root_jmp");
BPF_TABLE_PINNED("prog", u32, u32, msg_root_jmp, MC_PROG_SETS, MC_PIN_DIR "/msg_root_jmp");

int xdp_root(struct xdp_md *ctx)
{
	xdp_root_jmp.call(ctx, 0);
	return XDP_PASS;
}

int tc_root(struct __sk_buff *skb)
{
	tc_root_jmp.call(skb, 0);
	return TC_ACT_OK;
}

int tc_in_root(struct __sk_buff *skb)
{
	tc_in_root_jmp.call(skb, 0);
	return TC_ACT_OK;
}

int sock_root(struct bpf_sock_ops *skops)
{
	sock_root_jmp.call(skops, 0);
	return 1;
}

int msg_root(struct sk_msg_md *msg)
{
	msg_root_jmp.call(msg, 0);
	struct mc_bypass_conn *c = mc_bypass.sk_storage_get(msg->sk, 0, 0);
	return c ? mc_bypass_leave(c) : SK_PASS;
}
