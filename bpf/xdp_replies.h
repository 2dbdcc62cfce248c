/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The replies xdp_reply writes (multi-get, binary GET, mg) from the items get_key and
 * get_keys left in the scratch, and their hand-over to TC ingress when the frame cannot hold them.
 *
 * Needs from its includer: xdp_scratch.h, xdp_csum.h.
 */
#ifndef MC_XDP_REPLIES_H
#define MC_XDP_REPLIES_H

/* An ASCII get's reply: the frame header, the items get_keys packed, "END\r\n". */
static __always_inline __u32 ascii_reply_len(struct mc_xscratch *s)
{
	return MC_UDP_FRAME_HDR + s->mget_len + 5;
}

/* One return flag of an mg's reply: its bytes after the space. */
static __always_inline __u32 meta_flag_len(struct mc_xscratch *s, struct mc_hit *h, __u8 c)
{
	if (c == 'f')
		return 1 + h->flags_str_len;
	if (c == 'k')
		return 1 + h->key_len;
	if (c == 's')
		return 1 + h->len_str_len;
	return s->meta_o_len; /* 'O' and the opaque, as sent */
}

/* The UDP payload of an mg hit's reply (see meta_reply). */
static __always_inline __u32 meta_reply_len(struct mc_xscratch *s)
{
	struct mc_hit *h = &s->hit;
	__u32 flags_len = 0;
	for (int i = 0; i < MC_META_RET; i++) {
		MC_OPAQUE(i);
		if (i >= s->meta_n)
			break;
		flags_len += 1 + meta_flag_len(s, h, s->meta_flag[i]);
	}
	return MC_UDP_FRAME_HDR + (s->meta_v ? 3 + h->len_str_len + flags_len + 2 + h->val_len + 2
					     : 2 + flags_len + 2);
}

/*
 * An mg hit, as memcached 1.6 answers it, from off (after the frame header): "VA <bytes>
 * <flags>\r\n<value>\r\n" (v asked for) or "HD <flags>\r\n", the return flags in the order
 * asked: f<client flags>, k<key>, s<bytes>, O<opaque>.
 */
static __always_inline int meta_body(void *ctx, int skb, struct mc_xscratch *s, __u32 off)
{
	struct mc_hit *h = &s->hit;
	__u64 ll = h->len_str_len, fl = h->flags_str_len, kl = h->key_len, vl = h->val_len;
	__u64 ol = s->meta_o_len;
	if (!MC_SIZE_OK(ll, 10) || !MC_SIZE_OK(kl, MC_KEY_LIMIT) || vl > MC_VAL_BUF ||
	    fl > 10 || ol > 1 + MC_META_OPAQUE)
		return -1;
	__u64 txt = s->meta_v ? MC_W3('V', 'A', ' ') : MC_W2('H', 'D');
	put(ctx, skb, off, &txt, s->meta_v ? 3 : 2);
	off += s->meta_v ? 3 : 2;
	if (s->meta_v) {
		put(ctx, skb, off, h->len_str, ll);
		off += ll;
	}
	for (int i = 0; i < MC_META_RET; i++) {
		MC_OPAQUE(i);
		if (i >= s->meta_n)
			break;
		__u8 c = s->meta_flag[i];
		__u8 lead[2] = {' ', c};
		if (c == 'O') {
			put(ctx, skb, off, lead, 1);
			off += 1;
			if (MC_SIZE_OK(ol, 1 + MC_META_OPAQUE))
				put(ctx, skb, off, s->buf + (s->meta_o_off & MC_BUF_MASK), ol);
			off += ol;
			continue;
		}
		put(ctx, skb, off, lead, 2);
		off += 2;
		if (c == 'f') {
			if (MC_SIZE_OK(fl, 10))
				put(ctx, skb, off, h->flags_str, fl);
			off += fl;
		} else if (c == 'k') {
			put(ctx, skb, off, s->buf + (h->key_off & MC_BUF_MASK), kl);
			off += kl;
		} else {
			put(ctx, skb, off, h->len_str, ll);
			off += ll;
		}
	}
	__u64 crlf = MC_W2('\r', '\n');
	put(ctx, skb, off, &crlf, 2);
	off += 2;
	if (s->meta_v) {
		if (MC_SIZE_OK(vl, MC_VAL_BUF)) {
			put(ctx, skb, off, h->val, vl);
			off += vl;
		}
		put(ctx, skb, off, &crlf, 2);
	}
	return 0;
}

/*
 * The reply's UDP payload (body bytes: s->reply_body) at off, through put(): memcached's
 * frame header, then the items, the binary response or the mg reply. xdp_reply writes it into
 * XDP's frame; tc_ingress into the skb when the frame could not grow (from_scratch). 0, or
 * -1 when the lengths in scratch are not what get_key left.
 */
static __always_inline int reply_payload(void *ctx, int skb, struct mc_xscratch *s, __u32 off)
{
	__u64 frame = frame_hdr(s->request_id);
	put(ctx, skb, off, &frame, sizeof(frame));
	off += sizeof(frame);

	if (s->meta)
		return meta_body(ctx, skb, s, off);
	if (s->binary) {
		struct mc_hit *h = &s->hit;
		int with_key = s->opcode == 0x0c || s->opcode == 0x0d;
		__u64 kl = with_key ? h->key_len : 0;
		__u32 total_body = 4 + kl + h->val_len;
		__u8 bh[MC_BIN_HDR + 4] = {};
		bh[0] = MC_BIN_RES_MAGIC;
		bh[1] = s->opcode;
		bh[2] = kl >> 8;
		bh[3] = kl & 0xff;
		bh[4] = 4;
		bh[8] = total_body >> 24;
		bh[9] = total_body >> 16;
		bh[10] = total_body >> 8;
		bh[11] = total_body;
		bh[12] = s->opaque >> 24;
		bh[13] = s->opaque >> 16;
		bh[14] = s->opaque >> 8;
		bh[15] = s->opaque;
		for (int i = 0; i < 8; i++)
			bh[16 + i] = h->cas >> (56 - 8 * i);
		bh[24] = h->flags >> 24;
		bh[25] = h->flags >> 16;
		bh[26] = h->flags >> 8;
		bh[27] = h->flags;
		put(ctx, skb, off, bh, sizeof(bh));
		off += sizeof(bh);
		if (MC_SIZE_OK(kl, MC_KEY_LIMIT)) {
			put(ctx, skb, off, s->buf + (h->key_off & MC_BUF_MASK), kl);
			off += kl;
		}
		__u64 vl = h->val_len;
		if (MC_SIZE_OK(vl, MC_VAL_BUF))
			put(ctx, skb, off, h->val, vl);
		return 0;
	}

	__u64 txt_end = MC_W5('E', 'N', 'D', '\r', '\n');
	__u64 n = s->mget_len;
	if (!MC_SIZE_OK(n, MC_MGET_ROOM))
		return -1;
	put(ctx, skb, off, s->mget, n);
	off += n;
	put(ctx, skb, off, &txt_end, 5);
	return 0;
}


/*
 * A reply the frame cannot hold, handed to tc_ingress whole: get_key left every item in the
 * scratch (values copied under their slots' locks), and tc_ingress writes the reply from it
 * into the skb. The scratch is per CPU and the next frame's XDP run overwrites it, so the
 * hand-over carries a cookie that xdp_main clears: tc_ingress answers only when it runs on
 * the same CPU before any other XDP run (generic XDP: at once, in the same receive; else
 * memcached answers).
 */
static __always_inline void to_tc_scratch(struct xdp_md *ctx, struct mc_xscratch *s)
{
	__u32 cookie = ++s->handover_seq | 1; /* never 0: 0 is "none" */
	to_tc(ctx, s, MC_META_FROM_SCRATCH, cookie);
	s->handover = cookie;
}

static __always_inline int reply(struct xdp_md *ctx, struct mc_xscratch *s)
{
	__u32 body;
	if (s->meta) {
		body = meta_reply_len(s);
	} else if (s->binary) {
		struct mc_hit *h = &s->hit;
		int with_key = s->opcode == 0x0c || s->opcode == 0x0d;
		body = MC_UDP_FRAME_HDR + MC_BIN_HDR + 4 + (with_key ? h->key_len : 0) + h->val_len;
	} else {
		body = ascii_reply_len(s);
	}
	s->reply_body = body;
	__u32 hdrs = reply_hdrs(s);
	/* Too big for one datagram: memcached answers (in several). Every key was a hit, so
	 * there is nothing to fill from its reply (no remember_get): a refill would copy the
	 * same value into the same slot on every such GET. */
	if (hdrs - sizeof(struct ethhdr) + body > 1500) {
		if (s->nkeys == 1) /* a multi-get may be too big only as a whole */
			mark_unservable(s->hit.slot_idx, s->hit.key_len, s->hit.val_len);
		mc_count(MC_V_TOO_BIG);
		return XDP_PASS;
	}
	capture_hit_request(ctx, s, MC_P_XDP_REPLY, 0);
	/* Size the frame from its real length: bytes after the datagram (Ethernet padding of a
	 * short request, or a UDP length shorter than the IP one) must not trail the reply. */
	int have = (int)((long)ctx->data_end - (long)ctx->data);
	if (!resize(ctx, (int)(hdrs + body) - have)) {
		to_tc_scratch(ctx, s); /* no room to grow the frame here; the skb has */
		return XDP_PASS;
	}
	if (store_l2l4(ctx, 0, s, body) || reply_payload(ctx, 0, s, hdrs))
		return XDP_DROP; /* the packet is already changed: never send half a reply */
	mc_count(MC_V_HIT);
	return XDP_TX;
}

#endif /* MC_XDP_REPLIES_H */
