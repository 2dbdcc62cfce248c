/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The write scanner's loop: one command per tail call through a datagram or a segment (a
 * cut line's carried bytes first), and where it leaves the TCP stream.
 *
 * Needs from its includer: xdp_scratch.h, xdp_stream.h (conn_done), mcache_write.h, the prog
 * array mc_xdp_jmp and TAIL_SCAN.
 */
#ifndef MC_XDP_SCAN_H
#define MC_XDP_SCAN_H

static __always_inline int scan_done(struct mc_xscratch *s)
{
	if (!s->tcp)
		return XDP_PASS;
	if (s->pos > s->payload_len) /* the value runs on into the next segments */
		conn_done(s, MC_CS_VALUE, s->seq + s->pos, 0);
	else
		conn_done(s, MC_CS_LINE, 0, 0);
	return XDP_PASS;
}

/* Where the stream stands is lost (a line that starts like a write and is longer than any
 * write we read): every later byte of the connection empties the cache. */
static __always_inline int scan_blind(struct mc_xscratch *s, __u32 reason)
{
	mc_fallback_flush(reason);
	if (s->tcp)
		conn_done(s, MC_CS_BLIND, 0, 0);
	return XDP_PASS;
}

/* The command is cut by the segment's end. Over TCP its bytes so far (the whole window: the
 * scanner said so) are kept, and read again in front of the next segment's. A datagram has
 * no next: memcached reads each into the start of its buffer, and drops a command it cuts. */
static __always_inline int scan_cut(struct mc_xscratch *s, __u32 n)
{
	if (!s->tcp)
		return XDP_PASS;
	if (n > MC_CARRY_BYTES || s->payload_len - s->pos + s->carry_len != n)
		return scan_blind(s, MC_FR_CUT_LINE); /* more than a carry holds */
	struct mc_carry *k = (struct mc_carry *)s->buf; /* the window, from its start */
	if (mc_carry.update(&s->ck, k)) /* a full map: nothing to read the rest with */
		return scan_blind(s, MC_FR_CUT_LINE);
	conn_done(s, MC_CS_CARRY, 0, n);
	return XDP_PASS;
}

/* The window at s->pos: over TCP, after a cut line's carried bytes on the first step. The
 * window's length, or 0 when the bytes cannot be read. */
static __always_inline __u32 scan_window(struct xdp_md *ctx, struct mc_xscratch *s, __u32 rem)
{
	__u32 carry = s->carry_len;
	if (carry == 0 || carry > MC_CARRY_BYTES) {
		__u64 n = rem < MC_WIN ? rem : MC_WIN; /* u64: no zero-extended copy to check */
		if (!MC_SIZE_OK(n, MC_WIN) ||
		    bpf_xdp_load_bytes(ctx, s->payload_off + s->pos, s->buf, n) < 0)
			return 0;
		return n;
	}
	struct mc_carry *k = mc_carry.lookup(&s->ck);
	if (!k)
		return 0; /* evicted: the line's start is gone */
	__builtin_memcpy(s->buf, k->line, MC_CARRY_BYTES);
	__u32 room = MC_WIN - carry;
	__u64 n = rem < room ? rem : room;
	__u32 at = carry;
	MC_OPAQUE(at); /* else the compiler drops the mask the verifier needs */
	at &= 511;
	if (n == 0 || !MC_SIZE_OK(n, MC_WIN) ||
	    bpf_xdp_load_bytes(ctx, s->payload_off + s->pos, s->buf + at, n) < 0)
		return 0;
	return carry + n;
}

static __always_inline int scan(struct xdp_md *ctx, struct mc_xscratch *s)
{
	if (s->pos >= s->payload_len)
		return scan_done(s);
	if (++s->steps > MC_MAX_SCAN_STEPS) /* more commands than we may look at */
		return scan_blind(s, MC_FR_STEPS);
	__u32 rem = s->payload_len - s->pos;
	__u32 carry = s->carry_len;
	__u32 n = scan_window(ctx, s, rem);
	if (n == 0 || n > MC_WIN)
		return scan_blind(s, carry ? MC_FR_CUT_LINE : MC_FR_LOAD);
	__u64 adv = 0;
	int r = s->skipping ? mc_scan_skip(s->buf, &s->tok, n, rem + carry, &adv)
			    : mc_scan_cmd(s->buf, &s->tok, n, rem + carry, &adv);
	if (r == MC_SCAN_CUT) {
		if (s->skipping) { /* the long line goes on in the next segment */
			if (s->tcp)
				conn_done(s, s->buf[(n - 1) & MC_BUF_MASK] == '\r' ? MC_CS_LONG_CR :
					  MC_CS_LONG, 0, 0);
			return XDP_PASS;
		}
		return scan_cut(s, n);
	}
	if (r == MC_SCAN_UNSURE || adv < carry)
		return scan_blind(s, MC_FR_UNSURE);
	s->skipping = r == MC_SCAN_LONG;
	s->pos += adv - carry;
	s->carry_len = 0;
	mc_xdp_jmp.call(ctx, TAIL_SCAN);
	return scan_blind(s, MC_FR_TAIL_CALL);
}

#endif /* MC_XDP_SCAN_H */
