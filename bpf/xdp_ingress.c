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
 *   xdp_get_key  look up a GET's keys (MC_MGET_PER_CALL per run)
 *   xdp_reply    write the reply into the packet and XDP_TX it
 *   xdp_scan     parse one command of a write stream, invalidate its key(s)
 * Anything not understood is passed to memcached untouched.
 *
 * This file holds the programs and the request paths between them; the parts they share are
 * headers by concern, each saying what it needs from its includer (as Katran's are):
 *   xdp_scratch.h  the per-CPU scratch and every program's exit
 *   xdp_policy.h   who is answered: allow-list, amplification guard, interfaces, prefix
 *   mcache_write.h the write scanner's commands (shared with the local bypass's sk_msg)
 *   xdp_csum.h     reply headers and checksums, growing the frame, the hand-over to TC
 *   xdp_lookup.h   the cache lookup and the common GET; a miss's record for the fill guard
 *   xdp_stream.h   the TCP stream a segment belongs to, and what of it the kernel takes
 *   xdp_l3.h       IPv4/IPv6 parsing down to memcached's TCP and UDP
 *   xdp_get_parse.h  the get and mg lines xdp_get_parse splits
 *   xdp_get_keys.h the lookups of a GET's keys, a few per xdp_get_key run
 *   xdp_replies.h  multi-get, binary and mg replies
 *   xdp_scan.h     the write scanner's loop over a datagram or a segment
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

#include "xdp_scratch.h"
#include "xdp_policy.h"

/* Writes are named for a capture by their key. */
static __always_inline void mc_note_key(const __u8 *buf, __u32 off, __u32 len)
{
	struct mc_xscratch *s = scratch();
	if (s)
		mc_pkt_key(&s->pkt, buf, off, len);
}

#include "mcache_write.h"

#include "xdp_csum.h"
#include "xdp_lookup.h"

#include "xdp_stream.h"

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
	s->hit.key_off = off;
	s->hit.key_len = klen;
	s->nkeys = 1;
	s->done = 0;
	mc_xdp_jmp.call(ctx, TAIL_GET_KEY);
	return XDP_PASS;
}

#include "xdp_l3.h"

/* ------------------------------------------------------------------ */
/* Entry: parse, classify, dispatch.                                   */
/* ------------------------------------------------------------------ */

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

#include "xdp_get_parse.h"

int xdp_get_parse(struct xdp_md *ctx)
{
	struct mc_config *cfg = mc_config();
	struct mc_xscratch *s = scratch();
	if (!cfg || !s)
		return XDP_PASS;
	mc_pkt_path(&s->pkt, MC_P_XDP_GET_PARSE);
	return finish(ctx, s, MC_P_XDP_GET_PARSE,
		      s->meta ? meta_line(ctx, s, cfg) : get_parse(ctx, s, cfg));
}

/* ------------------------------------------------------------------ */
/* GET: a few keys per call; a miss anywhere passes the whole request. */
/* ------------------------------------------------------------------ */

#include "xdp_get_keys.h"

int xdp_get_key(struct xdp_md *ctx)
{
	struct mc_config *cfg = mc_config();
	struct mc_xscratch *s = scratch();
	if (!cfg || !s)
		return XDP_PASS;
	mc_pkt_path(&s->pkt, MC_P_XDP_GET_KEY);
	return finish(ctx, s, MC_P_XDP_GET_KEY,
		      s->binary || s->meta ? get_key(ctx, s, cfg) : get_keys(ctx, s, cfg));
}

#include "xdp_replies.h"

int xdp_reply(struct xdp_md *ctx)
{
	struct mc_xscratch *s = scratch();
	if (!s)
		return XDP_PASS;
	mc_pkt_path(&s->pkt, MC_P_XDP_REPLY);
	return finish(ctx, s, MC_P_XDP_REPLY, answered(ctx, s, reply(ctx, s)));
}

#include "xdp_scan.h"

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
