/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The GET lines xdp_main leaves to xdp_get_parse: an mg's flags (answered from the cache
 * only when each is one the cache holds), and an ASCII get of up to MC_MAX_MULTIGET keys
 * split a word at a time over MC_MGET_LINE bytes; the keys' places go to the scratch for
 * get_keys (xdp_get_keys.h).
 *
 * Needs from its includer: xdp_scratch.h, xdp_policy.h, xdp_lookup.h, and the set's prog
 * array mc_xdp_jmp with TAIL_GET_KEY.
 */
#ifndef MC_XDP_GET_PARSE_H
#define MC_XDP_GET_PARSE_H

/*
 * mg <key> <flags>*: served from the cache when every flag is one the cache can answer for
 * (v, f, k, s, O<opaque>, q), each once; such an mg changes nothing. Anything else (t and c
 * need memcached's item, N and T change it, b hides the key, a repeated flag is memcached's
 * error) goes to the scanner, which treats it as a write.
 */
static __always_inline int meta_parse(struct xdp_md *ctx, struct mc_xscratch *s,
				      struct mc_config *cfg)
{
	struct mc_tokens *t = &s->tok;
	__u32 n = MC_LOAD(t->n);
	if (n < 2 || n > MC_MAX_TOK || t->overflow)
		return start_scan(ctx, s, MC_UDP_FRAME_HDR);
	__u32 seen = 0;
	s->meta_v = 0;
	s->meta_f = 0;
	s->meta_n = 0;
	s->meta_o_len = 0;
	for (int i = 2; i < MC_MAX_TOK; i++) {
		MC_OPAQUE(i);
		if (i >= n)
			break;
		__u32 off = MC_LOAD(t->off[i]);
		__u32 l = MC_LOAD(t->len[i]);
		__u8 c = MC_AT(s->buf, off);
		if (c == 'O') {
			if (l > 1 + MC_META_OPAQUE)
				return start_scan(ctx, s, MC_UDP_FRAME_HDR);
			s->meta_o_off = off;
			s->meta_o_len = l;
		} else if (l != 1 || (c != 'v' && c != 'q' && c != 'f' && c != 'k' && c != 's')) {
			return start_scan(ctx, s, MC_UDP_FRAME_HDR);
		}
		__u32 bit = 1U << (c & 31);
		if (seen & bit)
			return start_scan(ctx, s, MC_UDP_FRAME_HDR);
		seen |= bit;
		if (c == 'v') {
			s->meta_v = 1;
		} else if (c != 'q') {
			if (c == 'f')
				s->meta_f = 1;
			s->meta_flag[s->meta_n & (MC_META_RET - 1)] = c;
			s->meta_n++;
		}
	}
	__u32 off = MC_LOAD(t->off[1]);
	__u32 kl = MC_LOAD(t->len[1]);
	if (!key_cacheable(cfg, s->buf, off, kl)) {
		mc_pkt_key(&s->pkt, s->buf, off, kl);
		mc_count(kl > MC_MAX_KEY ? MC_V_TOO_BIG : MC_V_MISS);
		return XDP_PASS;
	}
	s->hit.key_off = off;
	s->hit.key_len = kl;
	s->nkeys = 1;
	s->done = 0;
	s->binary = 0;
	mc_xdp_jmp.call(ctx, TAIL_GET_KEY);
	return XDP_PASS;
}

/* mg: the line (within MC_WIN) tokenized, then meta_parse. */
static __always_inline int meta_line(struct xdp_md *ctx, struct mc_xscratch *s,
				     struct mc_config *cfg)
{
	__u32 len = s->payload_len;
	struct mc_tokens *t = &s->tok;
	t->eol = mc_find_crlf(s->buf, MC_UDP_FRAME_HDR, len);
	/* Reload what the loop compared against: see MC_LOAD. */
	len = MC_LOAD(s->payload_len);
	int eol = MC_LOAD(t->eol);
	if (eol < 0) {
		if (len > MC_UDP_FRAME_HDR + MC_WIN)
			return start_scan(ctx, s, MC_UDP_FRAME_HDR); /* a long line: skip it */
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	if ((__u32)eol + 2 != len || eol - MC_UDP_FRAME_HDR > MC_WIN)
		return start_scan(ctx, s, MC_UDP_FRAME_HDR); /* more commands follow, or long */
	mc_tokenize(s->buf, MC_UDP_FRAME_HDR, eol, t);
	return meta_parse(ctx, s, cfg);
}

/*
 * The first LF of the datagram's line (from after the frame header), a word at a time over
 * at most MC_MGET_LINE bytes; -1 when there is none there. memcached ends a line at its LF
 * (a CR inside a key is the key's).
 */
static __always_inline int mget_lf(const __u8 *buf, __u32 len)
{
	int at = -1;
	for (__u32 i = 0; i < MC_MGET_LINE / 8; i++) {
		MC_OPAQUE(i);
		__u32 p = MC_UDP_FRAME_HDR + i * 8;
		if (p >= len)
			break;
		__u64 m = mc_has_byte(mc_word(buf, p), '\n');
		if (m) {
			/* the lowest flag is the first match (see mc_find_space) */
			__u32 b = (((m & -m) >> 7) * 0x0001020304050607ULL) >> 56;
			if (p + b < len)
				at = p + b;
			break;
		}
	}
	return at;
}

/*
 * ASCII get: buf holds the frame header (8) and "get k1 k2 ...\r\n". Only a datagram that is
 * exactly one get line is answered. The line holds no LF before its end (checked a word at
 * a time), so its keys are what lies between spaces (memcached's tokenizer skips
 * empty ones); each key's place goes to s->keys, a key a step, the space after it found a
 * word at a time. Up to MC_MAX_MULTIGET keys: more, and memcached answers (and fills).
 */
static __always_inline int get_parse(struct xdp_md *ctx, struct mc_xscratch *s,
				     struct mc_config *cfg)
{
	__u32 len = MC_LOAD(s->payload_len);
	if (len > MC_BUF)
		return XDP_PASS;
	struct mc_tokens *t = &s->tok;
	t->eol = mget_lf(s->buf, len);
	int lf = MC_LOAD(t->eol);
	len = MC_LOAD(s->payload_len);
	if (lf < 0) {
		if (len > MC_UDP_FRAME_HDR + MC_MGET_LINE)
			return start_scan(ctx, s, MC_UDP_FRAME_HDR); /* a long line: skip it */
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	if ((__u32)lf + 1 != len)
		return start_scan(ctx, s, MC_UDP_FRAME_HDR); /* more commands follow */
	if (MC_AT(s->buf, lf - 1) != '\r') {
		mc_count(MC_V_MALFORMED); /* answered only as "\r\n" ends it */
		return XDP_PASS;
	}
	t->eol = lf - 1;
	/* Splits [after "get ", eol) into keys; the position and count live in map memory
	 * (t->start, t->n) so that the steps' states do not multiply. */
	t->start = MC_UDP_FRAME_HDR + 4;
	t->n = 0;
	t->overflow = 0;
	for (__u32 i = 0; i < 2 * MC_MAX_MULTIGET + 2; i++) {
		MC_OPAQUE(i);
		__u32 pos = MC_LOAD(t->start);
		__u32 end = MC_LOAD(t->eol);
		if (pos >= end || end > MC_BUF)
			break;
		if (MC_AT(s->buf, pos) == ' ') {
			t->start = pos + 1; /* an empty token */
			continue;
		}
		__u32 rest = end - pos;
		int sp = mc_find_space(s->buf, pos, rest < MC_KEY_LIMIT + 1 ? rest : MC_KEY_LIMIT + 1);
		pos = MC_LOAD(t->start);
		end = MC_LOAD(t->eol);
		__u32 kend = sp >= 0 ? (__u32)sp : end;
		if (kend <= pos || kend - pos > MC_KEY_LIMIT) {
			t->overflow = 2; /* a key longer than any memcached keeps */
			break;
		}
		__u32 n = MC_LOAD(t->n);
		if (n >= MC_MAX_MULTIGET) {
			t->overflow = 1;
			break;
		}
		s->keys[n & (MC_MAX_MULTIGET - 1)].off = pos;
		s->keys[n & (MC_MAX_MULTIGET - 1)].len = kend - pos;
		t->n = n + 1;
		t->start = kend;
	}
	__u32 over = MC_LOAD(t->overflow);
	if (over == 2) {
		mc_count(MC_V_TOO_BIG);
		return XDP_PASS;
	}
	if (over || MC_LOAD(t->start) < MC_LOAD(t->eol)) {
		remember_get(s, 0, 0); /* more keys than the cache answers: memcached fills */
		mc_count(MC_V_MISS);
		return XDP_PASS;
	}
	__u32 n = MC_LOAD(t->n);
	if (n == 0 || n > MC_MAX_MULTIGET) {
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	s->nkeys = n;
	s->done = 0;
	s->binary = 0;
	s->mget_len = 0;
	mc_xdp_jmp.call(ctx, TAIL_GET_KEY);
	return XDP_PASS;
}

#endif /* MC_XDP_GET_PARSE_H */
