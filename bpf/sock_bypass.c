/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The local bypass (config local_bypass): a TCP connection between a client on this host and
 * memcached skips the TCP/IP stack. Each message is put straight into the peer socket's
 * queue, and every message of the client is read for writes first, as XDP reads TCP segments
 * (mcache_write.h), so the cache stays as coherent as without the bypass.
 *
 *   sock_main  sockops, through sock_root (attached to a cgroup): an established connection
 *              of this network namespace between two of this host's sockets, to memcached's
 *              port and address, joins: both ends go into mc_sockhash
 *   msg_main   sk_msg, through msg_root (attached to mc_sockhash): memcached's replies go to
 *              the client's queue; a client's message, one command per run, is scanned and
 *              goes to memcached's queue. bpf_msg_apply_bytes makes the verdict cover the
 *              command's bytes (its value too, across later messages, without running this
 *              again); the kernel runs this again for the rest of the message.
 *
 * Whatever cannot be scanned here leaves the bypass (mc_bypass_leave): the connection takes
 * TCP over lo from then on, where XDP scans it.
 */
#include "mcache_socket.h"

#include <uapi/linux/bpf.h>

#include "mcache_bypass.h"
#include "mcache_maps.h"
#include "mcache_parse.h"

#define MC_AF_INET 2
#define MC_AF_INET6 10
#define MC_APPLY_MAX 0x7fffffff /* bpf_msg_apply_bytes takes a u32: longer values leave */

/*
 * The window of a client's message the scanner reads. Per CPU, but an sk_msg program runs
 * in the sender's process context, which may be preempted by another sender on this CPU:
 * `busy` is taken with a compare-and-swap, and a run that finds it taken leaves the bypass
 * (nothing is lost: XDP scans the connection from then on).
 */
struct mc_sscratch {
	__u64 busy;
	__u32 line; /* where this message counts (mc_stat_line) */
	__u32 pad;
	struct mc_tokens tok;
	__u8 buf[MC_BUF + MC_BUF_PAD];
};

BPF_PERCPU_ARRAY(mc_sscratch, struct mc_sscratch, 1);

static __always_inline struct mc_sscratch *scratch(void)
{
	u32 zero = 0;
	return mc_sscratch.lookup(&zero);
}

/* Counted atomically: XDP on this CPU may interrupt the add (it counts in other paths of the
 * same per-CPU line). */
static __always_inline void count_at(__u32 line, __u32 verdict)
{
	__u32 index = line + verdict;
	u64 *c = mc_stats.lookup(&index);
	if (c)
		__sync_fetch_and_add(c, 1);
}

static __always_inline void mc_count(__u32 verdict)
{
	struct mc_sscratch *s = scratch();
	if (s && s->busy)
		count_at(s->line, verdict);
}

/* A message has no capture record. */
static __always_inline void mc_note_key(const __u8 *buf, __u32 off, __u32 len)
{
}

#include "mcache_write.h"

/* ------------------------------------------------------------------ */
/* sockops: who joins                                                  */
/* ------------------------------------------------------------------ */

static __always_inline void v4_mapped(__u32 *a, __u32 ip4)
{
	a[0] = 0;
	a[1] = 0;
	a[2] = bpf_htonl(0xffff);
	a[3] = ip4;
}

/*
 * A socket's key (struct mc_sock_key) from a sockops or sk_msg context, as seen from one end
 * of the connection: `near` names that end's fields (local or remote), `far` the other's.
 * Every address word is read before the family decides: loads of either family's words merged
 * behind a branch would be a context pointer with an offset (refused by the verifier). Ports:
 * local_port is in host order in both contexts, remote_port in network order (high half).
 */
#define MC_PORT_local(p) (p)
#define MC_PORT_remote(p) bpf_ntohl(p)
#define MC_SOCK_KEY(k, ctx, near, far)                                                   \
	do {                                                                              \
		__u32 n4 = (ctx)->near##_ip4, f4 = (ctx)->far##_ip4;                        \
		(k).local[0] = (ctx)->near##_ip6[0];                                         \
		(k).local[1] = (ctx)->near##_ip6[1];                                         \
		(k).local[2] = (ctx)->near##_ip6[2];                                         \
		(k).local[3] = (ctx)->near##_ip6[3];                                         \
		(k).remote[0] = (ctx)->far##_ip6[0];                                         \
		(k).remote[1] = (ctx)->far##_ip6[1];                                         \
		(k).remote[2] = (ctx)->far##_ip6[2];                                         \
		(k).remote[3] = (ctx)->far##_ip6[3];                                         \
		if ((ctx)->family == MC_AF_INET) {                                            \
			v4_mapped((k).local, n4);                                             \
			v4_mapped((k).remote, f4);                                            \
		}                                                                         \
		(k).local_port = MC_PORT_##near((ctx)->near##_port);                         \
		(k).remote_port = MC_PORT_##far((ctx)->far##_port);                          \
	} while (0)

/* memcached's address, as the config names it (a wildcard: any local one). */
static __always_inline int memcached_addr(struct mc_config *cfg, const __u32 *a)
{
	if (a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff))
		return (cfg->families & MC_FAMILY_IPV4) &&
		       (cfg->server_addr == 0 || cfg->server_addr == a[3]);
	return (cfg->families & MC_FAMILY_IPV6) && mc_server6(cfg, a);
}

static __always_inline int sock_join(struct bpf_sock_ops *skops, struct mc_config *cfg)
{
	__u32 server = skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB;
	if (skops->family != MC_AF_INET && skops->family != MC_AF_INET6)
		return 0;
	struct mc_sock_key k = {};
	MC_SOCK_KEY(k, skops, local, remote); /* the socket's own */
	__u16 port = bpf_ntohs(cfg->port);
	if ((server ? k.local_port : k.remote_port) != port)
		return 0;
	/* Both ends on this host: a connection to the host's own address comes from it. */
	if (k.local[0] != k.remote[0] || k.local[1] != k.remote[1] ||
	    k.local[2] != k.remote[2] || k.local[3] != k.remote[3])
		return 0;
	if (!memcached_addr(cfg, k.local))
		return 0;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 0;
	/* The state first: a socket whose state could not be made never joins. */
	struct mc_bypass_conn *c = mc_bypass.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c)
		return 0;
	c->server = server;
	long err = mc_sockhash.sock_hash_update(skops, &k, BPF_NOEXIST);
	if (err) {
		c->left = 1;
		return 0;
	}
	count_at(mc_stat_line(cfg->stats_slot, MC_P_SOCKOPS), MC_V_JOINED);
	return 0;
}

int sock_main(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	struct mc_config *cfg = mc_config();
	if (!cfg || !cfg->bypass || bpf_get_netns_cookie(skops) != cfg->netns_cookie)
		return 1;
	sock_join(skops, cfg);
	return 1;
}

/* ------------------------------------------------------------------ */
/* sk_msg: each message to its peer, a client's read for writes first */
/* ------------------------------------------------------------------ */

/* To the peer socket's queue; a peer that is gone (it closed) leaves the bypass. */
static __always_inline int to_peer(struct sk_msg_md *msg, struct mc_bypass_conn *c, __u32 line)
{
	struct mc_sock_key peer = {};
	MC_SOCK_KEY(peer, msg, remote, local); /* the other end's */
	/* The helper's SK_DROP for a missing peer would drop the message: pass it instead. */
	long verdict = mc_sockhash.msg_redirect_hash(msg, &peer, BPF_F_INGRESS);
	if (verdict != SK_PASS) {
		count_at(line, MC_V_LEFT);
		return mc_bypass_leave(c);
	}
	count_at(line, MC_V_REDIRECT);
	return SK_PASS;
}

static __always_inline int leave(struct mc_bypass_conn *c, __u32 line)
{
	count_at(line, MC_V_LEFT);
	return mc_bypass_leave(c);
}

/* The client's message: its first command scanned, then to memcached with the verdict
 * covering that command's bytes. */
static __always_inline int client_msg(struct sk_msg_md *msg, struct mc_bypass_conn *c,
				      struct mc_sscratch *s)
{
	__u32 line = s->line;
	__u32 size = msg->size;
	__u64 n = size < MC_WIN ? size : MC_WIN;
	/* The kernel keeps a message's apply_bytes from the run before this one (on its first
	 * part) and would apply it again, over later messages too, unscanned: reset it. */
	bpf_msg_apply_bytes(msg, 0);
	if (n == 0)
		return to_peer(msg, c, line);
	if (bpf_msg_pull_data(msg, 0, n, 0))
		return leave(c, line);
	void *data = (void *)(long)msg->data;
	void *end = (void *)(long)msg->data_end;
	if (!MC_SIZE_OK(n, MC_WIN) || data + n > end)
		return leave(c, line);
	if (bpf_probe_read_kernel(s->buf, n, data))
		return leave(c, line);
	__u64 adv = 0;
	int r;
	if (c->skipping && c->after_cr && s->buf[0] == '\n') {
		adv = 1; /* the long line's "\r\n" was cut between two messages */
		r = MC_SCAN_NEXT;
	} else if (c->skipping) {
		r = mc_scan_skip(s->buf, &s->tok, n, size, &adv);
	} else {
		r = mc_scan_cmd(s->buf, &s->tok, n, size, &adv);
	}
	c->after_cr = 0;
	switch (r) {
	case MC_SCAN_NEXT:
		c->skipping = 0;
		break;
	case MC_SCAN_LONG:
		c->skipping = 1;
		break;
	case MC_SCAN_CUT:
		if (c->skipping) { /* the long line goes on in the next message */
			c->after_cr = s->buf[(n - 1) & MC_BUF_MASK] == '\r';
			return to_peer(msg, c, line);
		}
		/* Not held back for the rest (bpf_msg_cork_bytes): the kernel frees what is
		 * left of a corked message after a verdict that covers only part of it. It
		 * takes TCP, where XDP reads it. */
		return leave(c, line);
	default: /* MC_SCAN_UNSURE: the cache was emptied; where the stream stands is lost */
		return leave(c, line);
	}
	if (adv == 0 || adv > MC_APPLY_MAX)
		return leave(c, line);
	if (adv != size)
		bpf_msg_apply_bytes(msg, adv);
	return to_peer(msg, c, line);
}

static __always_inline int msg_run(struct sk_msg_md *msg, struct mc_bypass_conn *c,
				   struct mc_config *cfg)
{
	__u32 line = mc_stat_line(cfg->stats_slot, MC_P_SK_MSG);
	if (!cfg->bypass)
		return leave(c, line); /* the option is off: every connection leaves */
	if (c->server)
		return to_peer(msg, c, line);
	struct mc_sscratch *s = scratch();
	if (!s || __sync_val_compare_and_swap(&s->busy, 0, 1) != 0)
		return leave(c, line); /* another sender on this CPU holds the scratch */
	s->line = line;
	int verdict = client_msg(msg, c, s);
	s->busy = 0;
	return verdict;
}

int msg_main(struct sk_msg_md *msg)
{
	struct mc_bypass_conn *c = mc_bypass.sk_storage_get(msg->sk, 0, 0);
	if (!c || c->left)
		return SK_PASS;
	struct mc_config *cfg = mc_config();
	if (!cfg)
		return mc_bypass_leave(c);
	return msg_run(msg, c, cfg);
}
