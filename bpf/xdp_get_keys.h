/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The lookups of a GET's keys: a binary GET's or an mg's one key into s->hit, and an ASCII
 * get's keys MC_MGET_PER_CALL per xdp_get_key run, each hit's item packed into the reply
 * buffer under its slot's lock; a miss anywhere passes the whole request.
 *
 * Needs from its includer: xdp_scratch.h, xdp_policy.h, xdp_lookup.h, and the set's prog
 * array mc_xdp_jmp with TAIL_GET_KEY and TAIL_REPLY.
 */
#ifndef MC_XDP_GET_KEYS_H
#define MC_XDP_GET_KEYS_H

/*
 * A binary GET's or an mg's one key: its item copied into s->hit (the reply's form decides
 * what it shows of it).
 */
static __always_inline int get_key(struct xdp_md *ctx, struct mc_xscratch *s,
				   struct mc_config *cfg)
{
	if (s->done != 0 || s->nkeys != 1)
		return XDP_PASS;
	struct mc_hit *h = &s->hit;
	__u32 ko = h->key_off & MC_BUF_MASK;
	__u32 kl = h->key_len;
	if (kl == 0 || kl > MC_MAX_KEY)
		return XDP_PASS;
	s->pend.opaque = mc_hash(s->buf, ko, kl); /* parked in map memory: see MC_LOAD */
	__u32 hash = MC_LOAD(s->pend.opaque);
	ko = MC_LOAD(h->key_off) & MC_BUF_MASK;
	kl = MC_LOAD(h->key_len);
	if (kl == 0 || kl > MC_MAX_KEY)
		return XDP_PASS;
	__u32 idx;
	int way;
	struct mc_judge j;
	struct mc_slot *slot = mc_lookup_slot(hash, &idx, &way, &j, cfg->ttl_ns);
	if (!slot)
		return XDP_PASS;
	int ok = 0, expired = 0;

	/* What the entry must know: memcached's CAS for a binary reply, the client flags for
	 * any reply but an mg's without f (an mg fill without f knows no flags). */
	int need_cas = s->binary;
	int need_flags = !s->meta || s->meta_f;
	bpf_spin_lock(&slot->lock);
	if (way >= 0 && slot->valid && slot->gen == j.gen && slot->hash == hash &&
	    slot->key_len == kl && (!need_cas || slot->has_cas) && (!need_flags || slot->has_flags)) {
		ok = mc_key_equal(slot->key, s->buf, ko, MC_LOAD(h->key_len));
		if (ok && mc_entry_stale(slot, &j)) {
			ok = 0;
			expired = 1;
			slot->valid = 0;
		}
	}
	if (ok) {
		__u32 vl = slot->val_len;
		for (__u32 w = 0; w < MC_VAL_BUF / 8; w++) {
			MC_OPAQUE(w);
			if (w * 8 >= vl || w >= MC_VAL_BUF / 8)
				break;
			((__u64 *)h->val)[w] = ((__u64 *)slot->val)[w];
		}
		h->val_len = vl;
		h->slot_idx = idx;
		h->flags = slot->flags;
		h->cas = slot->cas;
		h->flags_str_len = slot->flags_str_len;
		h->len_str_len = slot->len_str_len;
		((__u64 *)h->flags_str)[0] = ((__u64 *)slot->flags_str)[0];
		((__u64 *)h->flags_str)[1] = ((__u64 *)slot->flags_str)[1];
		((__u64 *)h->len_str)[0] = ((__u64 *)slot->len_str)[0];
	}
	bpf_spin_unlock(&slot->lock);
	if (expired)
		mc_level_add(j.gen, -1);
	mc_pkt_key(&s->pkt, s->buf, ko, MC_LOAD(h->key_len)); /* late: see get_one */

	if (!ok) {
		if (expired)
			mc_count(MC_V_EXPIRED);
		mc_count(MC_V_MISS);
		/* An mg's reply fills only with its value: without v it is "HD", nothing to fill
		 * from. Binary GET and mg replies may carry no key: it waits with the miss. */
		if (!s->meta || s->meta_v)
			remember_get(s, ko, kl);
		return XDP_PASS;
	}
	if (hash == cfg->probe_hash)
		mc_count(MC_V_PROBE_HIT);
	s->done = 1;
	mc_xdp_jmp.call(ctx, TAIL_REPLY);
	return XDP_PASS;
}

/* What mget_key found (MC_MG_*). */
#define MC_MG_HIT 0
#define MC_MG_MISS 1 /* counted, remembered: memcached's reply fills */
#define MC_MG_PASS 2 /* counted: the request passes as it came */

/*
 * Key i of an ASCII get: looked up, and on a hit its item appended to s->mget, "VALUE <key>
 * " before the slot's lock is taken, then under it the slot's flags, length and value, so
 * that the item is one entry's, whole. The position is re-read from map memory at each use
 * (MC_LOAD) and every store is at a masked offset: the verifier follows one state per key.
 */
static __always_inline int mget_key(struct mc_xscratch *s, struct mc_config *cfg, __u32 i)
{
	struct mc_keyref *k = &s->keys[i & (MC_MAX_MULTIGET - 1)];
	__u32 ko = MC_LOAD(k->off) & MC_BUF_MASK;
	__u32 kl = MC_LOAD(k->len);
	if (!key_cacheable(cfg, s->buf, ko, kl)) {
		mc_pkt_key(&s->pkt, s->buf, ko, MC_LOAD(k->len));
		mc_count(MC_LOAD(k->len) > MC_MAX_KEY ? MC_V_TOO_BIG : MC_V_MISS);
		return MC_MG_PASS;
	}
	ko = MC_LOAD(k->off) & MC_BUF_MASK;
	s->pend.opaque = mc_hash(s->buf, ko, MC_LOAD(k->len)); /* parked: see MC_LOAD */
	__u32 hash = MC_LOAD(s->pend.opaque);
	ko = MC_LOAD(k->off) & MC_BUF_MASK;
	kl = MC_LOAD(k->len);
	if (kl == 0 || kl > MC_MAX_KEY)
		return MC_MG_PASS;
	__u32 pos = MC_LOAD(s->mget_len);
	if (pos > MC_MGET_ROOM)
		return MC_MG_PASS;
	/* "VALUE <key> ": the key a word at a time (bytes past it are written over next). */
	__u8 *r = s->mget;
	*(__u64 *)&r[mc_mask(pos)] = MC_W6('V', 'A', 'L', 'U', 'E', ' ');
	for (__u32 j = 0; j < MC_KEY_WORDS; j++) {
		MC_OPAQUE(j);
		if (j * 8 >= MC_LOAD(k->len))
			break;
		*(__u64 *)&r[mc_mask(pos + 6 + j * 8)] = mc_word(s->buf, ko + j * 8);
	}
	kl = MC_LOAD(k->len);
	pos = MC_LOAD(s->mget_len);
	r[mc_mask(pos + 6 + kl)] = ' ';
	s->tok.end = pos + 7 + kl; /* where the slot's part goes, parked in map memory */

	__u32 idx;
	int way;
	struct mc_judge j;
	struct mc_slot *slot = mc_lookup_slot(hash, &idx, &way, &j, cfg->ttl_ns);
	if (!slot)
		return MC_MG_PASS;
	int ok = 0, expired = 0;
	ko = MC_LOAD(k->off) & MC_BUF_MASK;
	kl = MC_LOAD(k->len);
	if (kl == 0 || kl > MC_MAX_KEY)
		return MC_MG_PASS;
	bpf_spin_lock(&slot->lock);
	if (way >= 0 && slot->valid && slot->gen == j.gen && slot->hash == hash &&
	    slot->key_len == kl && slot->has_flags) {
		ok = mc_key_equal(slot->key, s->buf, ko, MC_LOAD(k->len));
		if (ok && mc_entry_stale(slot, &j)) {
			ok = 0;
			expired = 1;
			slot->valid = 0;
		}
	}
	if (ok) {
		/* "<flags> <bytes>\r\n<data>\r\n" from the slot: its strings are zero-padded
		 * words, written whole and then written over. */
		__u32 fl = slot->flags_str_len, ll = slot->len_str_len, vl = slot->val_len;
		if (fl < 1 || fl > 10 || ll < 1 || ll > 10 || vl > MC_VAL_BUF) {
			ok = 0;
		} else {
			__u32 p = MC_LOAD(s->tok.end);
			*(__u64 *)&r[mc_mask(p)] = ((__u64 *)slot->flags_str)[0];
			*(__u64 *)&r[mc_mask(p + 8)] = ((__u64 *)slot->flags_str)[1];
			p += fl;
			r[mc_mask(p)] = ' ';
			*(__u64 *)&r[mc_mask(p + 1)] = ((__u64 *)slot->len_str)[0];
			*(__u64 *)&r[mc_mask(p + 9)] = ((__u64 *)slot->len_str)[1];
			p += 1 + ll;
			*(__u16 *)&r[mc_mask(p)] = MC_W2('\r', '\n');
			p += 2;
			s->tok.start = p; /* the data's place, parked: the loop pins its copy */
			for (__u32 w = 0; w < MC_VAL_BUF / 8; w++) {
				MC_OPAQUE(w);
				if (w * 8 >= vl)
					break;
				*(__u64 *)&r[mc_mask(MC_LOAD(s->tok.start) + w * 8)] =
					((__u64 *)slot->val)[w];
			}
			vl = MC_LOAD(slot->val_len);
			p = MC_LOAD(s->tok.start) + vl;
			*(__u16 *)&r[mc_mask(p)] = MC_W2('\r', '\n');
			s->mget_len = p + 2;
			if (i == 0) { /* a one-key get too big for a datagram marks its slot */
				s->hit.slot_idx = idx;
				s->hit.key_len = kl;
				s->hit.val_len = vl;
			}
		}
	}
	bpf_spin_unlock(&slot->lock);
	if (expired)
		mc_level_add(j.gen, -1);
	ko = MC_LOAD(k->off) & MC_BUF_MASK;
	mc_pkt_key(&s->pkt, s->buf, ko, MC_LOAD(k->len)); /* late: see get_one */
	if (!ok) {
		if (expired)
			mc_count(MC_V_EXPIRED);
		mc_count(MC_V_MISS);
		remember_get(s, 0, 0); /* the reply names its items: every one of them fills */
		return MC_MG_MISS;
	}
	if (MC_LOAD(s->mget_len) > MC_MGET_ROOM) {
		/* Too big for one datagram: memcached answers (in several). Every key so far was
		 * a hit: nothing to fill (a refill would copy the same values again). */
		if (MC_LOAD(s->nkeys) == 1)
			mark_unservable(s->hit.slot_idx, s->hit.key_len, s->hit.val_len);
		mc_count(MC_V_TOO_BIG);
		return MC_MG_PASS;
	}
	if (hash == cfg->probe_hash)
		mc_count(MC_V_PROBE_HIT);
	return MC_MG_HIT;
}

/* An ASCII get's keys, MC_MGET_PER_CALL per run, then the next run or xdp_reply. */
static __always_inline int get_keys(struct xdp_md *ctx, struct mc_xscratch *s,
				    struct mc_config *cfg)
{
	for (__u32 j = 0; j < MC_MGET_PER_CALL; j++) {
		MC_OPAQUE(j);
		__u32 i = MC_LOAD(s->done);
		if (i >= MC_MAX_MULTIGET || i >= MC_LOAD(s->nkeys))
			break;
		if (mget_key(s, cfg, i) != MC_MG_HIT)
			return XDP_PASS;
		s->done = i + 1;
	}
	if (MC_LOAD(s->done) < MC_LOAD(s->nkeys))
		mc_xdp_jmp.call(ctx, TAIL_GET_KEY);
	else
		mc_xdp_jmp.call(ctx, TAIL_REPLY);
	return XDP_PASS;
}

#endif /* MC_XDP_GET_KEYS_H */
