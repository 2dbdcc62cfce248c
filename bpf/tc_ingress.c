/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TC ingress: answer the GET hits whose reply XDP's frame cannot hold.
 *
 *   tc_ingress  a frame XDP handed over (struct mc_handover, MC_V_TO_TC), then
 *               either the common GET ("get <key>\r\n") of a key that is cached (tc_answer:
 *               the key is looked up again under its slot's lock), or any other GET whose
 *               reply xdp_reply left in the scratch (from_scratch); the skb is grown to the
 *               reply's size, the reply written over the request, and sent back out of the
 *               interface it came in on (bpf_redirect)
 *
 * Generic XDP (a veth, lo, a NIC whose driver has no XDP) runs on an skb with 256 bytes of
 * headroom and little tailroom: a reply with a value over ~200 bytes does not fit there,
 * while the skb grows to the MTU here. Native XDP keeps answering in XDP where the frame has
 * room. Anything unexpected passes the request on to memcached, unchanged.
 *
 * Compiled with xdp_ingress.c (included at its end): it shares the cache lookup, the reply
 * builder and the scratch map; loaded as a SCHED_CLS program.
 */
#include <uapi/linux/pkt_cls.h>

/*
 * The UDP checksum of the reply in place (its field at off, 0), right whatever the skb's
 * checksum state: the sum of the UDP header and payload (sum) goes in unless the checksum is
 * left to offload (CHECKSUM_PARTIAL, where the field holds only the pseudo header's sum),
 * then the pseudo header's (ph) in both cases.
 */
static __always_inline void udp_csum(struct __sk_buff *skb, __u32 off, __s64 sum, __s64 ph)
{
	bpf_l4_csum_replace(skb, off, 0, sum, 0);
	bpf_l4_csum_replace(skb, off, 0, ph, BPF_F_PSEUDO_HDR);
}

/* The sum of the IPv4 pseudo header of a reply with len bytes of UDP payload. */
static __always_inline __s64 pseudo4_sum(struct mc_xscratch *s, __u32 len)
{
	__be32 pseudo[3] = {s->server_addr, s->client_addr,
			    bpf_htonl(IPPROTO_UDP << 16 | (sizeof(struct udphdr) + len))};
	return bpf_csum_diff(NULL, 0, pseudo, sizeof(pseudo), 0);
}

/*
 * The request's headers into scratch (either family, no IP options or extension headers).
 * 0 when the frame is not a datagram to memcached's port XDP could have handed over.
 */
static __always_inline int tc_request(struct __sk_buff *skb, struct mc_xscratch *s,
					struct mc_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return 0;
	__builtin_memcpy(s->client_mac, eth->h_source, 6);
	__builtin_memcpy(s->server_mac, eth->h_dest, 6);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct udphdr *uh = (void *)(ip6 + 1);
		if ((void *)(uh + 1) > data_end || ip6->nexthdr != IPPROTO_UDP ||
		    uh->dest != cfg->port)
			return 0;
		s->ipv6 = 1;
		__builtin_memcpy(s->ck.saddr, &ip6->saddr, 16);
		__builtin_memcpy(s->ck.daddr, &ip6->daddr, 16);
		s->client_port = uh->source;
		s->server_port = uh->dest;
		s->payload_len = bpf_ntohs(uh->len);
		s->hdr_len = sizeof(struct mc_l2l4_6);
		return 1;
	}
	struct iphdr *iph = (void *)(eth + 1);
	struct udphdr *uh = (void *)(iph + 1);
	if ((void *)(uh + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || iph->ihl != 5 ||
	    iph->protocol != IPPROTO_UDP || uh->dest != cfg->port)
		return 0;
	s->ipv6 = 0;
	s->client_addr = iph->saddr;
	s->server_addr = iph->daddr;
	s->client_port = uh->source;
	s->server_port = uh->dest;
	s->payload_len = bpf_ntohs(uh->len);
	s->hdr_len = sizeof(struct mc_l2l4);
	return 1;
}

/*
 * The hand-over XDP left on this CPU for this frame (to_tc), by the datagram's client, request
 * id and length, under the config that decided; NULL when there is none. Read without
 * touching the scratch's request state, which from_scratch answers from.
 */
static __always_inline struct mc_handover *handed_over(struct __sk_buff *skb,
							struct mc_xscratch *s, struct mc_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return NULL;
	__u32 addr[4] = {0, 0, bpf_htonl(0xffff), 0};
	struct udphdr *uh;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		uh = (void *)(ip6 + 1);
		if ((void *)(uh + 1) > data_end || ip6->nexthdr != IPPROTO_UDP)
			return NULL;
		__builtin_memcpy(addr, &ip6->saddr, 16);
	} else if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		uh = (void *)(iph + 1);
		if ((void *)(uh + 1) > data_end || iph->ihl != 5 || iph->protocol != IPPROTO_UDP)
			return NULL;
		addr[3] = iph->saddr;
	} else {
		return NULL;
	}
	if (uh->dest != cfg->port || (void *)(uh + 1) + 2 > data_end)
		return NULL;
	__u8 *rp = (void *)(uh + 1);
	__u16 rid = ((__u16)rp[0] << 8) | rp[1];
	__u32 len = bpf_ntohs(uh->len);
	for (int i = 0; i < MC_HANDOVERS; i++) {
		struct mc_handover *h = &s->ho[i];
		if (h->cookie && h->ifindex == skb->ingress_ifindex && h->version == cfg->version &&
		    h->rid == rid && h->port == uh->source && h->len == len &&
		    h->addr[0] == addr[0] && h->addr[1] == addr[1] && h->addr[2] == addr[2] &&
		    h->addr[3] == addr[3])
			return h;
	}
	return NULL;
}

/* A reply written into the skb (hdrs bytes of headers): its UDP checksum, counted, captured
 * when a capture runs, and sent back out of the interface it came in on. */
static __always_inline int tc_send(struct __sk_buff *skb, struct mc_xscratch *s, __u32 hdrs,
				   __s64 sum, __s64 ph)
{
	udp_csum(skb, hdrs - 2, sum, ph);
	mc_count(MC_V_HIT);
	if (s->pkt.cap) /* the reply (xdp_main's exit had the request) */
		mc_capture_skb(skb, &s->pkt, MC_P_TC_INGRESS, MC_CAP_TX, TC_ACT_REDIRECT);
	return bpf_redirect(skb->ifindex, 0);
}

/* The common GET of the key in way idx (the hand-over's slot). */
static __always_inline int tc_answer(struct __sk_buff *skb, struct mc_xscratch *s,
				     struct mc_config *cfg, __u32 idx)
{
	if (!tc_request(skb, s, cfg))
		return TC_ACT_OK;
	__u32 hdrs = reply_hdrs(s);
	const __u32 ko = MC_UDP_FRAME_HDR + 4; /* after "get " */
	__u64 len = s->payload_len;
	if (len < sizeof(struct udphdr) + ko + 3 || len > sizeof(struct udphdr) + ko + MC_MAX_KEY + 2)
		return TC_ACT_OK;
	len -= sizeof(struct udphdr);
	if (!MC_SIZE_OK(len, MC_BUF) || bpf_skb_load_bytes(skb, hdrs, s->buf, len))
		return TC_ACT_OK;
	s->request_id = ((__u16)s->buf[0] << 8) | s->buf[1];
	if (s->buf[8] != 'g' || s->buf[9] != 'e' || s->buf[10] != 't' || s->buf[11] != ' ' ||
	    s->buf[(len - 2) & MC_BUF_MASK] != '\r' || s->buf[(len - 1) & MC_BUF_MASK] != '\n')
		return TC_ACT_OK;
	s->one_kl = len - ko - 2;
	__u32 kl = MC_LOAD(s->one_kl);
	if (kl == 0 || kl > MC_MAX_KEY)
		return TC_ACT_OK;
	__u32 hash = mc_hash(s->buf, ko, MC_LOAD(s->one_kl));
	__u32 base = mc_bucket(hash);
	if (idx < base || idx >= base + MC_WAYS)
		return TC_ACT_OK;
	struct mc_slot *slot = mc_cache.lookup(&idx);
	struct mc_judge j;
	if (!slot || !mc_judge_now(&j, cfg->ttl_ns))
		return TC_ACT_OK;
	kl = MC_LOAD(s->one_kl);
	if (kl == 0 || kl > MC_MAX_KEY)
		return TC_ACT_OK;
	s->one_tail = 0;
	/* Checked again under the lock, as at XDP: a write since then has invalidated it. */
	bpf_spin_lock(&slot->lock);
	if (slot->valid && slot->gen == j.gen && slot->hash == hash && slot->key_len == kl &&
	    mc_key_equal(slot->key, s->buf, ko, MC_LOAD(s->one_kl)) &&
	    !mc_entry_stale(slot, &j))
		s->one_tail = reply_tail(slot, s->out);
	bpf_spin_unlock(&slot->lock);
	mc_pkt_key(&s->pkt, s->buf, ko, MC_LOAD(s->one_kl));
	__u32 tail = MC_LOAD(s->one_tail);
	kl = MC_LOAD(s->one_kl);
	if (!tail || kl == 0 || kl > MC_MAX_KEY || tail > sizeof(s->out)) {
		mc_count(MC_V_MISS); /* changed since XDP looked: memcached answers */
		return TC_ACT_OK;
	}
	/* The reply's UDP payload in scratch: frame header, "VALUE ", the key, the rest. */
	__u8 *r = s->reply;
	__u64 w = MC_W6('V', 'A', 'L', 'U', 'E', ' ');
	*(__u64 *)r = frame_hdr(s->request_id);
	__builtin_memcpy(&r[8], &w, 6);
	for (__u32 j = 0; j < MC_KEY_BUF / 8; j++) {
		MC_OPAQUE(j);
		if (j * 8 >= MC_LOAD(s->one_kl))
			break;
		*(__u64 *)&r[mc_mask(14 + j * 8)] = *(__u64 *)&s->buf[mc_mask(ko + j * 8)];
	}
	kl = MC_LOAD(s->one_kl);
	tail = MC_LOAD(s->one_tail);
	for (__u32 j = 0; j < sizeof(s->out) / 8; j++) {
		MC_OPAQUE(j);
		if (j * 8 >= MC_LOAD(s->one_tail))
			break;
		*(__u64 *)&r[mc_mask(14 + MC_LOAD(s->one_kl) + j * 8)] = *(__u64 *)&s->out[j * 8];
	}
	__u32 body = 14 + MC_LOAD(s->one_kl) + MC_LOAD(s->one_tail);
	if (body > MC_BUF - 8)
		return TC_ACT_OK;
	*(__u32 *)&r[mc_mask(body)] = 0; /* the checksum's padding */
	hdrs = reply_hdrs(s);
	if (hdrs - sizeof(struct ethhdr) + body > 1500) {
		mc_count(MC_V_TOO_BIG);
		return TC_ACT_OK;
	}
	__s64 sum = udp_data_sum(s, r, body);
	__s64 ph = s->ipv6 ? pseudo6_sum(s, body) : pseudo4_sum(s, body);
	if (s->ipv6 && !udp_check(sum, ph)) {
		/* An IPv6 UDP checksum may not be 0 (the kernel's fold would write 0 where 0xffff
		 * is meant): that one reply in 65,536 is memcached's to send. */
		mc_count(MC_V_MISS);
		return TC_ACT_OK;
	}
	if (bpf_skb_change_tail(skb, hdrs + body, 0)) {
		mc_count(MC_V_TOO_BIG);
		return TC_ACT_OK;
	}
	__u64 n = body;
	if (!MC_SIZE_OK(n, MC_BUF - 8))
		return TC_ACT_SHOT;
	if (store_l2l4(skb, 1, s, body) || bpf_skb_store_bytes(skb, hdrs, r, n, 0))
		return TC_ACT_SHOT; /* the frame is already changed: never send half a reply */
	if (hash == cfg->probe_hash)
		mc_count(MC_V_PROBE_HIT);
	return tc_send(skb, s, hdrs, sum, ph);
}

/*
 * Any other hit whose reply XDP's frame could not hold (a multi-get, a binary GET, an mg):
 * xdp_reply left the whole reply in the scratch (to_tc_scratch). Used only on the CPU that
 * left it and before any other frame's XDP run (the cookie); else memcached answers. The
 * reply is written into the skb as xdp_reply writes it into a frame, then summed from the
 * skb for its UDP checksum.
 */
static __always_inline int from_scratch(struct __sk_buff *skb, struct mc_xscratch *s,
					__u32 handed)
{
	__u32 cookie = s->handover;
	s->handover = 0;
	if (!cookie || handed != cookie) {
		mc_count(MC_V_MISS); /* the scratch holds another frame's state now */
		return TC_ACT_OK;
	}
	__u32 body = s->reply_body;
	__u32 hdrs = reply_hdrs(s);
	__u64 n = body;
	if (hdrs - sizeof(struct ethhdr) + body > 1500 || !MC_SIZE_OK(n, MC_BUF - 8))
		return TC_ACT_OK;
	if (bpf_skb_change_tail(skb, hdrs + body, 0)) {
		mc_count(MC_V_TOO_BIG);
		return TC_ACT_OK;
	}
	if (store_l2l4(skb, 1, s, body) || reply_payload(skb, 1, s, hdrs) ||
	    bpf_skb_load_bytes(skb, hdrs, s->reply, n))
		return TC_ACT_SHOT; /* the frame is already changed: never send half a reply */
	*(__u32 *)&s->reply[mc_mask(n)] = 0; /* the sum's padding */
	__s64 sum = udp_data_sum(s, s->reply, body);
	__s64 ph = s->ipv6 ? pseudo6_sum(s, body) : pseudo4_sum(s, body);
	/* A checksum of 0 (see tc_answer), known only now that the reply is written: the
	 * client's retry, with another request id, is answered. */
	if (s->ipv6 && !udp_check(sum, ph))
		return TC_ACT_SHOT;
	return tc_send(skb, s, hdrs, sum, ph);
}

int tc_ingress(struct __sk_buff *skb)
{
	struct mc_config *cfg = mc_config();
	struct mc_xscratch *s = scratch();
	if (!cfg || !s)
		return TC_ACT_OK;
	mc_pkt_begin(&s->pkt, cfg, MC_P_TC_INGRESS);
	struct mc_handover *h = handed_over(skb, s, cfg);
	if (!h)
		return TC_ACT_OK; /* not handed over by XDP */
	__u32 slot = h->slot, cookie = h->cookie;
	h->cookie = 0;
	if (slot == MC_META_FROM_SCRATCH)
		return from_scratch(skb, s, cookie);
	return tc_answer(skb, s, cfg, slot);
}
