/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The limit (round C of the benchmarks): a trivial XDP program that answers every
 * single-key ASCII memcached UDP GET ("get <key>\r\n" to REFL_PORT) with a fixed reply
 *     VALUE <key> 0 <n>\r\n<n fixed bytes>\r\nEND\r\n
 * and XDP_TX, without any lookup, lock, TTL or counter. The key is echoed so that clients
 * that match replies to keys accept it. Everything else is passed (SETs reach memcached).
 * The frame is rewritten from offset 0 after growing it, head room first (as the cache's
 * xdp_reply does), so the cost differs from mcache's hit path only by what mcache adds.
 *
 * Compiled by bcc with -DREFL_SUFFIX_LEN=<len of " 0 <n>\r\n<value>\r\nEND\r\n">; the suffix
 * bytes are written by bench/reflector.py into refl_suffix[0].
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#ifndef REFL_PORT
#define REFL_PORT 11211
#endif
#ifndef REFL_SUFFIX_LEN
#define REFL_SUFFIX_LEN 44
#endif
#define REFL_SUFFIX_CAP 1152
#define REFL_MAX_KEY 250

struct refl_suffix_t {
	__u8 b[REFL_SUFFIX_CAP];
};
BPF_ARRAY(refl_suffix, struct refl_suffix_t, 1);

struct refl_scratch_t {
	__u8 key[256];
};
BPF_PERCPU_ARRAY(refl_scratch, struct refl_scratch_t, 1);

struct refl_hdr {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	__u8 frame[8];
	__u8 value_word[6];
} __attribute__((packed));

static __always_inline __u16 refl_fold(__u64 sum)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

static __always_inline int refl_resize(struct xdp_md *ctx, int delta)
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
	bpf_xdp_adjust_head(ctx, head);
	return 0;
}

int xdp_reflect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)))
		return XDP_PASS;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end || udp->dest != bpf_htons(REFL_PORT))
		return XDP_PASS;
	__u8 *p = (void *)(udp + 1);
	if ((void *)(p + 12) > data_end)
		return XDP_PASS;
	if (p[8] != 'g' || p[9] != 'e' || p[10] != 't' || p[11] != ' ')
		return XDP_PASS;
	__u32 plen = bpf_ntohs(udp->len) - sizeof(struct udphdr);
	/* "get " key "\r\n" after the 8-byte frame header: one key only */
	__u32 klen = plen - 8 - 4 - 2;
	if (klen < 1 || klen > REFL_MAX_KEY)
		return XDP_PASS;

	struct refl_hdr h = {};
	__builtin_memcpy(h.eth.h_dest, eth->h_source, 6);
	__builtin_memcpy(h.eth.h_source, eth->h_dest, 6);
	h.eth.h_proto = bpf_htons(ETH_P_IP);
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.ttl = 64;
	h.ip.protocol = IPPROTO_UDP;
	h.ip.saddr = ip->daddr;
	h.ip.daddr = ip->saddr;
	h.ip.frag_off = bpf_htons(0x4000);
	h.udp.source = udp->dest;
	h.udp.dest = udp->source;
	h.frame[0] = p[0];
	h.frame[1] = p[1];
	h.frame[5] = 1;
	h.value_word[0] = 'V';
	h.value_word[1] = 'A';
	h.value_word[2] = 'L';
	h.value_word[3] = 'U';
	h.value_word[4] = 'E';
	h.value_word[5] = ' ';

	int zero = 0;
	struct refl_scratch_t *sc = refl_scratch.lookup(&zero);
	struct refl_suffix_t *sfx = refl_suffix.lookup(&zero);
	if (!sc || !sfx)
		return XDP_PASS;
	__u32 koff = sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr) + 12;
	__u64 kl = klen;
	asm volatile("" : "+r"(kl));
	if (kl < 1 || kl > REFL_MAX_KEY)
		return XDP_PASS;
	if (bpf_xdp_load_bytes(ctx, koff, sc->key, kl))
		return XDP_PASS;

	__u32 body = 8 + 6 + klen + REFL_SUFFIX_LEN;
	h.ip.tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct udphdr) + body);
	h.udp.len = bpf_htons(sizeof(struct udphdr) + body);
	h.ip.check = refl_fold(bpf_csum_diff(0, 0, (__be32 *)&h.ip, sizeof(h.ip), 0));

	if (!refl_resize(ctx, (int)body - (int)plen))
		return XDP_PASS;
	if (bpf_xdp_store_bytes(ctx, 0, &h, sizeof(h)))
		return XDP_DROP;
	if (bpf_xdp_store_bytes(ctx, sizeof(h), sc->key, kl))
		return XDP_DROP;
	if (bpf_xdp_store_bytes(ctx, sizeof(h) + kl, sfx->b, REFL_SUFFIX_LEN))
		return XDP_DROP;
	return XDP_TX;
}
