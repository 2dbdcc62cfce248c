/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The local bypass's state, shared by the stable roots (root.c) and every program set
 * (sock_bypass.c), pinned in MC_PIN_DIR beside the roots: it outlives program swaps and
 * layout changes, as the connections in it do.
 *
 *   mc_sockhash  the sockets of local connections to memcached, both ends, by their own
 *                addresses (struct mc_sock_key); a socket leaves it when it closes, never
 *                before (a reply still queued in a socket that leaves the map is lost)
 *   mc_bypass    per socket (socket storage): which end it is, whether its connection left
 *                the bypass for good, and where its client's stream stands
 */
#ifndef MCACHE_BYPASS_H
#define MCACHE_BYPASS_H

#include "mcache_shared.h"

#ifndef MC_PIN_DIR
#define MC_PIN_DIR "/sys/fs/bpf/mcache"
#endif

/* A socket by its own end first; IPv4 addresses as ::ffff:a.b.c.d; ports in host order. */
struct mc_sock_key {
	__u32 local[4];
	__u32 remote[4];
	__u16 local_port;
	__u16 remote_port;
};

_Static_assert(sizeof(struct mc_sock_key) == MC_SOCK_KEY_BYTES, "mc_sock_key size");

struct mc_bypass_conn {
	__u8 server;   /* memcached's end (its messages are replies) */
	__u8 left;     /* the connection left the bypass: every message takes TCP, for good */
	__u8 skipping; /* client's end: inside a line longer than the scanner's window */
	__u8 after_cr; /* ... whose last message ended in '\r' */
	__u32 pad;
};

/* bcc's BPF_SOCKHASH and BPF_SK_STORAGE, pinned (bcc has no pinned form of either). */
struct mc_sockhash_table_t {
	struct mc_sock_key key;
	int leaf;
	int (*update)(struct mc_sock_key *, int *);
	int (*delete)(struct mc_sock_key *);
	int (*sock_hash_update)(void *, void *, u64);
	int (*msg_redirect_hash)(void *, void *, u64);
	int (*sk_redirect_hash)(void *, void *, u64);
	u32 max_entries;
};
__attribute__((section("maps/sockhash:" MC_PIN_DIR "/sockhash")))
struct mc_sockhash_table_t mc_sockhash = {.max_entries = MC_BYPASS_SOCKETS};
BPF_ANNOTATE_KV_PAIR(mc_sockhash, struct mc_sock_key, int);

struct mc_bypass_table_t {
	int key;
	struct mc_bypass_conn leaf;
	void *(*sk_storage_get)(void *, void *, int);
	int (*sk_storage_delete)(void *);
	u32 flags;
};
__attribute__((section("maps/sk_storage:" MC_PIN_DIR "/bypass")))
struct mc_bypass_table_t mc_bypass = {.flags = BPF_F_NO_PREALLOC};
BPF_ANNOTATE_KV_PAIR(mc_bypass, int, struct mc_bypass_conn);

/* Leaving is one way: while earlier messages still wait in the peer's queue, a later one
 * over TCP is read after them (a socket reads its queue first), but the reverse is not
 * true, so a connection that took TCP once never comes back. */
static __always_inline int mc_bypass_leave(struct mc_bypass_conn *c)
{
	c->left = 1;
	return SK_PASS;
}

#endif /* MCACHE_BYPASS_H */
