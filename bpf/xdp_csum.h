/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Replies and checksums: the reply's Ethernet/IP/UDP headers for either family, UDP and IPv4
 * checksums, growing the frame, and the hand-over of a hit to TC ingress when the frame
 * cannot hold its reply.
 *
 * Needs from its includer: xdp_scratch.h; put() writes through bpf_xdp_store_bytes or
 * bpf_skb_store_bytes, so TC ingress (tc_ingress.c) builds its replies with the same code.
 */
#ifndef MC_XDP_CSUM_H
#define MC_XDP_CSUM_H

/* ------------------------------------------------------------------ */
/* Replies: room in the frame, checksums.                             */
/* ------------------------------------------------------------------ */

struct mc_l2l4 {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
} __attribute__((packed));

struct mc_l2l4_6 {
	struct ethhdr eth;
	struct ipv6hdr ip6;
	struct udphdr udp;
} __attribute__((packed));

/* Bytes of the reply's Ethernet, IP and UDP headers (42 or 62). Re-read from the scratch and
 * masked rather than chosen by a branch: the verifier would otherwise walk everything after
 * it once per family. */
static __always_inline __u32 reply_hdrs(struct mc_xscratch *s)
{
	return MC_LOAD(s->hdr_len) & 63;
}

#define MC_CSUM_CHUNK 512 /* bpf_csum_diff's limit */

/* The one's complement sum of len bytes of buf (zero-padded to a multiple of 4). */
static __always_inline __s64 csum_of(__u8 *buf, __u32 len, __s64 seed)
{
	for (__u32 i = 0; i < MC_BUF / MC_CSUM_CHUNK; i++) {
		__u32 at = i * MC_CSUM_CHUNK;
		if (at >= len)
			break;
		__u64 n = len - at < MC_CSUM_CHUNK ? len - at : MC_CSUM_CHUNK;
		n = (n + 3) & ~3ULL;
		if (!MC_SIZE_OK(n, MC_CSUM_CHUNK))
			break;
		seed = bpf_csum_diff(NULL, 0, (__be32 *)(buf + (at & MC_BUF_MASK)), n, seed);
	}
	return seed;
}

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 x = (__u32)sum;
	x = (x & 0xffff) + (x >> 16);
	x = (x & 0xffff) + (x >> 16);
	return (__u16)x;
}

/* The sum of the IPv6 pseudo header of a reply with len bytes of UDP payload, server to
 * client (the addresses in scratch). */
static __always_inline __s64 pseudo6_sum(struct mc_xscratch *s, __u32 len)
{
	__be32 ph[10];
	__builtin_memcpy(&ph[0], s->ck.daddr, 16);
	__builtin_memcpy(&ph[4], s->ck.saddr, 16);
	ph[8] = bpf_htonl(sizeof(struct udphdr) + len);
	ph[9] = bpf_htonl(IPPROTO_UDP);
	return bpf_csum_diff(NULL, 0, ph, sizeof(ph), 0);
}

/* The sum of the reply's UDP header (its checksum field 0) and of its payload (len bytes in
 * buf, zero-padded to a multiple of 4). */
static __always_inline __s64 udp_data_sum(struct mc_xscratch *s, __u8 *buf, __u32 len)
{
	struct udphdr uh = {
		.source = s->server_port,
		.dest = s->client_port,
		.len = bpf_htons(sizeof(struct udphdr) + len),
	};
	return csum_of(buf, len, bpf_csum_diff(NULL, 0, (__be32 *)&uh, sizeof(uh), 0));
}

/* The UDP checksum from the sum of the header and payload and the pseudo header's sum, as
 * the kernel's fold computes it (0 is possible: see udp6_check and tc_ingress). */
static __always_inline __u16 udp_check(__s64 sum, __s64 ph)
{
	__u64 t = (__u64)(__u32)sum + (__u32)ph;
	return ~csum_fold((t & 0xffffffff) + (t >> 32));
}

/* An IPv6 reply's UDP checksum (mandatory over IPv6; 0 is sent as 0xffff, RFC 8200). */
static __always_inline __u16 udp6_check(struct mc_xscratch *s, __u8 *buf, __u32 len)
{
	__u16 c = udp_check(udp_data_sum(s, buf, len), pseudo6_sum(s, len));
	return c ? c : 0xffff;
}

static __always_inline __u16 ip_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < sizeof(*ip) / 2; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Ethernet, IPv4 and UDP of a reply to the request in scratch, with a UDP payload of body
 * bytes: back to where it came from, DF set as on memcached's replies, no UDP checksum
 * (optional for IPv4). */
static __always_inline void reply_l2l4(struct mc_l2l4 *h, struct mc_xscratch *s, __u32 body)
{
	__builtin_memcpy(h->eth.h_dest, s->client_mac, 6);
	__builtin_memcpy(h->eth.h_source, s->server_mac, 6);
	h->eth.h_proto = bpf_htons(ETH_P_IP);
	h->ip.version = 4;
	h->ip.ihl = 5;
	h->ip.ttl = 64;
	h->ip.protocol = IPPROTO_UDP;
	h->ip.saddr = s->server_addr;
	h->ip.daddr = s->client_addr;
	h->ip.tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct udphdr) + body);
	h->ip.frag_off = bpf_htons(0x4000);
	h->ip.check = ip_csum(&h->ip);
	h->udp.source = s->server_port;
	h->udp.dest = s->client_port;
	h->udp.len = bpf_htons(sizeof(struct udphdr) + body);
}

/* The same over IPv6: hop limit 64 as memcached's replies, the checksum left 0 (the payload
 * is summed once it is written: reply6_csum, or tc_ingress's). */
static __always_inline void reply_l2l4_6(struct mc_l2l4_6 *h, struct mc_xscratch *s, __u32 body)
{
	__builtin_memcpy(h->eth.h_dest, s->client_mac, 6);
	__builtin_memcpy(h->eth.h_source, s->server_mac, 6);
	h->eth.h_proto = bpf_htons(ETH_P_IPV6);
	h->ip6.version = 6;
	h->ip6.payload_len = bpf_htons(sizeof(struct udphdr) + body);
	h->ip6.nexthdr = IPPROTO_UDP;
	h->ip6.hop_limit = 64;
	__builtin_memcpy(&h->ip6.saddr, s->ck.daddr, 16);
	__builtin_memcpy(&h->ip6.daddr, s->ck.saddr, 16);
	h->udp.source = s->server_port;
	h->udp.dest = s->client_port;
	h->udp.len = bpf_htons(sizeof(struct udphdr) + body);
}

/* A store into the reply at off: XDP's frame, or (skb, a constant once inlined) the skb. */
static __always_inline int put(void *ctx, int skb, __u32 off, const void *from, __u32 len)
{
	if (skb)
		return bpf_skb_store_bytes(ctx, off, (void *)from, len, 0);
	return bpf_xdp_store_bytes(ctx, off, (void *)from, len);
}

/* The reply's Ethernet, IP and UDP headers into s->hdr, for either family; the rest of the
 * buffer zeroed. */
static __always_inline void build_l2l4(struct mc_xscratch *s, __u32 body)
{
	for (int i = 0; i < sizeof(s->hdr) / 8; i++)
		((__u64 *)s->hdr)[i] = 0;
	if (s->ipv6)
		reply_l2l4_6((struct mc_l2l4_6 *)s->hdr, s, body);
	else
		reply_l2l4((struct mc_l2l4 *)s->hdr, s, body);
}

/* Ethernet, IP and UDP headers of the reply at the frame's start, for either family. */
static __always_inline int store_l2l4(void *ctx, int skb, struct mc_xscratch *s, __u32 body)
{
	build_l2l4(s, body);
	__u32 n = reply_hdrs(s);
	return n ? put(ctx, skb, 0, s->hdr, n) : -1;
}

/* An IPv6 reply, written: its UDP payload (body bytes) read back and summed. 0 on failure. */
static __always_inline int reply6_csum(struct xdp_md *ctx, struct mc_xscratch *s, __u32 body)
{
	__u64 n = body;
	if (!MC_SIZE_OK(n, MC_BUF - 8) ||
	    bpf_xdp_load_bytes(ctx, sizeof(struct mc_l2l4_6), s->reply, n))
		return 0;
	*(__u32 *)&s->reply[mc_mask(n)] = 0; /* the sum's padding */
	__u16 c = udp6_check(s, s->reply, body);
	return bpf_xdp_store_bytes(ctx, sizeof(struct mc_l2l4_6) - 2, &c, 2) == 0;
}

/*
 * Grow (or shrink) the frame by delta bytes. The whole reply is rewritten from offset 0, so
 * where the room comes from does not matter: the head first (256 bytes of headroom are
 * guaranteed), then the tail, then both.
 */
static __always_inline int resize(struct xdp_md *ctx, int delta)
{
	if (delta <= 0)
		return bpf_xdp_adjust_head(ctx, -delta) == 0;
	if (bpf_xdp_adjust_head(ctx, -delta) == 0)
		return 1;
	if (bpf_xdp_adjust_tail(ctx, delta) == 0)
		return 1;
	int head = 192;
	if (delta <= head || bpf_xdp_adjust_head(ctx, -head))
		return 0;
	if (bpf_xdp_adjust_tail(ctx, delta - head) == 0)
		return 1;
	bpf_xdp_adjust_head(ctx, head); /* undo: the frame must go on unchanged */
	return 0;
}

/*
 * A single-key reply that did not fit: later GETs of the key pass at lookup, without copying
 * the value and failing to grow the frame each time. The room a frame has is a property of
 * the interface and its driver (generic mode: 256 bytes of headroom and the skb's tailroom),
 * so what did not fit once will not fit next time. A fill of the slot clears the mark.
 */
static __always_inline void mark_unservable(__u32 idx, __u16 kl, __u16 vl)
{
	struct mc_slot *slot = mc_cache.lookup(&idx);
	if (!slot)
		return;
	bpf_spin_lock(&slot->lock);
	if (slot->key_len == kl && slot->val_len == vl)
		slot->unservable = 1; /* another key's slot by now: it is only passed, never wrong */
	bpf_spin_unlock(&slot->lock);
}

/*
 * A hit whose reply the frame cannot hold: passed on with the way that holds it (slot), or
 * MC_META_FROM_SCRATCH and the scratch's cookie, for tc_ingress to answer from the skb. The
 * hand-over is kept in this CPU's scratch, named by the frame it is for: not in the frame's
 * metadata, which some kernels refuse XDP programs (bpf_xdp_adjust_meta). tc_ingress runs on
 * the CPU that ran XDP for the frame (generic XDP: in the same receive).
 */
static __always_inline void to_tc(struct xdp_md *ctx, struct mc_xscratch *s, __u32 slot,
				  __u32 cookie)
{
	struct mc_handover *h = &s->ho[s->ho_next++ & (MC_HANDOVERS - 1)];
	h->cookie = cookie ? cookie : 1;
	h->slot = slot;
	h->ifindex = ctx->ingress_ifindex;
	h->version = s->pkt.version; /* the config that decided, read at the entry */
	h->len = s->payload_len + sizeof(struct udphdr);
	__builtin_memcpy(h->addr, s->ck.saddr, 16);
	h->port = s->client_port;
	h->rid = s->request_id;
	mc_count(MC_V_TO_TC);
}

#endif /* MC_XDP_CSUM_H */
