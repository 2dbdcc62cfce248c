/* SPDX-License-Identifier: GPL-2.0 */
/*
 * XDP ingress: answer memcached UDP GET hits from the cache (XDP_TX) and
 * invalidate every key a command changes (UDP and TCP, ASCII and binary).
 *
 * Programs of one set, chained by tail calls through the set's own prog
 * array (mc_xdp_jmp):
 *   xdp_main     parse L2-L4, classify, copy the payload window to scratch;
 *                answers the common GET ("get <key>\r\n", one key) itself
 *   xdp_get_parse  tokenize any other ASCII get (multi-get, odd spacing)
 *   xdp_get_key  look up one key of a GET (once per key)
 *   xdp_reply    write the reply into the packet and XDP_TX it
 *   xdp_scan     parse one command of a write stream, invalidate its key(s)
 * Anything not understood is passed to memcached untouched.
 */
#include "mcache_socket.h"

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "mcache_parse.h"
#include "mcache_verdict.h"

#define TAIL_GET_KEY MC_TAIL_GET_KEY
#define TAIL_REPLY MC_TAIL_REPLY
#define TAIL_SCAN MC_TAIL_SCAN
#define TAIL_GET_PARSE MC_TAIL_GET_PARSE
#define TAIL_CAPTURE MC_TAIL_CAPTURE

#define MC_MAX_SCAN_STEPS 30 /* tail calls are capped at 33 per packet */
#define MC_SLOW (-1)         /* not the common form: the general parser decides */

BPF_PROG_ARRAY(mc_xdp_jmp, 5);

struct mc_hit {
	__u16 key_off; /* in scratch buf */
	__u16 key_len;
	__u16 val_len;
	__u8 flags_str_len;
	__u8 len_str_len;
	__u32 flags;
	__u32 slot_idx; /* where the value came from */
	__u64 cas;
	__u8 flags_str[16];
	__u8 len_str[16];
	__u8 val[MC_VAL_BUF];
};

/*
 * A hit handed to tc_ingress (see to_tc): the frame it is for, by its client, request id and
 * length, and the config version that decided.
 */
#define MC_HANDOVERS 8 /* a batch of frames runs XDP before any of them reaches TC */
struct mc_handover {
	__u32 cookie;  /* 0: free; for MC_META_FROM_SCRATCH, the scratch's cookie */
	__u32 slot;    /* the way that holds the key, or MC_META_FROM_SCRATCH */
	__u32 ifindex;
	__u32 version;
	__u32 len;     /* the datagram's UDP length */
	__u32 addr[4]; /* the client, IPv4 as ::ffff:a.b.c.d */
	__u16 port;    /* the client's, network order */
	__u16 rid;     /* the request id */
};

struct mc_xscratch {
	__u8 buf[MC_BUF + MC_BUF_PAD];
	/* where the L4 payload is, and what the packet was */
	__u32 payload_off;
	__u32 payload_len;
	__u32 tcp;
	__u32 seq;
	/* The client's and the server's addresses (IPv4 ones as ::ffff:a.b.c.d): the TCP stream
	 * key, a GET's client identity, an IPv6 reply's addresses. */
	struct mc_conn_key ck;
	__u32 ipv6;
	__u32 hdr_len; /* a reply's Ethernet, IP and UDP headers: 42 (IPv4) or 62 bytes (IPv6) */
	__u32 plain;  /* headers a reply can be built for: IPv4 without options, IPv6 without
		       * extension headers */
	__u32 served; /* memcached answers GETs at this address: the cache may (config) */
	__u32 client_addr; /* IPv4 */
	__u32 server_addr;
	__u16 client_port;
	__u16 server_port;
	__u8 client_mac[6];
	__u8 server_mac[6];
	__u16 request_id;
	__u16 pad0;
	/* write scanner */
	__u32 pos;
	__u32 steps;
	__u32 skipping; /* inside a line longer than the window */
	__u32 carry_len; /* TCP: a cut line's bytes read before this segment's (mc_carry) */
	struct mc_conn conn; /* TCP: the connection's state as the segment found it */
	/* GET */
	__u32 binary;
	__u32 opcode;
	__u32 opaque;
	__u32 nkeys;
	__u32 done;
	/* mg (meta get): v asked for, the return flags in request order, the O token */
	__u32 meta;
	__u32 meta_v;
	__u32 meta_n;
	__u8 meta_flag[MC_META_RET];
	__u16 meta_o_off;
	__u16 meta_o_len;
	struct mc_tokens tok;
	struct mc_pending pend;
	struct mc_hit hits[MC_MAX_MULTIGET];
	/* The common GET (get_one): its key length and reply tail length, parked here and
	 * re-read after every loop (MC_LOAD). */
	__u32 one_kl;
	__u32 one_tail;
	__u32 reply_body; /* xdp_reply: the reply's UDP payload bytes */
	__u32 handover;     /* to_tc_scratch's cookie while the scratch holds a reply for TC */
	__u32 handover_seq;
	__u32 ho_next;      /* the next entry of ho to write */
	struct mc_handover ho[MC_HANDOVERS];
	/* The common GET's reply after its key: " <flags> <bytes>\r\n<value>\r\nEND\r\n". */
	__u8 out[32 + MC_VAL_BUF + 16];
	/* A reply's headers, built here (one store of either family's): L2-L4, then for the
	 * common GET the frame header and "VALUE ". */
	__u8 hdr[80];
	/* tc_ingress: the reply's UDP payload (read MC_BUF_PAD past a masked offset). */
	__u8 reply[MC_BUF + MC_BUF_PAD];
	/* Its verdicts, counters and capture record (mcache_verdict.h). */
	struct mc_pkt pkt;
};

BPF_PERCPU_ARRAY(mc_xscratch, struct mc_xscratch, 1);

static __always_inline struct mc_xscratch *scratch(void)
{
	u32 zero = 0;
	return mc_xscratch.lookup(&zero);
}

static __always_inline void mc_count(__u32 verdict)
{
	struct mc_xscratch *s = scratch();
	if (s)
		mc_pkt_count(&s->pkt, verdict);
}


/* Every program's exit: the action, and the frame to xdp_capture when a capture runs (if
 * the tail call fails, at the limit of 33, the frame is simply not captured). */
static __always_inline int finish(struct xdp_md *ctx, struct mc_xscratch *s, __u32 path,
				  int action)
{
	if (s->pkt.cap) {
		s->pkt.exit_path = path;
		s->pkt.action = action;
		mc_xdp_jmp.call(ctx, TAIL_CAPTURE);
	}
	return action;
}

static __always_inline int reply6_csum(struct xdp_md *ctx, struct mc_xscratch *s, __u32 body);

/*
 * A program's action, an IPv6 reply's UDP checksum summed first (its payload, s->reply_body
 * bytes, is written by then). Done here, once per program, rather than at each of the reply
 * builders' ends: reached from each of their paths, the sum's loop was verified once per path.
 */
static __always_inline int answered(struct xdp_md *ctx, struct mc_xscratch *s, int action)
{
	if (action == XDP_TX && s->ipv6 && !reply6_csum(ctx, s, MC_LOAD(s->reply_body)))
		return XDP_DROP; /* the packet is already changed: never send half a reply */
	return action;
}

/* A hit's request, before the reply is written over it (a capture sees both). */
static __always_inline void capture_hit_request(struct xdp_md *ctx, struct mc_xscratch *s,
						__u32 path, int probe)
{
	if (!s->pkt.cap)
		return;
	__u32 seen = s->pkt.seen;
	s->pkt.seen |= 1U << MC_V_HIT | (probe ? 1U << MC_V_PROBE_HIT : 0);
	mc_capture_xdp(ctx, &s->pkt, path, MC_CAP_IN, XDP_TX);
	s->pkt.seen = seen;
}

/* The client of the request in scratch may read from the cache (cache.allowed_clients). */
static __always_inline int client_allowed(struct mc_config *cfg, struct mc_xscratch *s)
{
	if (s->ipv6) {
		const __u32 *a = s->ck.saddr;
		for (int i = 0; i < MC_MAX_ALLOWED; i++) {
			MC_OPAQUE(i);
			if (i >= cfg->n_allowed6)
				break;
			struct mc_cidr6 *n = &cfg->allowed6[i];
			if ((a[0] & n->mask[0]) == n->addr[0] && (a[1] & n->mask[1]) == n->addr[1] &&
			    (a[2] & n->mask[2]) == n->addr[2] && (a[3] & n->mask[3]) == n->addr[3])
				return 1;
		}
		return 0;
	}
	__u32 addr = s->client_addr;
	for (int i = 0; i < MC_MAX_ALLOWED; i++) {
		MC_OPAQUE(i);
		if (i >= cfg->n_allowed)
			break;
		if ((addr & cfg->allowed[i].mask) == cfg->allowed[i].addr)
			return 1;
	}
	return 0;
}

/*
 * The amplification guard (cache.amplification_guard): memcached's UDP port answers no
 * source outside the allow-list. memcached answers any source, a forged one included, with
 * replies many times a request's size (CVE-2018-1000115); such datagrams never reach it.
 */
static __always_inline int guarded(struct mc_config *cfg, struct mc_xscratch *s)
{
	if (!cfg->guard || client_allowed(cfg, s))
		return 0;
	mc_count(MC_V_GUARDED);
	return 1;
}

static __always_inline int serves_on(struct mc_config *cfg, __u32 ifindex)
{
	for (int i = 0; i < MC_MAX_SERVE_IFS; i++) {
		MC_OPAQUE(i);
		if (cfg->serve_ifindex[i] == 0)
			break;
		if (cfg->serve_ifindex[i] == ifindex)
			return 1;
	}
	return 0;
}

static __always_inline int key_cacheable(struct mc_config *cfg, const __u8 *buf, __u32 off,
					 __u32 len)
{
	if (len == 0 || len > MC_MAX_KEY)
		return 0;
	if (cfg->prefix_len > len || cfg->prefix_len > MC_MAX_PREFIX)
		return 0;
	for (__u32 i = 0; i < MC_MAX_PREFIX; i++) {
		MC_OPAQUE(i);
		if (i >= cfg->prefix_len)
			break;
		if (MC_AT(buf, off + i) != cfg->prefix[i])
			return 0;
	}
	return 1;
}

/* Writes are named for a capture by their key. */
static __always_inline void mc_note_key(const __u8 *buf, __u32 off, __u32 len)
{
	struct mc_xscratch *s = scratch();
	if (s)
		mc_pkt_key(&s->pkt, buf, off, len);
}

#include "mcache_write.h"

/* A miss: remember when the GET came (and, for binary GET, its key) for the fill guard. */
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
	p->opaque = s->opaque;
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
static __always_inline int to_tc(struct xdp_md *ctx, struct mc_xscratch *s, __u32 slot,
				 __u32 cookie)
{
	struct mc_config *cfg = mc_config();
	if (!cfg)
		return 0;
	struct mc_handover *h = &s->ho[s->ho_next++ & (MC_HANDOVERS - 1)];
	h->cookie = cookie ? cookie : 1;
	h->slot = slot;
	h->ifindex = ctx->ingress_ifindex;
	h->version = cfg->version;
	h->len = s->payload_len + sizeof(struct udphdr);
	__builtin_memcpy(h->addr, s->ck.saddr, 16);
	h->port = s->client_port;
	h->rid = s->request_id;
	mc_count(MC_V_TO_TC);
	return 1;
}

/* ------------------------------------------------------------------ */
/* The common GET: one key, answered without tail calls.              */
/* ------------------------------------------------------------------ */

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
	if (fl < 1 || fl > 10 || ll < 1 || ll > 10 || vl > MC_VAL_BUF)
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
	int way = mc_locate(hash, &idx);
	if (way == MC_NO_CACHE)
		return XDP_PASS;
	struct mc_slot *slot = mc_cache.lookup(&idx);
	u32 zero = 0;
	struct mc_state *st = mc_state.lookup(&zero);
	if (!slot || !st)
		return XDP_PASS;
	__u64 now = bpf_ktime_get_ns();
	__u64 gen = st->gen;
	__u64 flush_at = mc_flush_cut(st, now);
	__u64 ttl = cfg->ttl_ns;
	int expired = 0, unservable = 0;
	s->one_tail = 0;
	__u16 vl = 0;

	if (way >= 0) { /* else a miss, without touching a slot */
		bpf_spin_lock(&slot->lock);
		if (slot->valid && slot->gen == gen && slot->hash == hash && slot->key_len == kl &&
		    mc_key_equal(slot->key, s->buf, ko, MC_LOAD(s->one_kl))) {
			if (mc_entry_stale(slot, now, ttl, flush_at)) {
				expired = 1;
				slot->valid = 0;
			} else if (slot->unservable) {
				unservable = 1;
			} else {
				s->one_tail = reply_tail(slot, s->out);
				vl = slot->val_len;
			}
		}
		bpf_spin_unlock(&slot->lock);
	}
	if (expired)
		mc_level_add(gen, -1);
	/* Noted this late on purpose: a branch early in a path doubles what the verifier walks. */
	mc_pkt_key(&s->pkt, s->buf, ko, MC_LOAD(s->one_kl));
	if (unservable) { /* its reply did not fit the frame last time: tc_ingress answers */
		if (!to_tc(ctx, s, idx, 0))
			mc_count(MC_V_TOO_BIG);
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
		remember_in_way(s, hash, now, gen);
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
		if (!to_tc(ctx, s, idx, 0)) /* no room to grow the frame here; the skb has */
			mc_count(MC_V_TOO_BIG);
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

/* ------------------------------------------------------------------ */
/* Entry: parse, classify, dispatch.                                   */
/* ------------------------------------------------------------------ */

/*
 * The write scanner trusts only bytes the kernel will hand memcached, in the order it hands
 * them over (docs/HOSTILE_INPUT.md). XDP runs before TCP has checked a segment, so each data
 * segment is first matched to this host's socket for its address pair: the connection's
 * receive state (read through BTF, offsets from this kernel's own BTF) names the stream's
 * first sequence number, and mc_conn says how far the scanner has read it. A segment for no
 * connection, or outside the kernel's window, moves nothing; one that starts past what was
 * read (a gap: loss, reordering, or a forged sequence number) is dropped, so that TCP sends
 * it again in order; one that starts before it (a retransmission) is read from where reading
 * stopped. SYN, FIN and RST move nothing either: a new connection on the same address pair
 * has another first sequence number.
 */
#define MC_KREAD32(p, off) (*(volatile __u32 *)((char *)(p) + (off)))
#define MC_KREAD64(p, off) (*(volatile __u64 *)((char *)(p) + (off)))
#define MC_TCP_LISTEN 10 /* BPF_TCP_LISTEN */

/* What the kernel will take of a connection: its first sequence number and rcv_nxt, and
 * the room in its receive window. */
struct mc_tcp_view {
	__u32 base;
	__u32 nxt;
	__u32 wnd;
};

static __always_inline int tcp_view(struct xdp_md *ctx, struct mc_xscratch *s, void *iph,
				    __u32 iph_len, struct tcphdr *th, struct mc_tcp_view *v)
{
	struct bpf_sock_tuple t = {};
	__u32 tlen;
	if (s->ipv6) {
		__builtin_memcpy(t.ipv6.saddr, s->ck.saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, s->ck.daddr, 16);
		t.ipv6.sport = s->ck.sport;
		t.ipv6.dport = s->ck.dport;
		tlen = sizeof(t.ipv6);
	} else {
		t.ipv4.saddr = s->ck.saddr[3];
		t.ipv4.daddr = s->ck.daddr[3];
		t.ipv4.sport = s->ck.sport;
		t.ipv4.dport = s->ck.dport;
		tlen = sizeof(t.ipv4);
	}
	struct bpf_sock *sk = bpf_skc_lookup_tcp(ctx, &t, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	int ok = 0;
	if (sk->state == MC_TCP_LISTEN) {
		/* No connection yet: only the ACK of a SYN cookie makes one (with this segment's
		 * sequence number as its first). */
		if (bpf_tcp_check_syncookie(sk, iph, iph_len, th, sizeof(*th)) == 0) {
			v->base = v->nxt = s->seq;
			v->wnd = 0xffff;
			ok = 1;
		}
	} else {
		void *tp = bpf_skc_to_tcp_sock(sk);
		if (tp) {
			__u32 nxt = MC_KREAD32(tp, MC_TCP_RCV_NXT);
			__u64 got = MC_KREAD64(tp, MC_TCP_BYTES_RECEIVED);
			__s32 wnd = (__s32)(MC_KREAD32(tp, MC_TCP_RCV_WUP) +
					    MC_KREAD32(tp, MC_TCP_RCV_WND) - nxt);
			v->base = nxt - (__u32)got;
			v->nxt = nxt;
			v->wnd = wnd > 0 ? wnd : 0;
			ok = 1;
		} else {
			/* A handshake the kernel has not finished (its ACK is in the same batch of
			 * frames): the stream starts after the client's ISN. */
			void *rq = bpf_skc_to_tcp_request_sock(sk);
			if (rq) {
				v->base = v->nxt = MC_KREAD32(rq, MC_TCP_REQ_RCV_ISN) + 1;
				v->wnd = 0xffff;
				ok = 1;
			}
		}
	}
	bpf_sk_release(sk);
	return ok;
}

static __always_inline int start_scan(struct xdp_md *ctx, struct mc_xscratch *s, __u32 pos)
{
	s->pos = pos;
	s->steps = 0;
	s->skipping = 0;
	s->carry_len = 0;
	mc_xdp_jmp.call(ctx, TAIL_SCAN);
	/* The tail call failed: nothing may slip past, so empty the cache. */
	mc_fallback_flush(MC_FR_TAIL_CALL);
	return XDP_PASS;
}

/* The segment is read up to its end (or was not read: the cache was emptied for it). */
static __always_inline void conn_done(struct mc_xscratch *s, __u32 mode, __u32 skip_seq,
				      __u32 carry_len)
{
	s->conn.next_seq = s->seq + s->payload_len;
	s->conn.mode = mode;
	s->conn.skip_seq = skip_seq;
	s->conn.carry_len = carry_len;
	s->conn.seen_ns = bpf_ktime_get_ns();
	mc_conn.update(&s->ck, &s->conn);
}

static __always_inline int tcp_segment(struct xdp_md *ctx, struct mc_xscratch *s,
				       struct tcphdr *th, void *iph, __u32 iph_len)
{
	if (s->payload_len == 0)
		return XDP_PASS; /* SYN, FIN, RST, ACK: nothing to read, nothing moves */
	if (th->syn) {
		/* Data on a SYN (TCP Fast Open) would reach memcached before any connection
		 * exists to match it to: dropped, the client sends it again after the handshake. */
		mc_count(MC_V_HIDDEN);
		return XDP_DROP;
	}
	struct mc_tcp_view v = {};
	if (!tcp_view(ctx, s, iph, iph_len, th, &v)) {
		mc_count(MC_V_UNREAD); /* no connection takes it: the kernel answers with a RST */
		return XDP_PASS;
	}
	__u32 seq = s->seq;
	struct mc_conn *c = mc_conn.lookup(&s->ck);
	if (!c || c->base != v.base) {
		__s32 off = (__s32)(seq - v.nxt);
		if (seq != v.base && (off < 0 || (__u32)off >= v.wnd)) {
			mc_count(MC_V_UNREAD); /* outside the window: the kernel drops it */
			return XDP_PASS;
		}
		s->conn.base = v.base;
		s->conn.next_seq = seq;
		s->conn.skip_seq = seq;
		s->conn.mode = MC_CS_LINE;
		s->conn.carry_len = 0;
		/* A stream whose start we did not see (older than these maps, or its state
		 * evicted): where its commands start is taken on trust, after emptying the
		 * cache for what may have been missed. */
		if (seq != v.base)
			mc_fallback_flush(MC_FR_UNKNOWN_STREAM);
	} else {
		s->conn = *c;
	}
	__s32 gap = (__s32)(seq - s->conn.next_seq);
	if (gap > 0) {
		if ((__s32)(v.nxt - s->conn.next_seq) > 0) {
			/* The kernel took bytes the scanner never read (they came another way):
			 * read on from here, after emptying the cache for them. */
			mc_fallback_flush(MC_FR_DESYNC);
			s->conn.next_seq = seq;
			s->conn.mode = MC_CS_LINE;
		} else {
			mc_count(MC_V_OUT_OF_ORDER);
			return XDP_DROP;
		}
	}
	__u32 pos = (__u32)(-gap > 0 ? -gap : 0); /* bytes read before: a retransmission */
	if (pos >= s->payload_len)
		return XDP_PASS;
	__u32 mode = s->conn.mode;
	if (mode == MC_CS_BLIND) {
		mc_fallback_flush(MC_FR_BLIND);
		conn_done(s, MC_CS_BLIND, 0, 0);
		return XDP_PASS;
	}
	if (mode == MC_CS_VALUE) {
		__s32 value = (__s32)(s->conn.skip_seq - seq);
		if (value > 0 && (__u32)value >= s->payload_len) {
			conn_done(s, MC_CS_VALUE, s->conn.skip_seq, 0);
			return XDP_PASS; /* all of it is value bytes */
		}
		if (value > (__s32)pos)
			pos = value;
	}
	s->pos = pos;
	s->steps = 0;
	s->skipping = 0;
	s->carry_len = 0;
	if (mode == MC_CS_CARRY && pos == 0)
		s->carry_len = s->conn.carry_len;
	else if (mode == MC_CS_CARRY) {
		/* A retransmission that starts inside the carried line: it cannot happen with
		 * a sender that keeps its bytes. */
		mc_fallback_flush(MC_FR_CUT_LINE);
		conn_done(s, MC_CS_BLIND, 0, 0);
		return XDP_PASS;
	}
	if (mode == MC_CS_LONG || mode == MC_CS_LONG_CR) {
		s->skipping = 1;
		__u8 first = 0;
		if (mode == MC_CS_LONG_CR &&
		    !bpf_xdp_load_bytes(ctx, s->payload_off + (pos & 0xffff), &first, 1) &&
		    first == '\n') {
			s->pos = pos + 1; /* the long line's "\r\n" was cut between segments */
			s->skipping = 0;
		}
	}
	mc_xdp_jmp.call(ctx, TAIL_SCAN);
	mc_fallback_flush(MC_FR_TAIL_CALL);
	conn_done(s, MC_CS_BLIND, 0, 0);
	return XDP_PASS;
}

static __always_inline int udp_binary(struct xdp_md *ctx, struct mc_xscratch *s,
				      struct mc_config *cfg, __u32 len)
{
	const __u8 *b = s->buf + MC_UDP_FRAME_HDR;
	if (len < MC_UDP_FRAME_HDR + MC_BIN_HDR) {
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	__u8 op = b[1];
	__u32 klen = ((__u32)b[2] << 8) | b[3];
	__u32 elen = b[4];
	__u32 body = ((__u32)b[8] << 24) | ((__u32)b[9] << 16) | ((__u32)b[10] << 8) | b[11];
	int is_get = op == 0x00 || op == 0x09 || op == 0x0c || op == 0x0d;
	if (!is_get || MC_UDP_FRAME_HDR + MC_BIN_HDR + body != len)
		return start_scan(ctx, s, MC_UDP_FRAME_HDR); /* writes, or several requests */
	if (elen != 0 || klen != body || klen == 0) {
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	if (!(cfg->protocols & MC_PROTO_BINARY)) {
		mc_count(MC_V_PASS);
		return XDP_PASS;
	}
	__u32 off = MC_UDP_FRAME_HDR + MC_BIN_HDR;
	mc_pkt_key(&s->pkt, s->buf, off, klen);
	if (!key_cacheable(cfg, s->buf, off, klen)) {
		mc_count(klen > MC_MAX_KEY ? MC_V_TOO_BIG : MC_V_MISS);
		return XDP_PASS;
	}
	s->binary = 1;
	s->opcode = op;
	s->opaque = ((__u32)b[12] << 24) | ((__u32)b[13] << 16) | ((__u32)b[14] << 8) | b[15];
	s->hits[0].key_off = off;
	s->hits[0].key_len = klen;
	s->nkeys = 1;
	s->done = 0;
	mc_xdp_jmp.call(ctx, TAIL_GET_KEY);
	return XDP_PASS;
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
		if (bpf_xdp_load_bytes(ctx, off, &th, sizeof(th))) {
			if (!fragment)
				return XDP_PASS;
			mc_count(MC_V_HIDDEN); /* a first fragment too short for its TCP header */
			return XDP_DROP;
		}
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
	if (bpf_xdp_load_bytes(ctx, off, &uh, sizeof(uh))) {
		if (!fragment)
			return XDP_PASS;
		mc_count(MC_V_HIDDEN); /* a first fragment too short for its UDP header */
		return XDP_DROP;
	}
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
		if ((void *)(th + 1) > data_end) {
			if (!(frag & 0x2000))
				return XDP_PASS;
			mc_count(MC_V_HIDDEN); /* a first fragment too short for its TCP header */
			return XDP_DROP;
		}
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
	if ((void *)(uh + 1) > data_end) {
		if (!(frag & 0x2000))
			return XDP_PASS;
		mc_count(MC_V_HIDDEN); /* a first fragment too short for its UDP header */
		return XDP_DROP;
	}
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
	s->served = cfg->families & MC_FAMILY_IPV4;
	return MC_UDP_REQUEST;
}

/*
 * A UDP datagram to memcached's port, either family (its addresses, ports and payload place
 * in scratch): a GET the cache may answer, or anything else for the write scanner.
 */
static __always_inline int udp_request(struct xdp_md *ctx, struct mc_xscratch *s,
				       struct mc_config *cfg)
{
	__u64 len = s->payload_len;
	if (len > MC_BUF)
		return start_scan(ctx, s, MC_UDP_FRAME_HDR);
	if (!MC_SIZE_OK(len, MC_BUF))
		return XDP_PASS;
	if (bpf_xdp_load_bytes(ctx, s->payload_off, s->buf, len) < 0)
		return XDP_PASS;
	/* Frame header: request id, sequence 0 of 1 datagram. */
	s->request_id = ((__u16)s->buf[0] << 8) | s->buf[1];
	if (s->buf[2] != 0 || s->buf[3] != 0 || s->buf[4] != 0 || s->buf[5] != 1) {
		mc_count(MC_V_MALFORMED);
		return start_scan(ctx, s, MC_UDP_FRAME_HDR);
	}

	int is_get = len > MC_UDP_FRAME_HDR + 4 && s->buf[8] == 'g' && s->buf[9] == 'e' &&
		     s->buf[10] == 't' && s->buf[11] == ' ';
	int is_gets = len > MC_UDP_FRAME_HDR + 5 && s->buf[8] == 'g' && s->buf[9] == 'e' &&
		      s->buf[10] == 't' && s->buf[11] == 's' && s->buf[12] == ' ';
	int is_binary = s->buf[8] == MC_BIN_REQ_MAGIC;
	int is_mg = len > MC_UDP_FRAME_HDR + 3 && s->buf[8] == 'm' && s->buf[9] == 'g' &&
		    s->buf[10] == ' ';
	s->meta = is_mg;
	if (!is_get && !is_binary && !is_mg) {
		if (is_gets)
			mc_count(MC_V_GETS);
		return start_scan(ctx, s, MC_UDP_FRAME_HDR);
	}
	/* A binary request or an mg may change a key (an mg with N or T): when they are not
	 * served, the scanner decides. */
	int may_write = is_binary || is_mg;
	if (!cfg->enabled) {
		mc_count(MC_V_DISABLED);
		return may_write ? start_scan(ctx, s, MC_UDP_FRAME_HDR) : XDP_PASS;
	}
	if (!serves_on(cfg, ctx->ingress_ifindex) || !client_allowed(cfg, s)) {
		mc_count(MC_V_DENIED);
		return may_write ? start_scan(ctx, s, MC_UDP_FRAME_HDR) : XDP_PASS;
	}
	if (!s->plain || !s->served) {
		mc_count(MC_V_PASS); /* IP options or extension headers; not memcached's address */
		return may_write ? start_scan(ctx, s, MC_UDP_FRAME_HDR) : XDP_PASS;
	}
	if (is_binary)
		return udp_binary(ctx, s, cfg, len);
	if (!(cfg->protocols & MC_PROTO_ASCII)) {
		mc_count(MC_V_PASS);
		return may_write ? start_scan(ctx, s, MC_UDP_FRAME_HDR) : XDP_PASS;
	}
	if (is_mg) {
		mc_xdp_jmp.call(ctx, TAIL_GET_PARSE);
		return start_scan(ctx, s, MC_UDP_FRAME_HDR);
	}
	int r = get_one(ctx, s, cfg, len);
	if (r != MC_SLOW)
		return r;
	mc_xdp_jmp.call(ctx, TAIL_GET_PARSE);
	return XDP_PASS;
}

static __always_inline int main_path(struct xdp_md *ctx, struct mc_xscratch *s,
				     struct mc_config *cfg)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	int r;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		r = ipv4_l3(ctx, s, cfg, eth);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		r = ipv6_l3(ctx, s, cfg, eth);
	} else {
		mc_count(MC_V_PASS);
		return XDP_PASS;
	}
	if (r != MC_UDP_REQUEST)
		return r;
	return udp_request(ctx, s, cfg);
}

int xdp_main(struct xdp_md *ctx)
{
	struct mc_config *cfg = mc_config();
	struct mc_xscratch *s = scratch();
	if (!cfg || !s)
		return XDP_PASS;
	mc_pkt_begin(&s->pkt, cfg, MC_P_XDP_MAIN);
	s->handover = 0; /* this frame's run overwrites what a handed-over reply left */
	return finish(ctx, s, MC_P_XDP_MAIN, answered(ctx, s, main_path(ctx, s, cfg)));
}

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
	s->hits[0].key_off = off;
	s->hits[0].key_len = kl;
	s->nkeys = 1;
	s->done = 0;
	s->binary = 0;
	mc_xdp_jmp.call(ctx, TAIL_GET_KEY);
	return XDP_PASS;
}

/*
 * ASCII get: buf holds frame header (8) + "get k1 k2...\r\n". Only a datagram
 * that is exactly one get line is answered; an mg line goes to meta_parse.
 */
static __always_inline int get_parse(struct xdp_md *ctx, struct mc_xscratch *s,
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
	if ((__u32)eol + 2 != len)
		return start_scan(ctx, s, MC_UDP_FRAME_HDR); /* more commands follow */
	if (eol - MC_UDP_FRAME_HDR > MC_WIN) {
		if (s->meta)
			return start_scan(ctx, s, MC_UDP_FRAME_HDR);
		remember_get(s, 0, 0);
		mc_count(MC_V_MISS); /* a longer line than we read: memcached answers */
		return XDP_PASS;
	}
	mc_tokenize(s->buf, MC_UDP_FRAME_HDR, eol, t);
	if (s->meta)
		return meta_parse(ctx, s, cfg);
	__u32 n = MC_LOAD(t->n);
	if (n > MC_MAX_TOK)
		return XDP_PASS;
	if (n < 2) {
		mc_count(MC_V_MALFORMED);
		return XDP_PASS;
	}
	if (t->overflow || n - 1 > MC_MAX_MULTIGET) {
		remember_get(s, 0, 0);
		mc_count(MC_V_MISS);
		return XDP_PASS;
	}
	__u32 nkeys = 0;
	for (int i = 1; i < MC_MAX_TOK; i++) {
		MC_OPAQUE(i);
		if (i >= n)
			break;
		__u32 off = MC_LOAD(t->off[i]);
		__u32 kl = MC_LOAD(t->len[i]);
		if (!key_cacheable(cfg, s->buf, off, kl)) {
			mc_pkt_key(&s->pkt, s->buf, off, kl);
			mc_count(kl > MC_MAX_KEY ? MC_V_TOO_BIG : MC_V_MISS);
			return XDP_PASS;
		}
		struct mc_hit *h = &s->hits[nkeys & (MC_MAX_MULTIGET - 1)];
		h->key_off = off;
		h->key_len = kl;
		nkeys++;
	}
	s->nkeys = nkeys;
	s->done = 0;
	s->binary = 0;
	mc_xdp_jmp.call(ctx, TAIL_GET_KEY);
	return XDP_PASS;
}

int xdp_get_parse(struct xdp_md *ctx)
{
	struct mc_config *cfg = mc_config();
	struct mc_xscratch *s = scratch();
	if (!cfg || !s)
		return XDP_PASS;
	mc_pkt_path(&s->pkt, MC_P_XDP_GET_PARSE);
	return finish(ctx, s, MC_P_XDP_GET_PARSE, get_parse(ctx, s, cfg));
}

/* ------------------------------------------------------------------ */
/* GET: one key per call; a miss anywhere passes the whole request.   */
/* ------------------------------------------------------------------ */

static __always_inline int get_key(struct xdp_md *ctx, struct mc_xscratch *s,
				   struct mc_config *cfg)
{
	__u32 i = s->done;
	if (i >= MC_MAX_MULTIGET || i >= s->nkeys)
		return XDP_PASS;
	struct mc_hit *h = &s->hits[i & (MC_MAX_MULTIGET - 1)];
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
	int way = mc_locate(hash, &idx);
	if (way == MC_NO_CACHE)
		return XDP_PASS;
	struct mc_slot *slot = mc_cache.lookup(&idx);
	if (!slot)
		return XDP_PASS;
	__u64 now = bpf_ktime_get_ns();
	u32 zero = 0;
	struct mc_state *st = mc_state.lookup(&zero);
	if (!st)
		return XDP_PASS;
	__u64 gen = st->gen;
	__u64 flush_at = mc_flush_cut(st, now);
	__u64 ttl = cfg->ttl_ns;
	int ok = 0, expired = 0;

	bpf_spin_lock(&slot->lock);
	if (way >= 0 && slot->valid && slot->gen == gen && slot->hash == hash && slot->key_len == kl &&
	    (!s->binary || slot->has_cas)) {
		ok = mc_key_equal(slot->key, s->buf, ko, MC_LOAD(h->key_len));
		if (ok && mc_entry_stale(slot, now, ttl, flush_at)) {
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
		mc_level_add(gen, -1);
	mc_pkt_key(&s->pkt, s->buf, ko, MC_LOAD(h->key_len)); /* late: see get_one */

	if (!ok) {
		if (expired)
			mc_count(MC_V_EXPIRED);
		mc_count(MC_V_MISS);
		if (!s->meta) /* an mg's reply is not filled from (a later get's is) */
			remember_get(s, ko, s->binary ? kl : 0);
		return XDP_PASS;
	}
	if (hash == cfg->probe_hash)
		mc_count(MC_V_PROBE_HIT);
	s->done = i + 1;
	if (s->done < s->nkeys)
		mc_xdp_jmp.call(ctx, TAIL_GET_KEY);
	else
		mc_xdp_jmp.call(ctx, TAIL_REPLY);
	return XDP_PASS;
}

int xdp_get_key(struct xdp_md *ctx)
{
	struct mc_config *cfg = mc_config();
	struct mc_xscratch *s = scratch();
	if (!cfg || !s)
		return XDP_PASS;
	mc_pkt_path(&s->pkt, MC_P_XDP_GET_KEY);
	return finish(ctx, s, MC_P_XDP_GET_KEY, get_key(ctx, s, cfg));
}

/* ------------------------------------------------------------------ */
/* Reply: grow or shrink at the head, rewrite headers, copy the items. */
/* ------------------------------------------------------------------ */

static __always_inline __u32 ascii_reply_len(struct mc_xscratch *s)
{
	__u32 total = MC_UDP_FRAME_HDR + 5; /* "END\r\n" */
	for (int i = 0; i < MC_MAX_MULTIGET; i++) {
		MC_OPAQUE(i);
		if (i >= s->nkeys)
			break;
		struct mc_hit *h = &s->hits[i];
		total += 6 + h->key_len + 1 + h->flags_str_len + 1 + h->len_str_len + 2 +
			 h->val_len + 2;
	}
	return total;
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
	struct mc_hit *h = &s->hits[0];
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
	struct mc_hit *h = &s->hits[0];
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
		struct mc_hit *h = &s->hits[0];
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

	__u64 txt_value = MC_W6('V', 'A', 'L', 'U', 'E', ' ');
	__u64 txt_end = MC_W5('E', 'N', 'D', '\r', '\n');
	__u64 txt_crlf = MC_W2('\r', '\n');
	__u64 txt_space = ' ';
	for (int i = 0; i < MC_MAX_MULTIGET; i++) {
		MC_OPAQUE(i);
		if (i >= s->nkeys)
			break;
		struct mc_hit *h = &s->hits[i];
		__u64 kl = h->key_len;
		__u64 fl = h->flags_str_len;
		__u64 ll = h->len_str_len;
		__u64 vl = h->val_len;
		if (!MC_SIZE_OK(kl, MC_KEY_LIMIT) || !MC_SIZE_OK(fl, 10) || !MC_SIZE_OK(ll, 10) ||
		    vl > MC_VAL_BUF)
			return -1;
		put(ctx, skb, off, &txt_value, 6);
		off += 6;
		put(ctx, skb, off, s->buf + (h->key_off & MC_BUF_MASK), kl);
		off += kl;
		put(ctx, skb, off, &txt_space, 1);
		off += 1;
		put(ctx, skb, off, h->flags_str, fl);
		off += fl;
		put(ctx, skb, off, &txt_space, 1);
		off += 1;
		put(ctx, skb, off, h->len_str, ll);
		off += ll;
		put(ctx, skb, off, &txt_crlf, 2);
		off += 2;
		if (MC_SIZE_OK(vl, MC_VAL_BUF)) {
			put(ctx, skb, off, h->val, vl);
			off += vl;
		}
		put(ctx, skb, off, &txt_crlf, 2);
		off += 2;
	}
	put(ctx, skb, off, &txt_end, 5);
	return 0;
}


/*
 * A reply the frame cannot hold, handed to tc_ingress whole: get_key left every item in the
 * scratch (values copied under their slots' locks), and tc_ingress writes the reply from it
 * into the skb. The scratch is per CPU and the next frame's XDP run overwrites it, so the
 * metadata names the CPU and a cookie that xdp_main clears: tc_ingress answers only when it
 * runs on the same CPU before any other XDP run (generic XDP: at once, in the same receive;
 * else memcached answers). 0 when the metadata cannot be written.
 */
static __always_inline int to_tc_scratch(struct xdp_md *ctx, struct mc_xscratch *s)
{
	__u32 cookie = ++s->handover_seq | 1; /* never 0: 0 is "none" */
	if (!to_tc(ctx, s, MC_META_FROM_SCRATCH, cookie))
		return 0;
	s->handover = cookie;
	return 1;
}

static __always_inline int reply(struct xdp_md *ctx, struct mc_xscratch *s)
{
	__u32 body;
	if (s->meta) {
		body = meta_reply_len(s);
	} else if (s->binary) {
		struct mc_hit *h = &s->hits[0];
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
			mark_unservable(s->hits[0].slot_idx, s->hits[0].key_len, s->hits[0].val_len);
		mc_count(MC_V_TOO_BIG);
		return XDP_PASS;
	}
	capture_hit_request(ctx, s, MC_P_XDP_REPLY, 0);
	/* Size the frame from its real length: bytes after the datagram (Ethernet padding of a
	 * short request, or a UDP length shorter than the IP one) must not trail the reply. */
	int have = (int)((long)ctx->data_end - (long)ctx->data);
	if (!resize(ctx, (int)(hdrs + body) - have)) {
		if (!to_tc_scratch(ctx, s)) /* no room to grow the frame here; the skb has */
			mc_count(MC_V_TOO_BIG);
		return XDP_PASS;
	}
	if (store_l2l4(ctx, 0, s, body) || reply_payload(ctx, 0, s, hdrs))
		return XDP_DROP; /* the packet is already changed: never send half a reply */
	mc_count(MC_V_HIT);
	return XDP_TX;
}

int xdp_reply(struct xdp_md *ctx)
{
	struct mc_xscratch *s = scratch();
	if (!s)
		return XDP_PASS;
	mc_pkt_path(&s->pkt, MC_P_XDP_REPLY);
	return finish(ctx, s, MC_P_XDP_REPLY, answered(ctx, s, reply(ctx, s)));
}

/* ------------------------------------------------------------------ */
/* Write scanner: one command per call, through the whole payload.    */
/* ------------------------------------------------------------------ */

static __always_inline int scan_done(struct mc_xscratch *s)
{
	if (!s->tcp)
		return XDP_PASS;
	if (s->pos > s->payload_len) /* the value runs on into the next segments */
		conn_done(s, MC_CS_VALUE, s->seq + s->pos, 0);
	else
		conn_done(s, MC_CS_LINE, 0, 0);
	return XDP_PASS;
}

/* Where the stream stands is lost (a line that starts like a write and is longer than any
 * write we read): every later byte of the connection empties the cache. */
static __always_inline int scan_blind(struct mc_xscratch *s, __u32 reason)
{
	mc_fallback_flush(reason);
	if (s->tcp)
		conn_done(s, MC_CS_BLIND, 0, 0);
	return XDP_PASS;
}

/* The command is cut by the segment's end. Over TCP its bytes so far (the whole window: the
 * scanner said so) are kept, and read again in front of the next segment's. A datagram has
 * no next: memcached reads each into the start of its buffer, and drops a command it cuts. */
static __always_inline int scan_cut(struct mc_xscratch *s, __u32 n)
{
	if (!s->tcp)
		return XDP_PASS;
	if (n > MC_CARRY_BYTES || s->payload_len - s->pos + s->carry_len != n)
		return scan_blind(s, MC_FR_CUT_LINE); /* more than a carry holds */
	struct mc_carry *k = (struct mc_carry *)s->buf; /* the window, from its start */
	if (mc_carry.update(&s->ck, k)) /* a full map: nothing to read the rest with */
		return scan_blind(s, MC_FR_CUT_LINE);
	conn_done(s, MC_CS_CARRY, 0, n);
	return XDP_PASS;
}

/* The window at s->pos: over TCP, after a cut line's carried bytes on the first step. The
 * window's length, or 0 when the bytes cannot be read. */
static __always_inline __u32 scan_window(struct xdp_md *ctx, struct mc_xscratch *s, __u32 rem)
{
	__u32 carry = s->carry_len;
	if (carry == 0 || carry > MC_CARRY_BYTES) {
		__u64 n = rem < MC_WIN ? rem : MC_WIN; /* u64: no zero-extended copy to check */
		if (!MC_SIZE_OK(n, MC_WIN) ||
		    bpf_xdp_load_bytes(ctx, s->payload_off + s->pos, s->buf, n) < 0)
			return 0;
		return n;
	}
	struct mc_carry *k = mc_carry.lookup(&s->ck);
	if (!k)
		return 0; /* evicted: the line's start is gone */
	__builtin_memcpy(s->buf, k->line, MC_CARRY_BYTES);
	__u32 room = MC_WIN - carry;
	__u64 n = rem < room ? rem : room;
	__u32 at = carry;
	MC_OPAQUE(at); /* else the compiler drops the mask the verifier needs */
	at &= 511;
	if (n == 0 || !MC_SIZE_OK(n, MC_WIN) ||
	    bpf_xdp_load_bytes(ctx, s->payload_off + s->pos, s->buf + at, n) < 0)
		return 0;
	return carry + n;
}

static __always_inline int scan(struct xdp_md *ctx, struct mc_xscratch *s)
{
	if (s->pos >= s->payload_len)
		return scan_done(s);
	if (++s->steps > MC_MAX_SCAN_STEPS) /* more commands than we may look at */
		return scan_blind(s, MC_FR_STEPS);
	__u32 rem = s->payload_len - s->pos;
	__u32 carry = s->carry_len;
	__u32 n = scan_window(ctx, s, rem);
	if (n == 0 || n > MC_WIN)
		return scan_blind(s, carry ? MC_FR_CUT_LINE : MC_FR_LOAD);
	__u64 adv = 0;
	int r = s->skipping ? mc_scan_skip(s->buf, &s->tok, n, rem + carry, &adv)
			    : mc_scan_cmd(s->buf, &s->tok, n, rem + carry, &adv);
	if (r == MC_SCAN_CUT) {
		if (s->skipping) { /* the long line goes on in the next segment */
			if (s->tcp)
				conn_done(s, s->buf[(n - 1) & MC_BUF_MASK] == '\r' ? MC_CS_LONG_CR :
					  MC_CS_LONG, 0, 0);
			return XDP_PASS;
		}
		return scan_cut(s, n);
	}
	if (r == MC_SCAN_UNSURE || adv < carry)
		return scan_blind(s, MC_FR_UNSURE);
	s->skipping = r == MC_SCAN_LONG;
	s->pos += adv - carry;
	s->carry_len = 0;
	mc_xdp_jmp.call(ctx, TAIL_SCAN);
	return scan_blind(s, MC_FR_TAIL_CALL);
}

int xdp_scan(struct xdp_md *ctx)
{
	struct mc_xscratch *s = scratch();
	if (!s)
		return XDP_PASS;
	mc_pkt_path(&s->pkt, MC_P_XDP_SCAN);
	return finish(ctx, s, MC_P_XDP_SCAN, scan(ctx, s));
}

/* A capture runs: the frame as the program that decided left it (see finish). */
int xdp_capture(struct xdp_md *ctx)
{
	struct mc_xscratch *s = scratch();
	if (!s)
		return XDP_PASS;
	__u32 action = s->pkt.action;
	mc_capture_xdp(ctx, &s->pkt, s->pkt.exit_path, action == XDP_TX ? MC_CAP_TX : MC_CAP_IN,
		       action);
	return action <= XDP_TX ? action : XDP_PASS;
}

/* TC ingress, compiled with the programs above: it shares their cache lookup and replies. */
#include "tc_ingress.c"
