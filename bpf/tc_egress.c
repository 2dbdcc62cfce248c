/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TC egress: fill the cache from memcached's own UDP GET replies.
 *
 *   tc_main       parse L2-L4, match the reply to the GET that missed
 *                 (mc_pending), then fill: binary here, ASCII item by item
 *   tc_fill_item  fill one "VALUE key flags bytes" item (tail call per item), or an mg's
 *                 "VA <bytes> <flags>" reply
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
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/udp.h>

#include "mcache_parse.h"
#include "mcache_verdict.h"

#define TAIL_FILL_ITEM MC_TAIL_FILL_ITEM
#define TAIL_CAPTURE MC_TAIL_TC_CAPTURE

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
	/* The reply's client identity, and the way that holds its GET's miss record. */
	struct mc_pending_key pk;
	__u32 miss_way;
	/* fill_one: where the key, the flags and the length end (parked: see MC_LOAD) */
	__s32 one_ke;
	__s32 one_fe;
	__s32 one_be;
	/* Its verdicts, counters and capture record (mcache_verdict.h). */
	struct mc_pkt pkt;
};

BPF_PERCPU_ARRAY(mc_tscratch, struct mc_tscratch, 1);

static __always_inline struct mc_tscratch *scratch(void)
{
	u32 zero = 0;
	return mc_tscratch.lookup(&zero);
}

static __always_inline void mc_count(__u32 verdict)
{
	struct mc_tscratch *s = scratch();
	if (s)
		mc_pkt_count(&s->pkt, verdict);
}

/* Every program's exit: the frame to tc_capture when a capture runs (see xdp_ingress.c). */
static __always_inline int finish(struct __sk_buff *skb, struct mc_tscratch *s, __u32 path)
{
	if (s->pkt.cap) {
		s->pkt.exit_path = path;
		mc_tc_jmp.call(skb, TAIL_CAPTURE);
	}
	return TC_ACT_OK;
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
 * Fill one slot from buf: key at key_off, value at val_off. The key may come
 * from the pending GET instead (binary GET replies carry none): key_src.
 * Lengths are parked in the scratch map and re-read after every loop (MC_LOAD):
 * a loop that ends at "j >= len" tells the verifier len's exact value, and
 * every distinct length would otherwise be verified separately.
 */
static __always_inline void fill(struct mc_tscratch *s, struct mc_config *cfg, const __u8 *key_src,
				 __u32 key_off, __u32 kl, __u32 val_off, __u32 vl, __u32 flags,
				 __u32 fs_off, __u32 fs_len, __u64 cas, int has_cas, int has_flags,
				 int claim)
{
	if (kl == 0 || kl > MC_MAX_KEY || !prefix_ok(cfg, key_src, key_off, kl)) {
		mc_pkt_key(&s->pkt, key_src, key_off, kl);
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
	/* A claim fills the way that holds the GET's miss record (found by find_miss), else the
	 * fill picks one. */
	__u32 base = mc_bucket(hash);
	struct mc_bucket_meta *m = mc_meta(base);
	if (!m)
		return;
	__u32 idx = claim ? MC_LOAD(s->miss_way) : mc_pick_way(m, base, hash);
	struct mc_slot *slot = mc_cache.lookup(&idx);
	if (!slot)
		return;
	__u64 get_ns = MC_LOAD(s->pend.get_ns);
	__u64 gen = MC_LOAD(s->pend.gen);
	__u64 hold = cfg->fill_hold_ns;
	int ok = 0, was_live = 0, evicted = 0, mine = 1;
	__u32 a0 = s->pk.client_addr[0], a1 = s->pk.client_addr[1], a2 = s->pk.client_addr[2],
	      a3 = s->pk.client_addr[3];
	__u16 port = s->pk.client_port, rid = s->pk.request_id;

	bpf_spin_lock(&slot->lock);
	if (claim) {
		/* The record read before the lock was a hint: it must still be this GET's, and
		 * its times under the lock are the ones the guard uses. */
		mine = slot->miss_get_ns && slot->miss_hash == hash && slot->miss_addr[0] == a0 &&
		       slot->miss_addr[1] == a1 && slot->miss_addr[2] == a2 &&
		       slot->miss_addr[3] == a3 && slot->miss_port == port && slot->miss_rid == rid;
		if (mine) {
			get_ns = slot->miss_get_ns;
			gen = slot->miss_gen;
			slot->miss_get_ns = 0;
		}
	}
#ifdef MC_TEST_NO_FILL_GUARD
	/* Test-only build (tests/correctness): the race guard off, to prove the checker sees it. */
	if (mine && (hold || get_ns || 1)) {
#else
	if (mine && slot->write_ns + hold <= get_ns) {
#endif
		ok = 1;
		was_live = slot->valid && slot->gen == gen;
		evicted = was_live & (slot->hash != hash);
		slot->valid = 0;
		/* A word at a time; the last word's bytes past the length are never read back
		 * (lookups compare and copy up to the lengths). */
		for (__u32 j = 0; j < MC_KEY_BUF / 8; j++) {
			MC_OPAQUE(j);
			if (j * 8 >= MC_LOAD(s->f_kl))
				break;
			((__u64 *)slot->key)[j] =
				*(const __u64 *)&key_src[mc_mask(MC_LOAD(s->f_key_off) + j * 8)];
		}
		for (__u32 j = 0; j < MC_VAL_BUF / 8; j++) {
			MC_OPAQUE(j);
			if (j * 8 >= MC_LOAD(s->f_vl))
				break;
			((__u64 *)slot->val)[j] =
				*(const __u64 *)&s->buf[mc_mask(MC_LOAD(s->f_val_off) + j * 8)];
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
		slot->has_flags = has_flags;
		slot->unservable = 0;
		slot->gen = gen;
		/* The value is at least as new as the GET's arrival: TTL and delayed flushes
		 * count from there. */
		slot->fill_ns = get_ns;
		slot->valid = 1;
	}
	bpf_spin_unlock(&slot->lock);
	__u32 w = idx & (MC_WAYS - 1);
	if (ok) {
		m->hash[w] = hash;
		m->fill_ms[w] = MC_MS(get_ns); /* the entry's age counts from its GET (fill_ns) */
	}
	if (claim && mine) {
		m->miss_hash[w] = 0;
		m->miss_ms[w] = 0;
	}
	if (ok && !was_live)
		mc_level_add(gen, 1);
	/* Without a branch: one here doubles the paths the verifier walks through the rest. */
	mc_pkt_count_n(&s->pkt, MC_V_EVICT, evicted);
	mc_pkt_count(&s->pkt, ok ? MC_V_FILL : MC_V_FILL_REJECTED);
	/* Noted last on purpose: a branch early in a path doubles what the verifier walks. */
	mc_pkt_key(&s->pkt, key_src, MC_LOAD(s->f_key_off), MC_LOAD(s->f_kl));
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
		fill(s, cfg, s->buf, key_at, klen, key_at + klen, vl, flags, 0, 0, cas, 1, 1, 0);
	else /* GET/GETQ: the key was kept with the pending GET */
		fill(s, cfg, s->pend.key, 0, s->pend.key_len, key_at, vl, flags, 0, 0, cas, 1, 1,
		     0);
	return TC_ACT_OK;
}

/* The slot's miss record is the GET of this hash from this client (port, request id). */
static __always_inline int miss_is(struct mc_slot *rec, __u32 hash, struct mc_pending_key *pk)
{
	return rec->miss_hash == hash && rec->miss_addr[0] == pk->client_addr[0] &&
	       rec->miss_addr[1] == pk->client_addr[1] && rec->miss_addr[2] == pk->client_addr[2] &&
	       rec->miss_addr[3] == pk->client_addr[3] && rec->miss_port == pk->client_port &&
	       rec->miss_rid == pk->request_id;
}

/*
 * The common reply: one item, "VALUE <key> <flags> <bytes>\r\n<data>\r\nEND\r\n", to a
 * single-key GET whose miss record waits in a way of the key's bucket (xdp_ingress.c,
 * remember_in_way). Parsed without the tokenizer, filled without a tail call, no mc_pending
 * lookup or delete. Returns 0 when the reply has another form or no record waits for it:
 * the general path (mc_pending) decides then.
 */
static __always_inline int fill_one(struct mc_tscratch *s, struct mc_config *cfg)
{
	const __u32 ko = MC_UDP_FRAME_HDR + 6; /* after "VALUE " */
	__u32 len = s->len;
	if (len < ko + 1 + 6 + 7 || len > MC_BUF)
		return 0;
	if ((mc_word(s->buf, MC_UDP_FRAME_HDR) & 0xffffffffffffULL) !=
	    MC_W6('V', 'A', 'L', 'U', 'E', ' ') ||
	    (mc_word(s->buf, len - 7) & 0xffffffffffffffULL) !=
	    MC_W7('\r', '\n', 'E', 'N', 'D', '\r', '\n'))
		return 0;
	s->one_ke = mc_find_space(s->buf, ko, MC_MAX_KEY + 1);
	__s32 ke = MC_LOAD(s->one_ke);
	if (ke <= (__s32)ko)
		return 0;
	s->one_fe = mc_find_byte(s->buf, ke + 1, 11, ' ');
	__s32 fe = MC_LOAD(s->one_fe);
	if (fe < 0)
		return 0;
	s->one_be = mc_find_byte(s->buf, fe + 1, 11, '\r');
	__s32 be = MC_LOAD(s->one_be);
	ke = MC_LOAD(s->one_ke);
	fe = MC_LOAD(s->one_fe);
	if (be < 0 || fe <= ke + 1 || be <= fe + 1 || MC_AT(s->buf, be + 1) != '\n')
		return 0;
	long long flags = mc_atou(s->buf, ke + 1, fe - ke - 1);
	long long bytes = mc_atou(s->buf, MC_LOAD(s->one_fe) + 1,
				  MC_LOAD(s->one_be) - MC_LOAD(s->one_fe) - 1);
	be = MC_LOAD(s->one_be);
	if (flags < 0 || bytes < 0 || bytes > MC_BUF || be + 2 + bytes + 7 != MC_LOAD(s->len))
		return 0;
	__u32 kl = MC_LOAD(s->one_ke) - ko;
	if (kl == 0 || kl > MC_MAX_KEY)
		return 0;
	s->hash = mc_hash(s->buf, ko, kl);
	__u32 hash = MC_LOAD(s->hash);
	/* The miss record, by the bucket's summary, then the slot's: both read without the
	 * lock, a hint that fill checks again under it. */
	__u32 base = mc_bucket(hash);
	struct mc_bucket_meta *m = mc_meta(base);
	if (!m)
		return 0;
	__u32 idx = base;
	int found = 0;
	for (__u32 w = 0; w < MC_WAYS; w++) {
		if (m->miss_hash[w] == hash && m->miss_ms[w]) {
			idx = base + w;
			found = 1;
			break;
		}
	}
	if (!found)
		return 0;
	struct mc_slot *rec = mc_cache.lookup(&idx);
	if (!rec || !rec->miss_get_ns || !miss_is(rec, hash, &s->pk))
		return 0;
	s->miss_way = idx;
	s->pend.get_ns = rec->miss_get_ns;
	s->pend.gen = rec->miss_gen;
	if (fill_allowed(s, cfg)) {
		ke = MC_LOAD(s->one_ke);
		fe = MC_LOAD(s->one_fe);
		fill(s, cfg, s->buf, ko, MC_LOAD(s->one_ke) - ko, MC_LOAD(s->one_be) + 2, bytes,
		     flags, ke + 1, fe - ke - 1, 0, 0, 1, 1);
	} else {
		/* Answered all the same: the record is used up (a retry with the same request id
		 * would otherwise inherit this GET's time, and be refused for the same reason). */
		bpf_spin_lock(&rec->lock);
		if (miss_is(rec, hash, &s->pk))
			rec->miss_get_ns = 0;
		bpf_spin_unlock(&rec->lock);
		m->miss_hash[idx & (MC_WAYS - 1)] = 0;
		m->miss_ms[idx & (MC_WAYS - 1)] = 0;
	}
	return 1;
}

/* A reply from memcached's port: fill from it if a GET that missed waits for it (the
 * client's address and port are in s->pk already). */
static __always_inline int reply_path(struct __sk_buff *skb, struct mc_tscratch *s,
				      struct mc_config *cfg, __u64 len, __u32 off)
{
	if (len < sizeof(struct udphdr) + MC_UDP_FRAME_HDR + 5)
		return TC_ACT_OK;
	len -= sizeof(struct udphdr);
	if (!MC_SIZE_OK(len, MC_BUF))
		return TC_ACT_OK; /* a reply too large for one slot anyway */
	/* The frame header first: only a single-datagram reply (sequence 0 of 1) to a GET that
	 * missed is worth copying; most replies here are to writes, or to GETs that were hits
	 * too big for the frame. */
	__u8 fh[MC_UDP_FRAME_HDR];
	if (bpf_skb_load_bytes(skb, off, fh, sizeof(fh)))
		return TC_ACT_OK;
	if (fh[2] != 0 || fh[3] != 0 || fh[4] != 0 || fh[5] != 1)
		return TC_ACT_OK;
	s->pk.request_id = ((__u16)fh[0] << 8) | fh[1];
	struct mc_pending_key pk = s->pk;
	if (bpf_skb_load_bytes(skb, off, s->buf, len))
		return TC_ACT_OK;
	s->len = len;
	if (fill_one(s, cfg))
		return TC_ACT_OK;
	struct mc_pending *p = mc_pending.lookup(&pk);
	if (!p)
		return TC_ACT_OK;
	__builtin_memcpy(&s->pend, p, sizeof(*p));
	len = MC_LOAD(s->len);
	if (len < MC_UDP_FRAME_HDR + 5 || len > MC_BUF)
		return TC_ACT_OK;
	if (s->buf[MC_UDP_FRAME_HDR] == MC_BIN_RES_MAGIC) {
		mc_pending.delete(&pk);
		return fill_binary(s, cfg);
	}
	if (s->pend.meta) {
		/* An mg is answered in one message: "VA ..." fills (tc_fill_item, fill_meta);
		 * "EN" (a miss), "HD" (no value) and errors fill nothing. */
		mc_pending.delete(&pk);
		if (s->buf[MC_UDP_FRAME_HDR] != 'V' || s->buf[MC_UDP_FRAME_HDR + 1] != 'A' ||
		    s->buf[MC_UDP_FRAME_HDR + 2] != ' ' || !fill_allowed(s, cfg))
			return TC_ACT_OK;
		mc_tc_jmp.call(skb, TAIL_FILL_ITEM);
		return TC_ACT_OK;
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

/* The config, when uh comes from memcached's port and the cache is on; else NULL. Looked up
 * only once a frame is known to be UDP: most frames leaving the host are not. */
static __always_inline struct mc_config *from_memcached(struct udphdr *uh)
{
	struct mc_config *cfg = mc_config();
	if (!cfg || !cfg->enabled || uh->source != cfg->port)
		return NULL;
	return cfg;
}

/*
 * An IPv6 frame: a reply from memcached's port without extension headers (memcached sends
 * none; a reply too large for the path MTU comes fragmented and is not filled from). The
 * client's address and port into client, the config into *cfgp; the UDP length, 0 when it is
 * not such a reply.
 */
static __always_inline __u32 reply6(struct __sk_buff *skb, struct ethhdr *eth,
				    struct mc_config **cfgp, __u32 *client)
{
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct udphdr *uh = (void *)(ip6 + 1);
	if ((void *)(uh + 1) > data_end || ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)
		return 0;
	struct mc_config *cfg = *cfgp = from_memcached(uh);
	if (!cfg || !(cfg->families & MC_FAMILY_IPV6) ||
	    !mc_server6(cfg, ip6->saddr.in6_u.u6_addr32))
		return 0;
	__builtin_memcpy(client, &ip6->daddr, 16);
	client[4] = uh->dest;
	__u32 ulen = bpf_ntohs(uh->len);
	return ulen <= bpf_ntohs(ip6->payload_len) ? ulen : 0;
}

/* The same for IPv4 (the client's address as ::ffff:a.b.c.d); *off: the UDP payload's. */
static __always_inline __u32 reply4(struct __sk_buff *skb, struct ethhdr *eth,
				    struct mc_config **cfgp, __u32 *client, __u32 *off)
{
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    iph->protocol != IPPROTO_UDP)
		return 0;
	__u32 ihl = iph->ihl * 4;
	if (iph->version != 4 || ihl < sizeof(*iph) || (bpf_ntohs(iph->frag_off) & 0x3fff))
		return 0;
	struct udphdr *uh = (void *)iph + ihl;
	if ((void *)(uh + 1) > data_end)
		return 0;
	struct mc_config *cfg = *cfgp = from_memcached(uh);
	if (!cfg || (cfg->server_addr && iph->saddr != cfg->server_addr))
		return 0;
	client[0] = client[1] = 0;
	client[2] = bpf_htonl(0xffff); /* as xdp_ingress.c keys it */
	client[3] = iph->daddr;
	client[4] = uh->dest;
	*off = sizeof(*eth) + ihl + sizeof(*uh);
	return bpf_ntohs(uh->len);
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
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	struct mc_config *cfg = NULL;
	__u32 client[5]; /* the address, then the port */
	__u32 off = sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct udphdr);
	__u32 ulen = eth->h_proto == bpf_htons(ETH_P_IPV6) ? reply6(skb, eth, &cfg, client)
							   : reply4(skb, eth, &cfg, client, &off);
	if (!ulen || !cfg)
		return TC_ACT_OK;
	struct mc_tscratch *s = scratch();
	if (!s)
		return TC_ACT_OK;
	mc_pkt_begin(&s->pkt, cfg, MC_P_TC_MAIN);
	__builtin_memcpy(s->pk.client_addr, client, 16);
	s->pk.client_port = client[4];
	reply_path(skb, s, cfg, ulen, off);
	return finish(skb, s, MC_P_TC_MAIN);
}

#define MC_MG_FIRST_FLAG 2 /* "VA" and the length, then the return flags */

/*
 * An mg's reply, "VA <bytes> <return flags>\r\n<data>\r\n", to the mg that missed (s->pend,
 * marked meta). memcached 1.6.18 prints the return flags in the order the mg asked for them:
 * the reply is filled from only when it carries exactly those (pend.opaque, remember_get in
 * xdp_lookup.h), s<bytes> agreeing with the length and k with the key's length. The key is
 * the one kept with the miss: the reply carries it only with k. With f the entry knows the
 * client flags and answers every form; without, only mg forms without f (has_flags).
 */
static __always_inline void fill_meta(struct mc_tscratch *s, struct mc_config *cfg)
{
	__u32 len = s->len;
	if (len > MC_BUF || len < MC_UDP_FRAME_HDR + 3)
		return;
	struct mc_tokens *t = &s->tok;
	__u32 limit = MC_UDP_FRAME_HDR + MC_WIN < len ? MC_UDP_FRAME_HDR + MC_WIN : len;
	t->eol = mc_find_crlf(s->buf, MC_UDP_FRAME_HDR, limit);
	int eol = MC_LOAD(t->eol);
	if (eol < 0)
		return;
	mc_tokenize(s->buf, MC_UDP_FRAME_HDR, eol, t);
	__u32 n = MC_LOAD(t->n);
	if (n < MC_MG_FIRST_FLAG || n > MC_MG_FIRST_FLAG + MC_META_RET || t->overflow ||
	    MC_LOAD(t->len[0]) != 2)
		return;
	/* Which token is f and which s (0: none), each checked against what was asked. */
	__u32 asked = s->pend.opaque;
	__u32 f_tok = 0, s_tok = 0, want = MC_MG_FIRST_FLAG;
	for (__u32 i = 0; i < MC_META_RET; i++) {
		__u8 c = asked >> (8 * i);
		if (!c)
			break;
		__u32 ti = MC_MG_FIRST_FLAG + i;
		if (ti >= n)
			return;
		__u32 off = MC_LOAD(t->off[ti]);
		__u32 l = MC_LOAD(t->len[ti]);
		if (MC_AT(s->buf, off) != c)
			return;
		if (c == 'f')
			f_tok = ti;
		else if (c == 's')
			s_tok = ti;
		else if (c == 'k' && l != 1 + s->pend.key_len)
			return;
		want = ti + 1;
	}
	if (n != want)
		return; /* flags nobody asked for: not this mg's reply */
	__u32 off0 = MC_LOAD(t->off[0]);
	if (MC_AT(s->buf, off0) != 'V' || MC_AT(s->buf, off0 + 1) != 'A')
		return;
	long long bytes = mc_atou(s->buf, MC_LOAD(t->off[1]), MC_LOAD(t->len[1]));
	if (bytes < 0 || bytes > MC_BUF)
		return;
	if (s_tok) {
		__u32 so = MC_LOAD(t->off[s_tok & (MC_MAX_TOK - 1)]);
		__u32 sl = MC_LOAD(t->len[s_tok & (MC_MAX_TOK - 1)]);
		if (sl < 2 || mc_atou(s->buf, so + 1, sl - 1) != bytes)
			return;
	}
	long long flags = 0;
	__u32 fs_off = 0, fs_len = 0;
	if (f_tok) {
		fs_off = MC_LOAD(t->off[f_tok & (MC_MAX_TOK - 1)]) + 1;
		fs_len = MC_LOAD(t->len[f_tok & (MC_MAX_TOK - 1)]) - 1;
		if (fs_len < 1 || fs_len > 10)
			return;
		flags = mc_atou(s->buf, fs_off, fs_len);
		if (flags < 0)
			return;
	}
	eol = MC_LOAD(t->eol);
	len = MC_LOAD(s->len);
	__u32 val_off = eol + 2;
	__u32 end = val_off + bytes;
	if (end + 2 != len || MC_AT(s->buf, end) != '\r' || MC_AT(s->buf, end + 1) != '\n')
		return; /* not one whole reply: fill nothing */
	fill(s, cfg, s->pend.key, 0, s->pend.key_len, val_off, bytes, flags, fs_off, fs_len, 0, 0,
	     f_tok != 0, 0);
}

/* One "VALUE <key> <flags> <bytes>\r\n<data>\r\n" item, then the next; or an mg's reply. */
static __always_inline int fill_item(struct __sk_buff *skb, struct mc_tscratch *s,
				     struct mc_config *cfg)
{
	if (s->pend.meta) {
		fill_meta(s, cfg);
		return TC_ACT_OK;
	}
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
	fill(s, cfg, s->buf, key_off, kl, val_off, bytes, flags, fs_off, fs_len, 0, 0, 1, 0);
	if (s->items < MC_MAX_FILL_ITEMS) /* the tail-call cap: see mcache_shared.h */
		mc_tc_jmp.call(skb, TAIL_FILL_ITEM);
	return TC_ACT_OK;
}

int tc_fill_item(struct __sk_buff *skb)
{
	struct mc_config *cfg = mc_config();
	struct mc_tscratch *s = scratch();
	if (!cfg || !s)
		return TC_ACT_OK;
	mc_pkt_path(&s->pkt, MC_P_TC_FILL_ITEM);
	fill_item(skb, s, cfg);
	return finish(skb, s, MC_P_TC_FILL_ITEM);
}

/* A capture runs: the reply as it leaves (see finish). */
int tc_capture(struct __sk_buff *skb)
{
	struct mc_tscratch *s = scratch();
	if (s) /* the frame leaves unchanged */
		mc_capture_skb(skb, &s->pkt, s->pkt.exit_path, MC_CAP_EGRESS, TC_ACT_OK);
	return TC_ACT_OK;
}
