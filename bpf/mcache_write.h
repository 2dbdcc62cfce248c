/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The write side, shared by every hook that sees a client's commands before memcached does:
 * XDP (TCP segments and UDP datagrams, xdp_ingress.c) and the local bypass's sk_msg program
 * (messages between local sockets, sock_bypass.c). One command at a time: mc_scan_cmd reads
 * the command at the start of a window of the stream, invalidates every key it may change
 * (or empties the cache when it cannot tell), and says where the next command starts.
 *
 * The includer defines mc_count(verdict) (mcache_maps.h) and mc_note_key(buf, off, len)
 * (what its capture records of a key), and copies the window into a scratch buffer of
 * MC_BUF + MC_BUF_PAD bytes.
 */
#ifndef MCACHE_WRITE_H
#define MCACHE_WRITE_H

#include "mcache_parse.h"

static __always_inline void mc_note_key(const __u8 *buf, __u32 off, __u32 len);

/* What a step of the scanner found at the start of its window. */
enum mc_scan_result {
	MC_SCAN_NEXT = 0,   /* understood (and invalidated): the next command is *adv bytes on,
			     * which may be past the window or the stream's end (value bytes) */
	MC_SCAN_CUT = 1,    /* cut by the end of what has arrived: cannot be read yet */
	MC_SCAN_UNSURE = 2, /* a line longer than the window that starts like a write: the
			     * cache was emptied, and where the next command starts is not known */
	MC_SCAN_LONG = 3,   /* a line longer than the window that is no write: its end lies
			     * further on; *adv bytes are behind (one less than the window, so
			     * that a "\r\n" cut by the window's end is found next time) */
};

/*
 * A write to a key: the key is dead in every way of its bucket (racing fills may have put it
 * in two), and every way records the write, since a fill may pick any of them.
 */
static __always_inline void invalidate(const __u8 *buf, __u32 off, __u32 len)
{
	if (len == 0 || len > MC_KEY_LIMIT)
		return;
	__u32 hash = mc_hash(buf, off, len);
	__u32 base = mc_bucket(hash);
	__u64 now = bpf_ktime_get_ns();
	__u64 gen = mc_gen();
	struct mc_bucket_meta *m = mc_meta(base);
	for (__u32 w = 0; w < MC_WAYS; w++) {
		__u32 idx = base + w;
		struct mc_slot *slot = mc_cache.lookup(&idx);
		if (!slot)
			continue;
		int killed = 0;
		bpf_spin_lock(&slot->lock);
		if (slot->hash == hash) {
			killed = slot->valid && slot->gen == gen;
			slot->valid = 0;
		}
		slot->write_ns = now;
		bpf_spin_unlock(&slot->lock);
		if (killed) {
			mc_level_add(gen, -1);
			if (m)
				m->fill_ms[w] = 0; /* free again */
		}
	}
	mc_note_key(buf, off, len); /* noted last: see get_one */
	mc_count(MC_V_INVALIDATE);
}

#define MC_REALTIME_MAXDELTA 2592000 /* memcached: larger exptimes are unix times */

/*
 * flush_all [delay]: now, everything cached dies (a generation bump). With a delay, what
 * memcached holds at the flush time dies then, including what is stored until then: every
 * entry known before flush_at_ns dies at flush_at_ns (checked on lookup).
 */
static __always_inline void flush_all(__u32 delay_s)
{
	u32 zero = 0;
	struct mc_state *st = mc_state.lookup(&zero);
	struct mc_config *cfg = mc_config();
	__u64 now = bpf_ktime_get_ns();
	if (!st || !cfg || !delay_s) {
		mc_bump_gen(MC_V_FLUSH);
		return;
	}
	__u64 at = now + (__u64)delay_s * 1000000000ULL;
	if (delay_s > MC_REALTIME_MAXDELTA)
		at = (__u64)delay_s * 1000000000ULL - cfg->unix_offset_ns;
	if (at <= now) {
		mc_bump_gen(MC_V_FLUSH);
		return;
	}
	__u64 old = st->flush_at_ns;
	if (old && old <= now) {
		/* A flush time that has passed: make its deaths final before replacing it. */
		mc_bump_gen(MC_V_FLUSH);
		old = 0;
	}
	/* memcached keeps the last delay given; the earlier one only invalidates more. */
	st->flush_at_ns = old && old < at ? old : at;
	mc_count(MC_V_FLUSH);
}

static __always_inline int is_binary_write(__u8 op)
{
	switch (op) {
	case 0x01: case 0x02: case 0x03: case 0x04: case 0x05: case 0x06: /* set..decr */
	case 0x0e: case 0x0f:                                             /* append, prepend */
	case 0x11: case 0x12: case 0x13: case 0x14: case 0x15: case 0x16: /* quiet forms */
	case 0x19: case 0x1a:                                             /* appendq, prependq */
	case 0x1c: case 0x1d: case 0x1e: case 0x23: case 0x24:            /* touch, gat(q), gatk(q) */
		return 1;
	}
	return 0;
}

/* A binary request at buf[0]: n bytes of it in the window. */
static __always_inline int mc_scan_binary(const __u8 *buf, __u32 n, __u64 *adv)
{
	if (n < MC_BIN_HDR)
		return MC_SCAN_CUT;
	__u8 op = buf[1];
	__u32 klen = ((__u32)buf[2] << 8) | buf[3];
	__u32 elen = buf[4];
	__u32 body = ((__u32)buf[8] << 24) | ((__u32)buf[9] << 16) | ((__u32)buf[10] << 8) |
		     buf[11];
	if (op == 0x08 || op == 0x18) { /* flush, flushq (optional 4-byte delay) */
		__u32 delay = 0;
		if (elen == 4 && n >= MC_BIN_HDR + 4)
			delay = ((__u32)buf[24] << 24) | ((__u32)buf[25] << 16) |
				((__u32)buf[26] << 8) | buf[27];
		flush_all(delay);
	} else if (is_binary_write(op)) {
		if (klen == 0 || klen > MC_KEY_LIMIT || elen + klen > body)
			goto skip; /* memcached refuses it: nothing changes */
		if (MC_BIN_HDR + elen + klen > n)
			return MC_SCAN_CUT; /* the key is cut by the window's end */
		invalidate(buf, MC_BIN_HDR + elen, klen);
	}
skip:
	*adv = MC_BIN_HDR + (__u64)body;
	return MC_SCAN_NEXT;
}

enum mc_cmd {
	CMD_OTHER,
	CMD_STORE,  /* key flags exptime bytes [cas] [noreply] + data */
	CMD_KEY,    /* incr, decr, touch, delete: key first */
	CMD_GAT,    /* gat/gats exptime key... */
	CMD_FLUSH,  /* flush_all [delay] [noreply] */
	CMD_MSET,   /* ms key datalen flags* + data */
	CMD_META,   /* md, ma, mg with flags */
};

static __always_inline int classify(const __u8 *buf, __u32 off, __u32 len)
{
	if (len < 2 || len > 9)
		return CMD_OTHER;
	__u64 w = mc_word64(buf, off, len);
	switch (len) {
	case 2:
		if (w == MC_W2('m', 's'))
			return CMD_MSET;
		if (w == MC_W2('m', 'd') || w == MC_W2('m', 'a') || w == MC_W2('m', 'g'))
			return CMD_META;
		break;
	case 3:
		if (w == MC_W3('s', 'e', 't') || w == MC_W3('a', 'd', 'd') || w == MC_W3('c', 'a', 's'))
			return CMD_STORE;
		if (w == MC_W3('g', 'a', 't'))
			return CMD_GAT;
		break;
	case 4:
		if (w == MC_W4('i', 'n', 'c', 'r') || w == MC_W4('d', 'e', 'c', 'r'))
			return CMD_KEY;
		if (w == MC_W4('g', 'a', 't', 's'))
			return CMD_GAT;
		break;
	case 5:
		if (w == MC_W5('t', 'o', 'u', 'c', 'h'))
			return CMD_KEY;
		break;
	case 6:
		if (w == MC_W6('d', 'e', 'l', 'e', 't', 'e'))
			return CMD_KEY;
		if (w == MC_W6('a', 'p', 'p', 'e', 'n', 'd'))
			return CMD_STORE;
		break;
	case 7:
		if (w == MC_W7('r', 'e', 'p', 'l', 'a', 'c', 'e') ||
		    w == MC_W7('p', 'r', 'e', 'p', 'e', 'n', 'd'))
			return CMD_STORE;
		break;
	case 9:
		if (w == MC_W8('f', 'l', 'u', 's', 'h', '_', 'a', 'l') &&
		    MC_AT(buf, off + 8) == 'l')
			return CMD_FLUSH;
		break;
	}
	return CMD_OTHER;
}

/* Meta commands may carry a base64 key (flag "b"): then we cannot hash the key. */
static __always_inline int meta_has_b(struct mc_tokens *t, const __u8 *buf)
{
	for (int i = 2; i < MC_MAX_TOK; i++) {
		MC_OPAQUE(i);
		if (i >= t->n)
			break;
		if (t->len[i] == 1 && MC_AT(buf, t->off[i]) == 'b')
			return 1;
	}
	return 0;
}

/*
 * A meta get whose flags only read (s v k f q t c h l u, O<opaque>, b: a base64 key) changes
 * no item: N (vivify), T (touch), E, R and flags we do not know may.
 */
static __always_inline int meta_get_reads(struct mc_tokens *t, const __u8 *buf)
{
	if (t->overflow)
		return 0;
	for (int i = 2; i < MC_MAX_TOK; i++) {
		MC_OPAQUE(i);
		if (i >= t->n)
			break;
		switch (MC_AT(buf, t->off[i])) {
		case 's': case 'v': case 'k': case 'f': case 'q': case 't': case 'c': case 'h':
		case 'l': case 'u': case 'O': case 'b':
			continue;
		}
		return 0;
	}
	return 1;
}

/* An ASCII command at buf[0]: n bytes of it in the window, rem to the end of what arrived. */
static __always_inline int mc_scan_ascii(const __u8 *buf, struct mc_tokens *t, __u32 n,
					 __u32 rem, __u64 *adv)
{
	t->eol = mc_find_crlf(buf, 0, n);
	int eol = MC_LOAD(t->eol);
	if (eol < 0) {
		if (rem <= n)
			return MC_SCAN_CUT; /* the line goes on past what has arrived */
		/* A line longer than any write we know (e.g. a long multi-get): skip it,
		 * unless it starts like a write. */
		mc_tokenize(buf, 0, n, t);
		if (t->n > 0 && classify(buf, t->off[0], t->len[0]) != CMD_OTHER) {
			mc_fallback_flush(MC_FR_UNSURE);
			return MC_SCAN_UNSURE;
		}
		*adv = n - 1;
		return MC_SCAN_LONG;
	}
	__u64 next = eol + 2;
	mc_tokenize(buf, 0, eol, t);
	if (t->n == 0)
		goto out;
	int cmd = classify(buf, t->off[0], t->len[0]);
	switch (cmd) {
	case CMD_STORE: {
		if (t->n < 5)
			break; /* memcached answers an error; nothing stored */
		invalidate(buf, t->off[1], t->len[1]);
		long long bytes = mc_atou(buf, t->off[4], t->len[4]);
		if (bytes >= 0)
			next += bytes + 2;
		break;
	}
	case CMD_MSET: {
		if (t->n < 3)
			break;
		if (meta_has_b(t, buf))
			mc_fallback_flush(MC_FR_UNSURE); /* a base64 key: its value still follows */
		else
			invalidate(buf, t->off[1], t->len[1]);
		long long bytes = mc_atou(buf, t->off[2], t->len[2]);
		if (bytes >= 0)
			next += bytes + 2;
		break;
	}
	case CMD_KEY:
		if (t->n >= 2)
			invalidate(buf, t->off[1], t->len[1]);
		break;
	case CMD_META:
		if (mc_word64(buf, t->off[0], t->len[0]) == MC_W2('m', 'g') && meta_get_reads(t, buf))
			break; /* a meta get that only reads changes nothing */
		if (t->n >= 2) {
			if (meta_has_b(t, buf))
				mc_fallback_flush(MC_FR_UNSURE);
			else
				invalidate(buf, t->off[1], t->len[1]);
		}
		break;
	case CMD_GAT:
		if (t->overflow) { /* more keys than we tokenize: where the line ends is known */
			mc_fallback_flush(MC_FR_UNSURE);
			break;
		}
		for (int i = 2; i < MC_MAX_TOK; i++) {
			MC_OPAQUE(i);
			if (i >= t->n)
				break;
			invalidate(buf, t->off[i], t->len[i]);
		}
		break;
	case CMD_FLUSH: {
		__u32 delay = 0;
		if (t->n >= 2) {
			long long d = mc_atou(buf, t->off[1], t->len[1]);
			if (d > 0)
				delay = d;
		}
		flush_all(delay);
		break;
	}
	default:
		break;
	}
out:
	*adv = next;
	return MC_SCAN_NEXT;
}

/* The command at the start of the window: binary or ASCII by its first byte. */
static __always_inline int mc_scan_cmd(const __u8 *buf, struct mc_tokens *t, __u32 n, __u32 rem,
				       __u64 *adv)
{
	if (buf[0] == MC_BIN_REQ_MAGIC)
		return mc_scan_binary(buf, n, adv);
	return mc_scan_ascii(buf, t, n, rem, adv);
}

/*
 * Inside a line longer than the window (MC_SCAN_LONG): where it ends. MC_SCAN_NEXT: *adv
 * bytes on; MC_SCAN_LONG: not in this window (*adv bytes behind, as above); MC_SCAN_CUT: not
 * in what has arrived.
 */
static __always_inline int mc_scan_skip(const __u8 *buf, struct mc_tokens *t, __u32 n, __u32 rem,
					__u64 *adv)
{
	t->eol = mc_find_crlf(buf, 0, n);
	int eol = MC_LOAD(t->eol);
	if (eol >= 0) {
		*adv = eol + 2;
		return MC_SCAN_NEXT;
	}
	if (rem <= n)
		return MC_SCAN_CUT;
	*adv = n - 1;
	return MC_SCAN_LONG;
}

#endif /* MCACHE_WRITE_H */
