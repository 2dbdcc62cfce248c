/* SPDX-License-Identifier: GPL-2.0 */
/*
 * XDP's per-CPU scratch: what one packet's programs hand each other across tail calls (the
 * parsed request, the keys of a GET, a reply being built, the TCP stream's state, the
 * hand-overs to TC ingress), and every program's exit (finish, answered).
 *
 * Needs from its includer: the prog array mc_xdp_jmp and TAIL_CAPTURE; mcache_verdict.h.
 */
#ifndef MC_XDP_SCRATCH_H
#define MC_XDP_SCRATCH_H

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

/* A key of an ASCII get: where it lies in buf. */
struct mc_keyref {
	__u16 off;
	__u16 len;
};

/*
 * An ASCII get's reply items, "VALUE <key> <flags> <bytes>\r\n<data>\r\n" each, are packed
 * into mget as get_key finds them (the value copied from its slot under the slot's lock), so
 * the per-key state is only a key's place: 32 keys cost 128 bytes, not 32 value buffers (a
 * per-CPU value may not pass 32 KB). One datagram's worth: the reply is a single datagram of
 * at most 1,500 bytes of IP packet, so the items of a reply that fits fit MC_MGET_ROOM. Writes
 * are at masked offsets (mget has MC_BUF_PAD past the mask); an item that runs past the room
 * may wrap, but then the reply is too big and the request is memcached's anyway.
 */
_Static_assert(MC_MGET_ROOM == 1500 - 20 - 8 - MC_UDP_FRAME_HDR - 5,
	       "mget holds a datagram's items: 1,500 bytes less IPv4, UDP, frame and END");

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
	/* mg (meta get): v and f asked for, the return flags in request order, the O token */
	__u32 meta;
	__u32 meta_v;
	__u32 meta_f; /* a hit needs an entry that knows the client flags */
	__u32 meta_n;
	__u8 meta_flag[MC_META_RET];
	__u16 meta_o_off;
	__u16 meta_o_len;
	struct mc_tokens tok;
	struct mc_pending pend;
	struct mc_hit hit; /* a binary GET's or an mg's one item */
	struct mc_keyref keys[MC_MAX_MULTIGET]; /* an ASCII get's keys */
	__u32 mget_len; /* bytes of items packed in mget */
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
	/* An ASCII get's reply items, packed (see MC_MGET_ROOM). */
	__u8 mget[MC_BUF + MC_BUF_PAD];
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

#endif /* MC_XDP_SCRATCH_H */
