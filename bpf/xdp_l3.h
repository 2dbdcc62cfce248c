/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Packet parsing: IPv4 and IPv6 (its extension headers walked) down to TCP or UDP to
 * memcached's port. A TCP segment goes on to tcp_segment; a UDP datagram comes back as
 * MC_UDP_REQUEST, its addresses, ports and payload in the scratch.
 *
 * Needs from its includer: xdp_scratch.h, xdp_policy.h (guarded), xdp_stream.h.
 */
#ifndef MC_XDP_L3_H
#define MC_XDP_L3_H

/* The TCP or UDP header could not be read: a first fragment too short for it would hide its
 * port from us (RFC 1858's tiny fragments) and is dropped; any other such frame is not ours. */
static __always_inline int l4_unread(int first_fragment)
{
	if (!first_fragment)
		return XDP_PASS;
	mc_count(MC_V_HIDDEN);
	return XDP_DROP;
}

/* IPv6 extension headers that may come before TCP or UDP. */
#define MC_NH_HOP 0
#define MC_NH_ROUTING 43
#define MC_NH_FRAGMENT 44
#define MC_NH_DEST 60

#define MC_UDP_REQUEST 0x7fff /* an L3/L4 step's result: a UDP datagram to memcached's port */

/*
 * IPv6: every write to memcached's port, on any address, goes to the write scanner as over
 * IPv4 (a memcached that listens on an IPv6 address too, Debian's default ::1 for one, must
 * not take writes the cache never hears of). Extension headers are walked, up to
 * MC_MAX_EXT_HDRS; what may hold a write that cannot be read (a fragment, a longer chain)
 * empties the cache. A UDP datagram goes on to udp_request (GETs are answered when it has no
 * extension headers and memcached.address serves IPv6 at its destination).
 */
static __always_inline int ipv6_l3(struct xdp_md *ctx, struct mc_xscratch *s,
				   struct mc_config *cfg, struct ethhdr *eth)
{
	struct ipv6hdr ip6;
	__u32 off = sizeof(struct ethhdr);
	if (bpf_xdp_load_bytes(ctx, off, &ip6, sizeof(ip6)))
		return XDP_PASS; /* shorter than an IPv6 header: not ours */
	if (ip6.version != 6) {
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	__u32 end = off + sizeof(ip6) + bpf_ntohs(ip6.payload_len);
	if (end > (__u32)((long)ctx->data_end - (long)ctx->data)) {
		/* Shorter than its header says: the kernel drops it, memcached never sees it
		 * (the frame is whole here: the programs take no multi-buffer frames). */
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	__u8 nh = ip6.nexthdr;
	off += sizeof(ip6);
	int fragment = 0;
	for (int i = 0; i < MC_MAX_EXT_HDRS; i++) {
		if (nh == IPPROTO_TCP || nh == IPPROTO_UDP)
			break;
		__u8 h[8];
		if (nh == MC_NH_HOP || nh == MC_NH_ROUTING || nh == MC_NH_DEST) {
			if (bpf_xdp_load_bytes(ctx, off & 0xffff, h, 2))
				return XDP_PASS;
			nh = h[0];
			off += (h[1] + 1) * 8;
		} else if (nh == MC_NH_FRAGMENT) {
			if (bpf_xdp_load_bytes(ctx, off & 0xffff, h, 8))
				return XDP_PASS;
			nh = h[0];
			off += 8;
			if (((h[2] << 8 | h[3]) & 0xfff8) != 0) {
				/* A later fragment: the kernel cannot reassemble it without its
				 * first, whose ports were looked at here (overlaps are refused). */
				mc_count(MC_V_PASS);
				return XDP_PASS;
			}
			fragment = 1; /* the first fragment: its port is known */
		} else {
			mc_count(MC_V_PASS); /* ICMPv6, no next header, ESP, ...: not memcached's */
			return XDP_PASS;
		}
	}
	if (nh != IPPROTO_TCP && nh != IPPROTO_UDP) {
		/* A chain longer than we walk may hide a write: no host sends one (RFC 9098). */
		mc_count(MC_V_HIDDEN);
		return XDP_DROP;
	}
	if (off > end || off > 0xffff) {
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	s->ipv6 = 1;
	__builtin_memcpy(s->ck.saddr, &ip6.saddr, 16);
	__builtin_memcpy(s->ck.daddr, &ip6.daddr, 16);
	if (nh == IPPROTO_TCP) {
		struct tcphdr th;
		if (bpf_xdp_load_bytes(ctx, off, &th, sizeof(th)))
			return l4_unread(fragment);
		if (th.dest != cfg->port) {
			mc_count(MC_V_PASS);
			return XDP_PASS;
		}
		__u32 doff = th.doff * 4;
		if (doff < sizeof(th) || off + doff > end) {
			mc_count(MC_V_MALFORMED);
			return XDP_PASS;
		}
		if (fragment) { /* no TCP stack fragments a segment: its rest goes unread */
			mc_count(MC_V_HIDDEN);
			return XDP_DROP;
		}
		s->tcp = 1;
		s->seq = bpf_ntohl(th.seq);
		s->payload_off = off + doff;
		s->payload_len = end - off - doff;
		s->ck.sport = th.source;
		s->ck.dport = th.dest;
		return tcp_segment(ctx, s, &th, &ip6, sizeof(ip6));
	}
	struct udphdr uh;
	if (bpf_xdp_load_bytes(ctx, off, &uh, sizeof(uh)))
		return l4_unread(fragment);
	if (uh.dest != cfg->port) {
		mc_count(MC_V_PASS);
		return XDP_PASS;
	}
	if (guarded(cfg, s))
		return XDP_DROP;
	if (fragment) { /* the head of a fragmented datagram: a write may be in it */
		mc_fallback_flush(MC_FR_UDP_FRAGMENT);
		return XDP_PASS;
	}
	__u32 ulen = bpf_ntohs(uh.len);
	if (ulen < sizeof(uh) + MC_UDP_FRAME_HDR + 1 || off + ulen > end) {
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	s->tcp = 0;
	s->payload_off = off + sizeof(uh);
	s->payload_len = ulen - sizeof(uh);
	s->client_port = uh.source;
	s->server_port = uh.dest;
	__builtin_memcpy(s->client_mac, eth->h_source, 6);
	__builtin_memcpy(s->server_mac, eth->h_dest, 6);
	/* Sent to an Ethernet group address (a broadcast or multicast): never ours to answer. */
	s->plain = off == sizeof(struct ethhdr) + sizeof(ip6) && !(eth->h_dest[0] & 1);
	s->hdr_len = sizeof(struct mc_l2l4_6);
	/* A link-local or multicast destination is never answered (the config cannot name one
	 * either; with :: it would be any). */
	s->served = (cfg->families & MC_FAMILY_IPV6) && mc_server6(cfg, s->ck.daddr) &&
		    ip6.daddr.in6_u.u6_addr8[0] != 0xff &&
		    (bpf_ntohs(ip6.daddr.in6_u.u6_addr16[0]) & 0xffc0) != 0xfe80;
	return MC_UDP_REQUEST;
}

/* IPv4: as IPv6, for IPv4 headers (read in place). */
static __always_inline int ipv4_l3(struct xdp_md *ctx, struct mc_xscratch *s,
				   struct mc_config *cfg, struct ethhdr *eth)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return XDP_PASS;
	if (cfg->server_addr && iph->daddr != cfg->server_addr) {
		mc_count(MC_V_PASS);
		return XDP_PASS;
	}
	__u32 ihl = iph->ihl * 4;
	if (iph->version != 4 || ihl < sizeof(*iph)) {
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP) {
		mc_count(MC_V_PASS);
		return XDP_PASS;
	}
	__u16 frag = bpf_ntohs(iph->frag_off);
	if (frag & 0x1fff) {
		/* A later fragment: the kernel cannot reassemble it without its first, whose
		 * ports were looked at here (overlapping fragments are refused). */
		mc_count(MC_V_PASS);
		return XDP_PASS;
	}
	void *l4 = (void *)iph + ihl;
	__u32 tot = bpf_ntohs(iph->tot_len);
	if (tot < ihl || (void *)iph + tot > data_end) {
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	s->ipv6 = 0;
	s->client_addr = iph->saddr;
	s->server_addr = iph->daddr;
	s->ck.saddr[0] = s->ck.saddr[1] = s->ck.daddr[0] = s->ck.daddr[1] = 0;
	s->ck.saddr[2] = s->ck.daddr[2] = bpf_htonl(0xffff); /* ::ffff:a.b.c.d */
	s->ck.saddr[3] = iph->saddr;
	s->ck.daddr[3] = iph->daddr;

	if (iph->protocol == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return l4_unread(frag & 0x2000);
		if (th->dest != cfg->port) {
			mc_count(MC_V_PASS);
			return XDP_PASS;
		}
		__u32 doff = th->doff * 4;
		if (doff < sizeof(*th) || ihl + doff > tot) {
			mc_count(MC_V_MALFORMED);
			return XDP_PASS;
		}
		if (frag & 0x2000) { /* no TCP stack fragments a segment: its rest goes unread */
			mc_count(MC_V_HIDDEN);
			return XDP_DROP;
		}
		s->tcp = 1;
		s->seq = bpf_ntohl(th->seq);
		s->payload_off = sizeof(*eth) + ihl + doff;
		s->payload_len = tot - ihl - doff;
		s->ck.sport = th->source;
		s->ck.dport = th->dest;
		return tcp_segment(ctx, s, th, iph, sizeof(*iph));
	}

	struct udphdr *uh = l4;
	if ((void *)(uh + 1) > data_end)
		return l4_unread(frag & 0x2000);
	if (uh->dest != cfg->port) {
		mc_count(MC_V_PASS);
		return XDP_PASS;
	}
	if (guarded(cfg, s))
		return XDP_DROP;
	__u32 ulen = bpf_ntohs(uh->len);
	if (frag & 0x2000) {
		/* The head of a fragmented datagram: a write may be in it. */
		mc_fallback_flush(MC_FR_UDP_FRAGMENT);
		return XDP_PASS;
	}
	if (ulen < sizeof(*uh) + MC_UDP_FRAME_HDR + 1 || ihl + ulen > tot) {
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	s->tcp = 0;
	s->payload_off = sizeof(*eth) + ihl + sizeof(*uh);
	s->payload_len = ulen - sizeof(*uh);
	s->client_port = uh->source;
	s->server_port = uh->dest;
	__builtin_memcpy(s->client_mac, eth->h_source, 6);
	__builtin_memcpy(s->server_mac, eth->h_dest, 6);
	/* Replies are built for plain IPv4 headers only, and never to a frame sent to an
	 * Ethernet group address (a broadcast or multicast: with a wildcard address, memcached
	 * would answer from its unicast address). */
	s->plain = ihl == sizeof(*iph) && !(eth->h_dest[0] & 1);
	s->hdr_len = sizeof(struct mc_l2l4);
	/* Nor to an IP multicast or the limited broadcast address (a unicast frame may carry
	 * one): memcached, bound to a wildcard address, joins no group and takes none. */
	__u32 dst = bpf_ntohl(iph->daddr);
	s->served = (cfg->families & MC_FAMILY_IPV4) && (dst >> 28) != 0xe && dst != 0xffffffff;
	return MC_UDP_REQUEST;
}

#endif /* MC_XDP_L3_H */
