/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TC egress: fill the cache from memcached's own UDP GET replies.
 *
 *   tc_main       parse L2-L4, match the reply to the GET that missed
 *                 (mc_pending), then fill: binary here, ASCII item by item
 *   tc_fill_item  fill one "VALUE key flags bytes" item (tail call per item)
 *
 * A fill is refused when a write to the slot arrived after the GET, or within
 * fill_hold_ns before it (the write may still be in flight inside memcached),
 * or when the cache was flushed since: the fill race guard. Packets always
 * leave unchanged (TC_ACT_OK).
 */
#include "mcache_socket.h"

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/udp.h>

#include "mcache_parse.h"

#define TAIL_FILL_ITEM MC_TAIL_FILL_ITEM

BPF_PROG_ARRAY(mc_tc_jmp, 2);

struct mc_tscratch {
	/* First, so that a masked index from pend.key stays inside the value. */
	struct mc_pending pend;
	__u8 buf[MC_BUF + MC_BUF_PAD];
	struct mc_tokens tok;
	__u32 len;   /* reply payload bytes in buf */
	__u32 pos;   /* next ASCII item */
	__u32 items; /* ASCII items filled so far */
	__u32 hash;
	__u8 fstr[16]; /* decimal flags and length, built before taking the slot lock */
	__u8 lstr[16];
	__u32 f_key_off;
	__u32 f_kl;
	__u32 f_val_off;
	__u32 f_vl;
	__u32 f_fl;
	__u32 f_ll;
};

BPF_PERCPU_ARRAY(mc_tscratch, struct mc_tscratch, 1);

static __always_inline struct mc_tscratch *scratch(void)
{
	u32 zero = 0;
	return mc_tscratch.lookup(&zero);
}

static __always_inline int prefix_ok(struct mc_config *cfg, const __u8 *buf, __u32 off, __u32 len)
{
	__u32 pl = cfg->prefix_len;
	if (pl > len || pl > MC_MAX_PREFIX)
		return 0;
	for (__u32 i = 0; i < MC_MAX_PREFIX; i++) {
		MC_OPAQUE(i);
		if (i >= pl)
			break;
		if (MC_AT(buf, off + i) != cfg->prefix[i])
			return 0;
	}
	return 1;
}

/*
 * The way of the key's bucket to fill: the one that holds (or held) this hash, else a free
 * or dead one, else the one filled longest ago. Read without locks, so a hint: the fill
 * takes the chosen slot's lock and its guard, and a way that another fill takes meanwhile
 * is simply overwritten (invalidation clears the key in every way).
 */
static __always_inline __u32 pick_way(__u32 hash, __u64 gen)
{
	__u32 base = mc_bucket(hash);
	__u32 best = base;
	__u64 oldest = ~0ULL;
	for (__u32 w = 0; w < MC_WAYS; w++) {
		__u32 idx = base + w;
		struct mc_slot *c = mc_cache.lookup(&idx);
		if (!c)
			continue;
		if (c->hash == hash)
			return idx;
		__u64 age = c->valid && c->gen == gen ? c->fill_ns : 0;
		if (age < oldest) {
			oldest = age;
			best = idx;
		}
	}
	return best;
}

/*
 * Fill one slot from buf: key at key_off, value at val_off. The key may come
 * from the pending GET instead (binary GET replies carry none): key_src.
 * Lengths are parked in the scratch map and re-read after every loop (MC_LOAD):
 * a loop that ends at "j >= len" tells the verifier len's exact value, and
 * every distinct length would otherwise be verified separately.
 */
static __always_inline void fill(struct mc_tscratch *s, struct mc_config *cfg, const __u8 *key_src,
				 __u32 key_off, __u32 kl, __u32 val_off, __u32 vl, __u32 flags,
				 __u32 fs_off, __u32 fs_len, __u64 cas, int has_cas)
{
	if (kl == 0 || kl > MC_MAX_KEY || !prefix_ok(cfg, key_src, key_off, kl)) {
		mc_count(MC_V_TOO_BIG);
		return;
	}
	if (vl > MC_MAX_VALUE) {
		mc_count(MC_V_TOO_BIG);
		return;
	}
	s->f_key_off = key_off;
	s->f_kl = kl;
	s->f_val_off = val_off;
	s->f_vl = vl;
	s->hash = mc_hash(key_src, key_off, kl);

	/* flags as memcached printed them (ASCII reply), or formatted (binary) */
	s->f_fl = fs_len;
	if (fs_len) {
		for (__u32 i = 0; i < 10; i++) {
			MC_OPAQUE(i);
			if (i >= MC_LOAD(s->f_fl))
				break;
			s->fstr[i & 15] = MC_AT(s->buf, fs_off + i);
		}
	} else {
		s->f_fl = mc_utoa(flags, s->fstr);
	}
	s->f_ll = mc_utoa(MC_LOAD(s->f_vl), s->lstr);

	__u32 hash = MC_LOAD(s->hash);
	__u32 idx = pick_way(hash, MC_LOAD(s->pend.gen));
	struct mc_slot *slot = mc_cache.lookup(&idx);
	if (!slot)
		return;
	__u64 get_ns = MC_LOAD(s->pend.get_ns);
	__u64 gen = MC_LOAD(s->pend.gen);
	__u64 hold = cfg->fill_hold_ns;
	int ok = 0, was_live = 0;

	bpf_spin_lock(&slot->lock);
#ifdef MC_TEST_NO_FILL_GUARD
	/* Test-only build (tests/correctness): the race guard off, to prove the checker sees it. */
	if (hold || get_ns || 1) {
#else
	if (slot->write_ns + hold <= get_ns) {
#endif
		ok = 1;
		was_live = slot->valid && slot->gen == gen;
		slot->valid = 0;
		for (__u32 j = 0; j < MC_KEY_BUF; j++) {
			MC_OPAQUE(j);
			if (j >= MC_LOAD(s->f_kl) || j >= MC_KEY_BUF)
				break;
			slot->key[j] = MC_AT(key_src, MC_LOAD(s->f_key_off) + j);
		}
		for (__u32 j = 0; j < MC_VAL_BUF; j++) {
			MC_OPAQUE(j);
			if (j >= MC_LOAD(s->f_vl) || j >= MC_VAL_BUF)
				break;
			slot->val[j] = MC_AT(s->buf, MC_LOAD(s->f_val_off) + j);
		}
		((__u64 *)slot->flags_str)[0] = ((__u64 *)s->fstr)[0];
		((__u64 *)slot->flags_str)[1] = ((__u64 *)s->fstr)[1];
		((__u64 *)slot->len_str)[0] = ((__u64 *)s->lstr)[0];
		((__u64 *)slot->len_str)[1] = ((__u64 *)s->lstr)[1];
		slot->flags_str_len = MC_LOAD(s->f_fl);
		slot->len_str_len = MC_LOAD(s->f_ll);
		slot->hash = hash;
		slot->key_len = MC_LOAD(s->f_kl);
		slot->val_len = MC_LOAD(s->f_vl);
		slot->flags = flags;
		slot->cas = cas;
		slot->has_cas = has_cas;
		slot->unservable = 0;
		slot->gen = gen;
		/* The value is at least as new as the GET's arrival: TTL and delayed flushes
		 * count from there. */
		slot->fill_ns = get_ns;
		slot->valid = 1;
	}
	bpf_spin_unlock(&slot->lock);
	if (ok && !was_live)
		mc_level_add(gen, 1);
	mc_count(ok ? MC_V_FILL : MC_V_FILL_REJECTED);
}

/* The reply is for a GET that missed since the last flush, and no delayed flush is pending. */
static __always_inline int fill_allowed(struct mc_tscratch *s, struct mc_config *cfg)
{
	u32 zero = 0;
	struct mc_state *st = mc_state.lookup(&zero);
	if (!st)
		return 0;
	__u64 fa = st->flush_at_ns;
	/* A different generation, or a delayed flush that happened since the GET: the value
	 * is from before the flush. */
	if (st->gen != s->pend.gen || (fa && s->pend.get_ns < fa && bpf_ktime_get_ns() >= fa) ||
	    s->pend.get_ns < st->flush_ns + cfg->fill_hold_ns) {
		mc_count(MC_V_FILL_REJECTED);
		return 0;
	}
	return 1;
}

static __always_inline int fill_binary(struct mc_tscratch *s, struct mc_config *cfg)
{
	const __u8 *b = s->buf + MC_UDP_FRAME_HDR;
	__u32 len = s->len;
	if (len < MC_UDP_FRAME_HDR + MC_BIN_HDR + 4)
		return TC_ACT_OK;
	__u8 op = b[1];
	__u32 klen = ((__u32)b[2] << 8) | b[3];
	__u32 elen = b[4];
	__u32 status = ((__u32)b[6] << 8) | b[7];
	__u32 body = ((__u32)b[8] << 24) | ((__u32)b[9] << 16) | ((__u32)b[10] << 8) | b[11];
	__u32 opaque = ((__u32)b[12] << 24) | ((__u32)b[13] << 16) | ((__u32)b[14] << 8) | b[15];
	__u64 cas = 0;
	for (int i = 0; i < 8; i++)
		cas = (cas << 8) | b[16 + i];
	int is_get = op == 0x00 || op == 0x09 || op == 0x0c || op == 0x0d;
	if (!is_get || status != 0 || elen != 4 || opaque != s->pend.opaque ||
	    MC_UDP_FRAME_HDR + MC_BIN_HDR + body != len || body < 4 + klen)
		return TC_ACT_OK;
	__u32 flags = ((__u32)b[24] << 24) | ((__u32)b[25] << 16) | ((__u32)b[26] << 8) | b[27];
	__u32 key_at = MC_UDP_FRAME_HDR + MC_BIN_HDR + 4;
	__u32 vl = body - 4 - klen;
	if (!fill_allowed(s, cfg))
		return TC_ACT_OK;
	if (klen) /* GETK/GETKQ: the key is in the reply */
		fill(s, cfg, s->buf, key_at, klen, key_at + klen, vl, flags, 0, 0, cas, 1);
	else /* GET/GETQ: the key was kept with the pending GET */
		fill(s, cfg, s->pend.key, 0, s->pend.key_len, key_at, vl, flags, 0, 0, cas, 1);
	return TC_ACT_OK;
}

int tc_main(struct __sk_buff *skb)
{
	/* Every packet the host sends on the interface comes here: the headers are read in
	 * place (a locally built UDP packet has them in the linear part; one that has not is
	 * simply not filled from), and anything that is not a reply from memcached's port
	 * leaves before the scratch map is touched. */
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    iph->protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	__u32 ihl = iph->ihl * 4;
	if (iph->version != 4 || ihl < sizeof(*iph) || (bpf_ntohs(iph->frag_off) & 0x3fff))
		return TC_ACT_OK;
	struct udphdr *uh = (void *)iph + ihl;
	if ((void *)(uh + 1) > data_end)
		return TC_ACT_OK;
	struct mc_config *cfg = mc_config();
	if (!cfg || !cfg->enabled || uh->source != cfg->port)
		return TC_ACT_OK;
	if (cfg->server_addr && iph->saddr != cfg->server_addr)
		return TC_ACT_OK;
	struct mc_tscratch *s = scratch();
	if (!s)
		return TC_ACT_OK;
	__u32 client_addr = iph->daddr;
	__u16 client_port = uh->dest;
	__u64 len = bpf_ntohs(uh->len);
	if (len < sizeof(*uh) + MC_UDP_FRAME_HDR + 5)
		return TC_ACT_OK;
	len -= sizeof(*uh);
	if (!MC_SIZE_OK(len, MC_BUF))
		return TC_ACT_OK; /* a reply too large for one slot anyway */
	__u32 off = sizeof(*eth) + ihl + sizeof(*uh);
	/* The frame header first: only a single-datagram reply (sequence 0 of 1) to a GET that
	 * missed is worth copying; most replies here are to writes, or to GETs that were hits
	 * too big for the frame. */
	__u8 fh[MC_UDP_FRAME_HDR];
	if (bpf_skb_load_bytes(skb, off, fh, sizeof(fh)))
		return TC_ACT_OK;
	if (fh[2] != 0 || fh[3] != 0 || fh[4] != 0 || fh[5] != 1)
		return TC_ACT_OK;
	struct mc_pending_key pk = {
		.client_addr = client_addr,
		.client_port = client_port,
		.request_id = ((__u16)fh[0] << 8) | fh[1],
	};
	struct mc_pending *p = mc_pending.lookup(&pk);
	if (!p)
		return TC_ACT_OK;
	__builtin_memcpy(&s->pend, p, sizeof(*p));
	if (bpf_skb_load_bytes(skb, off, s->buf, len))
		return TC_ACT_OK;
	s->len = len;
	if (s->buf[MC_UDP_FRAME_HDR] == MC_BIN_RES_MAGIC) {
		mc_pending.delete(&pk);
		return fill_binary(s, cfg);
	}
	/* memcached sends a multi-get's items as separate messages: the GET is
	 * answered only when "END\r\n" went out. */
	if (MC_AT(s->buf, len - 5) == 'E' && MC_AT(s->buf, len - 4) == 'N' &&
	    MC_AT(s->buf, len - 3) == 'D' && MC_AT(s->buf, len - 2) == '\r' &&
	    MC_AT(s->buf, len - 1) == '\n')
		mc_pending.delete(&pk);
	if (!fill_allowed(s, cfg))
		return TC_ACT_OK;
	s->pos = MC_UDP_FRAME_HDR;
	s->items = 0;
	mc_tc_jmp.call(skb, TAIL_FILL_ITEM);
	return TC_ACT_OK;
}

/* One "VALUE <key> <flags> <bytes>\r\n<data>\r\n" item, then the next. */
int tc_fill_item(struct __sk_buff *skb)
{
	struct mc_config *cfg = mc_config();
	struct mc_tscratch *s = scratch();
	if (!cfg || !s)
		return TC_ACT_OK;
	__u32 pos = s->pos;
	__u32 len = s->len;
	if (pos >= len || s->items >= MC_MAX_FILL_ITEMS || len > MC_BUF)
		return TC_ACT_OK;
	struct mc_tokens *t = &s->tok;
	__u32 limit = pos + MC_WIN < len ? pos + MC_WIN : len;
	t->eol = mc_find_crlf(s->buf, pos, limit);
	int eol = MC_LOAD(t->eol);
	pos = MC_LOAD(s->pos);
	len = MC_LOAD(s->len);
	if (eol < 0)
		return TC_ACT_OK;
	mc_tokenize(s->buf, pos, eol, t);
	__u32 n = MC_LOAD(t->n);
	/* "END", or a gets reply (5 tokens, with cas): nothing (more) to fill */
	if (n != 4 || MC_LOAD(t->len[0]) != 5 ||
	    mc_word64(s->buf, t->off[0], 5) != MC_W5('V', 'A', 'L', 'U', 'E'))
		return TC_ACT_OK;
	__u32 key_off = MC_LOAD(t->off[1]);
	__u32 kl = MC_LOAD(t->len[1]);
	__u32 fs_off = MC_LOAD(t->off[2]);
	__u32 fs_len = MC_LOAD(t->len[2]);
	long long flags = mc_atou(s->buf, fs_off, fs_len);
	long long bytes = mc_atou(s->buf, MC_LOAD(t->off[3]), MC_LOAD(t->len[3]));
	eol = MC_LOAD(t->eol);
	if (flags < 0 || bytes < 0 || fs_len > 10)
		return TC_ACT_OK;
	__u32 val_off = eol + 2;
	__u32 end = val_off + bytes;
	if (end + 2 > len || MC_AT(s->buf, end) != '\r' || MC_AT(s->buf, end + 1) != '\n')
		return TC_ACT_OK; /* not the reply we expect: fill nothing */
	s->pos = end + 2;
	s->items++;
	fill(s, cfg, s->buf, key_off, kl, val_off, bytes, flags, fs_off, fs_len, 0, 0);
	mc_tc_jmp.call(skb, TAIL_FILL_ITEM);
	return TC_ACT_OK;
}
