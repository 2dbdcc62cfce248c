/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The TCP stream a segment belongs to: the host's socket for it, what the kernel will take
 * of it, and how far the write scanner has read it (docs/HOSTILE_INPUT.md).
 *
 * Needs from its includer: xdp_scratch.h, the prog array mc_xdp_jmp and TAIL_SCAN (the
 * scanner, xdp_scan), and the -D offsets of the kernel's TCP receive state
 * (MC_TCP_RCV_NXT, MC_TCP_BYTES_RECEIVED, MC_TCP_RCV_WND, MC_TCP_RCV_WUP,
 * MC_TCP_REQ_RCV_ISN: mcache_agent/dataplane/kernel_btf.py).
 */
#ifndef MC_XDP_STREAM_H
#define MC_XDP_STREAM_H

/*
 * The write scanner trusts only bytes the kernel will hand memcached, in the order it hands
 * them over (docs/HOSTILE_INPUT.md). XDP runs before TCP has checked a segment, so each data
 * segment is first matched to this host's socket for its address pair: the connection's
 * receive state (read through BTF, offsets from this kernel's own BTF) names the stream's
 * first sequence number, and mc_conn says how far the scanner has read it. A segment for no
 * connection, or outside the kernel's window, moves nothing; one that starts past what was
 * read (a gap: loss, reordering, or a forged sequence number) is dropped, so that TCP sends
 * it again in order; one that starts before it (a retransmission) is read from where reading
 * stopped. SYN, FIN and RST move nothing either: a new connection on the same address pair
 * has another first sequence number.
 */
#define MC_KREAD32(p, off) (*(volatile __u32 *)((char *)(p) + (off)))
#define MC_KREAD64(p, off) (*(volatile __u64 *)((char *)(p) + (off)))
#define MC_TCP_LISTEN 10 /* BPF_TCP_LISTEN */

/* What the kernel will take of a connection: its first sequence number and rcv_nxt, and
 * the room in its receive window. */
struct mc_tcp_view {
	__u32 base;
	__u32 nxt;
	__u32 wnd;
};

static __always_inline int tcp_view(struct xdp_md *ctx, struct mc_xscratch *s, void *iph,
				    __u32 iph_len, struct tcphdr *th, struct mc_tcp_view *v)
{
	struct bpf_sock_tuple t = {};
	__u32 tlen;
	if (s->ipv6) {
		__builtin_memcpy(t.ipv6.saddr, s->ck.saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, s->ck.daddr, 16);
		t.ipv6.sport = s->ck.sport;
		t.ipv6.dport = s->ck.dport;
		tlen = sizeof(t.ipv6);
	} else {
		t.ipv4.saddr = s->ck.saddr[3];
		t.ipv4.daddr = s->ck.daddr[3];
		t.ipv4.sport = s->ck.sport;
		t.ipv4.dport = s->ck.dport;
		tlen = sizeof(t.ipv4);
	}
	struct bpf_sock *sk = bpf_skc_lookup_tcp(ctx, &t, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	int ok = 0;
	if (sk->state == MC_TCP_LISTEN) {
		/* No connection yet: only the ACK of a SYN cookie makes one (with this segment's
		 * sequence number as its first). */
		if (bpf_tcp_check_syncookie(sk, iph, iph_len, th, sizeof(*th)) == 0) {
			v->base = v->nxt = s->seq;
			v->wnd = 0xffff;
			ok = 1;
		}
	} else {
		void *tp = bpf_skc_to_tcp_sock(sk);
		if (tp) {
			__u32 nxt = MC_KREAD32(tp, MC_TCP_RCV_NXT);
			__u64 got = MC_KREAD64(tp, MC_TCP_BYTES_RECEIVED);
			__s32 wnd = (__s32)(MC_KREAD32(tp, MC_TCP_RCV_WUP) +
					    MC_KREAD32(tp, MC_TCP_RCV_WND) - nxt);
			v->base = nxt - (__u32)got;
			v->nxt = nxt;
			v->wnd = wnd > 0 ? wnd : 0;
			ok = 1;
		} else {
			/* A handshake the kernel has not finished (its ACK is in the same batch of
			 * frames): the stream starts after the client's ISN. */
			void *rq = bpf_skc_to_tcp_request_sock(sk);
			if (rq) {
				v->base = v->nxt = MC_KREAD32(rq, MC_TCP_REQ_RCV_ISN) + 1;
				v->wnd = 0xffff;
				ok = 1;
			}
		}
	}
	bpf_sk_release(sk);
	return ok;
}

static __always_inline int start_scan(struct xdp_md *ctx, struct mc_xscratch *s, __u32 pos)
{
	s->pos = pos;
	s->steps = 0;
	s->skipping = 0;
	s->carry_len = 0;
	mc_xdp_jmp.call(ctx, TAIL_SCAN);
	/* The tail call failed: nothing may slip past, so empty the cache. */
	mc_fallback_flush(MC_FR_TAIL_CALL);
	return XDP_PASS;
}

/* The segment is read up to its end (or was not read: the cache was emptied for it). */
static __always_inline void conn_done(struct mc_xscratch *s, __u32 mode, __u32 skip_seq,
				      __u32 carry_len)
{
	s->conn.next_seq = s->seq + s->payload_len;
	s->conn.mode = mode;
	s->conn.skip_seq = skip_seq;
	s->conn.carry_len = carry_len;
	s->conn.seen_ns = bpf_ktime_get_ns();
	mc_conn.update(&s->ck, &s->conn);
}

static __always_inline int tcp_segment(struct xdp_md *ctx, struct mc_xscratch *s,
				       struct tcphdr *th, void *iph, __u32 iph_len)
{
	if (s->payload_len == 0)
		return XDP_PASS; /* SYN, FIN, RST, ACK: nothing to read, nothing moves */
	if (th->syn) {
		/* Data on a SYN (TCP Fast Open) would reach memcached before any connection
		 * exists to match it to: dropped, the client sends it again after the handshake. */
		mc_count(MC_V_HIDDEN);
		return XDP_DROP;
	}
	struct mc_tcp_view v = {};
	if (!tcp_view(ctx, s, iph, iph_len, th, &v)) {
		mc_count(MC_V_UNREAD); /* no connection takes it: the kernel answers with a RST */
		return XDP_PASS;
	}
	__u32 seq = s->seq;
	struct mc_conn *c = mc_conn.lookup(&s->ck);
	if (!c || c->base != v.base) {
		__s32 off = (__s32)(seq - v.nxt);
		if (seq != v.base && (off < 0 || (__u32)off >= v.wnd)) {
			mc_count(MC_V_UNREAD); /* outside the window: the kernel drops it */
			return XDP_PASS;
		}
		s->conn.base = v.base;
		s->conn.next_seq = seq;
		s->conn.skip_seq = seq;
		s->conn.mode = MC_CS_LINE;
		s->conn.carry_len = 0;
		/* A stream whose start we did not see (older than these maps, or its state
		 * evicted): where its commands start is taken on trust, after emptying the
		 * cache for what may have been missed. */
		if (seq != v.base)
			mc_fallback_flush(MC_FR_UNKNOWN_STREAM);
	} else {
		s->conn = *c;
	}
	__s32 gap = (__s32)(seq - s->conn.next_seq);
	if (gap > 0) {
		if ((__s32)(v.nxt - s->conn.next_seq) > 0) {
			/* The kernel took bytes the scanner never read (they came another way):
			 * read on from here, after emptying the cache for them. */
			mc_fallback_flush(MC_FR_DESYNC);
			s->conn.next_seq = seq;
			s->conn.mode = MC_CS_LINE;
		} else {
			mc_count(MC_V_OUT_OF_ORDER);
			return XDP_DROP;
		}
	}
	__u32 pos = (__u32)(-gap > 0 ? -gap : 0); /* bytes read before: a retransmission */
	if (pos >= s->payload_len)
		return XDP_PASS;
	__u32 mode = s->conn.mode;
	if (mode == MC_CS_BLIND) {
		mc_fallback_flush(MC_FR_BLIND);
		conn_done(s, MC_CS_BLIND, 0, 0);
		return XDP_PASS;
	}
	if (mode == MC_CS_VALUE) {
		__s32 value = (__s32)(s->conn.skip_seq - seq);
		if (value > 0 && (__u32)value >= s->payload_len) {
			conn_done(s, MC_CS_VALUE, s->conn.skip_seq, 0);
			return XDP_PASS; /* all of it is value bytes */
		}
		if (value > (__s32)pos)
			pos = value;
	}
	s->pos = pos;
	s->steps = 0;
	s->skipping = 0;
	s->carry_len = 0;
	if (mode == MC_CS_CARRY && pos == 0)
		s->carry_len = s->conn.carry_len;
	else if (mode == MC_CS_CARRY) {
		/* A retransmission that starts inside the carried line: it cannot happen with
		 * a sender that keeps its bytes. */
		mc_fallback_flush(MC_FR_CUT_LINE);
		conn_done(s, MC_CS_BLIND, 0, 0);
		return XDP_PASS;
	}
	if (mode == MC_CS_LONG || mode == MC_CS_LONG_CR) {
		s->skipping = 1;
		__u8 first = 0;
		if (mode == MC_CS_LONG_CR &&
		    !bpf_xdp_load_bytes(ctx, s->payload_off + (pos & 0xffff), &first, 1) &&
		    first == '\n') {
			s->pos = pos + 1; /* the long line's "\r\n" was cut between segments */
			s->skipping = 0;
		}
	}
	mc_xdp_jmp.call(ctx, TAIL_SCAN);
	mc_fallback_flush(MC_FR_TAIL_CALL);
	conn_done(s, MC_CS_BLIND, 0, 0);
	return XDP_PASS;
}

#endif /* MC_XDP_STREAM_H */
