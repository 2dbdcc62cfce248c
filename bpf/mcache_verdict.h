/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A packet's verdicts: counted in the line of the config version that decided and the path
 * (sub-program) that decided, and, while a capture runs, copied with the frame to the
 * capture ring.
 *
 * Each program file keeps a struct mc_pkt in its per-CPU scratch: the entry program begins
 * it (mc_pkt_begin), a tail-called program names its own path (mc_pkt_path), and every
 * program returns through its file's finish(), which, when a capture runs, tail-calls the
 * file's capture program (xdp_capture, tc_capture): the copy is verified once there, not
 * once for every state that reaches an exit. With no capture the cost is one array lookup
 * per packet (the entry reads mc_capture_ctl.on) and a branch at the exit.
 */
#ifndef MCACHE_VERDICT_H
#define MCACHE_VERDICT_H

#include "mcache_maps.h"

struct mc_capture_rec {
	struct mc_capture_hdr hdr;
	__u8 data[MC_CAP_SNAP];
};

struct mc_pkt {
	__u32 cap;     /* a capture runs: read once at the entry */
	__u32 seen;    /* the verdicts counted for this packet, a bit each */
	__u32 line;    /* where this program counts: mc_stat_line(slot, path) */
	__u32 slot;    /* the config's stats_slot */
	__u32 version; /* the config's version */
	__u32 emitted; /* records this CPU put on the ring (never reset) */
	__u32 exit_path; /* for the capture program: the program that decided, */
	__u32 action;    /* and what it returned */
	__u32 pad;
	struct mc_capture_rec rec; /* the key is noted here as the packet is parsed */
};

static __always_inline struct mc_capture_ctl *mc_capture(void)
{
	u32 zero = 0;
	return mc_capture_ctl.lookup(&zero);
}

/* The entry program, for every packet: the config it read decides where it counts. */
static __always_inline void mc_pkt_begin(struct mc_pkt *p, struct mc_config *cfg, __u32 path)
{
	struct mc_capture_ctl *c = mc_capture();
	p->cap = c && c->on;
	p->slot = cfg->stats_slot;
	p->line = mc_stat_line(p->slot, path);
	p->version = cfg->version; /* a capture's records and XDP's hand-overs to TC name it */
	if (p->cap) { /* what only a capture reads */
		p->seen = 0;
		p->rec.hdr.key_len = 0;
		p->rec.hdr.key_full = 0;
	}
}

/* A tail-called program: counts in its own path, in the line the entry chose. */
static __always_inline void mc_pkt_path(struct mc_pkt *p, __u32 path)
{
	p->line = mc_stat_line(p->slot, path);
}

static __always_inline void mc_pkt_count(struct mc_pkt *p, __u32 verdict)
{
	p->seen |= 1U << (verdict & 31);
	mc_count_at(p->line + verdict, 1);
}

/* Counts n (0 or 1) of a verdict, without a branch on n. */
static __always_inline void mc_pkt_count_n(struct mc_pkt *p, __u32 verdict, __u32 n)
{
	p->seen |= (n & 1) << (verdict & 31);
	mc_count_at(p->line + verdict, n & 1);
}

/* The key the packet is about, for a capture's record and key filter: its first MC_CAP_KEY
 * bytes. buf is a scratch buffer that may be read MC_CAP_KEY bytes past any offset masked
 * with MC_BUF_MASK. */
static __always_inline void mc_pkt_key(struct mc_pkt *p, const __u8 *buf, __u32 off, __u32 len)
{
	if (!p->cap)
		return;
	const __u64 *src = (const __u64 *)(buf + (off & MC_BUF_MASK));
	__u64 *dst = (__u64 *)p->rec.hdr.key;
#pragma unroll
	for (int i = 0; i < MC_CAP_KEY / 8; i++) /* a word at a time: no copy through the stack */
		dst[i] = src[i];
	p->rec.hdr.key_full = len;
	p->rec.hdr.key_len = len < MC_CAP_KEY ? len : MC_CAP_KEY;
}

/*
 * Whether the running capture wants this frame (interface, verdicts, lease, key prefix).
 * If it does, the record's header is filled and the frame bytes to copy are returned (the
 * caller copies them to rec.data, then calls mc_capture_emit); else -1.
 */
static __always_inline int mc_capture_select(struct mc_pkt *p, __u32 ifindex, __u32 path,
					     __u32 stage, __u32 action, __u32 frame_len)
{
	struct mc_capture_ctl *c = mc_capture();
	if (!c || !c->on || (c->ifindex && c->ifindex != ifindex))
		return -1;
	__u32 bits = p->seen ? p->seen : 1U << MC_CAP_NONE;
	if (!(bits & c->verdicts))
		return -1;
	__u64 now = bpf_ktime_get_ns();
	if (now > c->until_ns)
		return -1; /* the capture process is gone (or stalled): copy nothing */
	struct mc_capture_hdr *h = &p->rec.hdr;
	__u32 want = c->key_len;
	if (want) {
		if (want > MC_CAP_KEY || h->key_full < want)
			return -1;
		for (__u32 i = 0; i < MC_CAP_KEY; i++) {
			if (i >= want)
				break;
			if (h->key[i] != c->key[i])
				return -1;
		}
	}
	__u32 n = frame_len < c->snaplen ? frame_len : c->snaplen;
	if (n > MC_CAP_SNAP)
		n = MC_CAP_SNAP;
	h->ts_ns = now;
	h->ifindex = ifindex;
	h->version = p->version;
	h->verdicts = p->seen;
	h->frame_len = frame_len;
	h->cap_len = n;
	h->path = path;
	h->stage = stage;
	h->action = action;
	return n;
}

/*
 * The record to the ring. Waking the capture process costs microseconds (an irq_work and a
 * reschedule), several times the record's own cost: only every MC_CAP_WAKE_EVERY-th record of
 * a CPU wakes it, and it reads the ring on a timer as well (mcache_agent/capture.py).
 */
static __always_inline void mc_capture_emit(struct mc_pkt *p)
{
	__u64 size = sizeof(struct mc_capture_hdr) + (p->rec.hdr.cap_len & (MC_CAP_SNAP * 2 - 1));
	if (size > sizeof(p->rec))
		return;
	__u64 wake = ++p->emitted % MC_CAP_WAKE_EVERY ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP;
	if (mc_capture_ring.ringbuf_output(&p->rec, size, wake)) {
		u32 zero = 0;
		u64 *lost = mc_capture_lost.lookup(&zero);
		if (lost)
			*lost += 1;
	}
}

/* The frame of an XDP program as it is now (the request, or the reply written over it), to
 * a capture that wants it. */
static __always_inline void mc_capture_xdp(struct xdp_md *ctx, struct mc_pkt *p, __u32 path,
					   __u32 stage, __u32 action)
{
	__u32 len = (__u32)((long)ctx->data_end - (long)ctx->data);
	int r = mc_capture_select(p, ctx->ingress_ifindex, path, stage, action, len);
	if (r < 0)
		return;
	__u64 n = r;
	if (MC_SIZE_OK(n, MC_CAP_SNAP) && bpf_xdp_load_bytes(ctx, 0, p->rec.data, n))
		return;
	mc_capture_emit(p);
}

/* The same for a TC program's skb. */
static __always_inline void mc_capture_skb(struct __sk_buff *skb, struct mc_pkt *p, __u32 path,
					   __u32 stage, __u32 action)
{
	int r = mc_capture_select(p, skb->ifindex, path, stage, action, skb->len);
	if (r < 0)
		return;
	__u64 n = r;
	if (MC_SIZE_OK(n, MC_CAP_SNAP) && bpf_skb_load_bytes(skb, 0, p->rec.data, n))
		return;
	mc_capture_emit(p);
}

#endif /* MCACHE_VERDICT_H */
