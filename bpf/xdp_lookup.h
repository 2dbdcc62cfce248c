/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The cache lookup: the common GET ("get <key>\r\n", one key) answered without tail calls,
 * and the record of a miss that the fill guard checks memcached's reply against.
 *
 * Needs from its includer: xdp_scratch.h, xdp_policy.h, xdp_csum.h.
 */
#ifndef MC_XDP_LOOKUP_H
#define MC_XDP_LOOKUP_H

/*
 * The return flags an mg asked for, in its order, one per byte from the lowest (0: no more):
 * what its reply must carry, in that order (memcached prints them as asked).
 */
static __always_inline __u32 meta_asked(struct mc_xscratch *s)
{
	__u32 asked = 0;
	for (__u32 i = 0; i < MC_META_RET; i++) {
		if (i >= s->meta_n)
			break;
		asked |= (__u32)s->meta_flag[i] << (8 * i);
	}
	return asked;
}

/*
 * A miss: remember when the GET came for the fill guard, and for a binary GET or an mg its
 * key (their replies carry it only for GETK and mg's k). An mg is marked as one, with the
 * return flags it asked for: its reply fills from "VA ..." only.
 */
static __always_inline void remember_get(struct mc_xscratch *s, __u32 key_off, __u32 key_len)
{
	struct mc_pending_key pk = {
		.client_port = s->client_port,
		.request_id = s->request_id,
	};
	__builtin_memcpy(pk.client_addr, s->ck.saddr, 16);
	struct mc_pending *p = &s->pend;
	p->get_ns = bpf_ktime_get_ns();
	p->gen = mc_gen();
	/* The same (client, port, request id) still pending: a retry, or an id reused
	 * while a late reply is on its way. Either reply may come back, so keep the
	 * oldest GET's time and generation: the guard can then only refuse more. */
	struct mc_pending *old = mc_pending.lookup(&pk);
	if (old) {
		if (old->get_ns < p->get_ns)
			p->get_ns = old->get_ns;
		if (old->gen < p->gen)
			p->gen = old->gen;
	}
	p->binary = s->binary;
	p->meta = s->meta;
	p->opaque = s->meta ? meta_asked(s) : s->opaque;
	p->key_len = 0;
	if (key_len && key_len <= MC_KEY_LIMIT) {
		p->key_len = key_len;
		for (__u32 j = 0; j < MC_KEY_LIMIT; j++) {
			MC_OPAQUE(j);
			if (j >= key_len)
				break;
			p->key[j & 255] = MC_AT(s->buf, key_off + j);
		}
	}
	mc_pending.update(&pk, p);
}

/* The way of the bucket that holds the key: read without the lock, so only a hint, checked
 * again under the lock (no way found: the bucket's first, which then misses). */
/*
 * The reply text after the key, from a slot (its lock held): " <flags> <bytes>\r\n<value>
 * \r\nEND\r\n" into out, a word at a time. Returns its length, 0 when the slot's lengths are
 * not what a fill writes.
 */
static __always_inline __u32 reply_tail(struct mc_slot *slot, __u8 *out)
{
	__u32 fl = slot->flags_str_len, ll = slot->len_str_len, vl = slot->val_len;
	/* An entry an mg filled without f has no client flags to print: a miss, whose reply
	 * then fills the whole entry. */
	if (!slot->has_flags || fl < 1 || fl > 10 || ll < 1 || ll > 10 || vl > MC_VAL_BUF)
		return 0;
	out[0] = ' ';
	*(__u64 *)&out[1] = ((__u64 *)slot->flags_str)[0];
	*(__u64 *)&out[9] = ((__u64 *)slot->flags_str)[1];
	/* Offsets masked after an opaque step: clang may test the lengths on copies, and the
	 * verifier must see every offset inside out. */
	__u32 p = 1 + fl;
	MC_OPAQUE(p);
	p &= 15;
	out[p] = ' ';
	*(__u64 *)&out[p + 1] = ((__u64 *)slot->len_str)[0];
	*(__u64 *)&out[p + 9] = ((__u64 *)slot->len_str)[1];
	p += 1 + ll;
	MC_OPAQUE(p);
	p &= 31;
	*(__u16 *)&out[p] = MC_W2('\r', '\n');
	p += 2;
	MC_OPAQUE(p);
	p &= 31;
	MC_OPAQUE(vl);
	if (vl > MC_VAL_BUF)
		return 0;
	for (__u32 w = 0; w < MC_VAL_BUF / 8; w++) {
		MC_OPAQUE(w);
		if (w * 8 >= vl)
			break;
		*(__u64 *)&out[p + w * 8] = ((__u64 *)slot->val)[w];
	}
	vl = MC_LOAD(slot->val_len); /* the loop pinned its copy: see get_one */
	if (vl > MC_VAL_BUF)
		return 0;
	*(__u64 *)&out[p + vl] = MC_W7('\r', '\n', 'E', 'N', 'D', '\r', '\n');
	return p + vl + 7;
}

/* memcached's UDP frame header of a reply (the request id, datagram 0 of 1) as its 8 bytes
 * lie in memory: one store. */
static __always_inline __u64 frame_hdr(__u16 request_id)
{
	return (__u64)(request_id >> 8) | (__u64)(request_id & 0xff) << 8 | 1ULL << 40;
}

/*
 * The common GET's reply up to its key: Ethernet, IP, UDP, memcached's frame header (request
 * id, datagram 0 of 1) and "VALUE ", in one store. The bytes stored, 0 on failure.
 */
static __always_inline __u32 store_get_hdr(struct xdp_md *ctx, struct mc_xscratch *s, __u32 body)
{
	build_l2l4(s, body);
	__u32 at = reply_hdrs(s);
	__u8 *frame = &s->hdr[at];
	*(__u64 *)frame = frame_hdr(s->request_id);
	__u64 txt_value = MC_W6('V', 'A', 'L', 'U', 'E', ' '); /* no string literals: .rodata */
	__builtin_memcpy(&frame[MC_UDP_FRAME_HDR], &txt_value, 6);
	at += MC_UDP_FRAME_HDR + 6;
	return bpf_xdp_store_bytes(ctx, 0, s->hdr, at) ? 0 : at;
}

/*
 * The common GET missed: remember it in a way of its bucket, which its fill will then use,
 * instead of in mc_pending. The way: one that holds this key or waits for it already, else
 * the one the fill would pick (no live entry, else filled longest ago) among those with no
 * other GET waiting, else the bucket's first (that other GET's reply then fills nothing).
 * The same client asking again with the same request id (a retry, or the id reused while a
 * late reply is on its way) keeps the oldest arrival and generation, as remember_get does:
 * the guard can then only refuse more.
 */
static __always_inline void remember_in_way(struct mc_xscratch *s, __u32 hash, __u64 now,
					    __u64 gen)
{
	__u32 base = mc_bucket(hash);
	struct mc_bucket_meta *m = mc_meta(base);
	if (!m)
		return;
	__u32 now_ms = MC_MS(now);
	__u32 idx = base;
	__u32 oldest = ~0U;
	for (__u32 w = 0; w < MC_WAYS; w++) {
		if (m->hash[w] == hash || m->miss_hash[w] == hash) {
			idx = base + w;
			break;
		}
		if (m->miss_ms[w] && now_ms - m->miss_ms[w] < MC_MISS_WAIT_MS)
			continue; /* another GET waits here */
		if (m->fill_ms[w] < oldest) {
			oldest = m->fill_ms[w];
			idx = base + w;
		}
	}
	struct mc_slot *slot = mc_cache.lookup(&idx);
	if (!slot)
		return;
	__u32 a0 = s->ck.saddr[0], a1 = s->ck.saddr[1], a2 = s->ck.saddr[2], a3 = s->ck.saddr[3];
	__u16 port = s->client_port, rid = s->request_id;
	bpf_spin_lock(&slot->lock);
	if (slot->miss_get_ns && slot->miss_hash == hash && slot->miss_addr[0] == a0 &&
	    slot->miss_addr[1] == a1 && slot->miss_addr[2] == a2 && slot->miss_addr[3] == a3 &&
	    slot->miss_port == port && slot->miss_rid == rid) {
		if (slot->miss_gen > gen)
			slot->miss_gen = gen;
	} else {
		slot->miss_hash = hash;
		slot->miss_addr[0] = a0;
		slot->miss_addr[1] = a1;
		slot->miss_addr[2] = a2;
		slot->miss_addr[3] = a3;
		slot->miss_port = port;
		slot->miss_rid = rid;
		slot->miss_get_ns = now;
		slot->miss_gen = gen;
	}
	bpf_spin_unlock(&slot->lock);
	m->miss_hash[idx & (MC_WAYS - 1)] = hash;
	m->miss_ms[idx & (MC_WAYS - 1)] = now_ms;
}

/*
 * "get <key>\r\n" and nothing else in the datagram: the key's place and length follow from
 * the datagram's length, so there is nothing to tokenize. Hashed, compared and copied a word
 * at a time; the reply is three stores: headers, key, and the text the slot yields. Anything
 * else (several keys, other spacing, a key the config does not cache) is MC_SLOW.
 */
static __always_inline int get_one(struct xdp_md *ctx, struct mc_xscratch *s,
				   struct mc_config *cfg, __u32 len)
{
	const __u32 ko = MC_UDP_FRAME_HDR + 4; /* after "get " */
	if (len < ko + 1 + 2 || len > ko + MC_MAX_KEY + 2)
		return MC_SLOW;
	if (s->buf[(len - 2) & MC_BUF_MASK] != '\r' || s->buf[(len - 1) & MC_BUF_MASK] != '\n')
		return MC_SLOW;
	/* The key length is parked in map memory and re-read for every use: a loop that stops
	 * at it pins the register it compared to one value per trip count, and the verifier
	 * would follow everything after it once per key length. */
	s->one_kl = len - ko - 2;
	if (!mc_key_plain(s->buf, ko, MC_LOAD(s->one_kl)) ||
	    !key_cacheable(cfg, s->buf, ko, MC_LOAD(s->one_kl)))
		return MC_SLOW;
	__u32 hash = mc_hash(s->buf, ko, MC_LOAD(s->one_kl));
	__u32 kl = MC_LOAD(s->one_kl);
	if (kl == 0 || kl > MC_MAX_KEY)
		return XDP_PASS;
	__u32 idx;
	int way;
	struct mc_judge j;
	struct mc_slot *slot = mc_lookup_slot(hash, &idx, &way, &j, cfg->ttl_ns);
	if (!slot)
		return XDP_PASS;
	int expired = 0, unservable = 0;
	s->one_tail = 0;
	__u16 vl = 0;

	if (way >= 0) { /* else a miss, without touching a slot */
		bpf_spin_lock(&slot->lock);
		if (slot->valid && slot->gen == j.gen && slot->hash == hash && slot->key_len == kl &&
		    mc_key_equal(slot->key, s->buf, ko, MC_LOAD(s->one_kl))) {
			if (mc_entry_stale(slot, &j)) {
				expired = 1;
				slot->valid = 0;
			} else if (slot->unservable && slot->has_flags) {
				unservable = 1; /* without flags: reply_tail refuses, a miss */
			} else {
				s->one_tail = reply_tail(slot, s->out);
				vl = slot->val_len;
			}
		}
		bpf_spin_unlock(&slot->lock);
	}
	if (expired)
		mc_level_add(j.gen, -1);
	/* Noted this late on purpose: a branch early in a path doubles what the verifier walks. */
	mc_pkt_key(&s->pkt, s->buf, ko, MC_LOAD(s->one_kl));
	if (unservable) { /* its reply did not fit the frame last time: tc_ingress answers */
		to_tc(ctx, s, idx, 0);
		return XDP_PASS;
	}
	__u32 tail = MC_LOAD(s->one_tail);
	kl = MC_LOAD(s->one_kl);
	if (kl == 0 || kl > MC_MAX_KEY || tail > sizeof(s->out))
		return XDP_PASS;
	if (!tail) {
		if (expired)
			mc_count(MC_V_EXPIRED);
		mc_count(MC_V_MISS);
		remember_in_way(s, hash, j.now, j.gen);
		return XDP_PASS;
	}

	__u32 body = MC_UDP_FRAME_HDR + 6 + kl + tail;
	__u32 hdrs = reply_hdrs(s);
	if (hdrs - sizeof(struct ethhdr) + body > 1500) {
		mark_unservable(idx, kl, vl);
		mc_count(MC_V_TOO_BIG);
		return XDP_PASS;
	}
	capture_hit_request(ctx, s, MC_P_XDP_MAIN, hash == cfg->probe_hash);
	int have = (int)((long)ctx->data_end - (long)ctx->data);
	if (!resize(ctx, (int)(hdrs + body) - have)) {
		mark_unservable(idx, kl, vl);
		to_tc(ctx, s, idx, 0); /* no room to grow the frame here; the skb has */
		return XDP_PASS;
	}
	__u64 k = kl, t = tail;
	if (!MC_SIZE_OK(k, MC_MAX_KEY) || !MC_SIZE_OK(t, sizeof(s->out)))
		return XDP_DROP; /* the packet is already changed: never send half a reply */
	__u32 at = store_get_hdr(ctx, s, body);
	if (!at || bpf_xdp_store_bytes(ctx, at, s->buf + ko, k) ||
	    bpf_xdp_store_bytes(ctx, at + k, s->out, t))
		return XDP_DROP;
	s->reply_body = body; /* an IPv6 reply's checksum: see answered() */
	if (hash == cfg->probe_hash)
		mc_pkt_count(&s->pkt, MC_V_PROBE_HIT);
	mc_pkt_count(&s->pkt, MC_V_HIT); /* s at hand: no second scratch lookup on the hit path */
	return XDP_TX;
}

#endif /* MC_XDP_LOOKUP_H */
