/* SPDX-License-Identifier: GPL-2.0 */
/*
 * State shared by the ingress and egress programs. Every map that must
 * outlive the agent (or a program swap) is pinned under MC_STATE_DIR, so a
 * newly loaded program set picks up the same cache, counters and config.
 *
 * MC_STATE_DIR is the program set's view of the maps (<pins>/views/<set>):
 * the agent names each map by its own layout (mcache_agent/dataplane/identity.py)
 * and pins there the maps whose layout this build shares with the running one,
 * so that only the maps whose layout changed are made anew.
 */
#ifndef MCACHE_MAPS_H
#define MCACHE_MAPS_H

#include "mcache_shared.h"

#ifndef MC_PIN_DIR
#define MC_PIN_DIR "/sys/fs/bpf/mcache"
#endif
#ifndef MC_STATE_DIR
#define MC_STATE_DIR MC_PIN_DIR
#endif
#ifndef MC_SHAPE
#define MC_SHAPE "default"
#endif

#ifdef MC_LAYOUT_PASS
/* The agent's layout pass (loader worker "layout"): the types of the maps alone. Each map
 * becomes a one-entry hash map, never pinned, whatever its size in a real build. */
#undef BPF_TABLE_PINNED
#define BPF_TABLE_PINNED(_type, _key, _leaf, _name, _entries, ...) \
	BPF_F_TABLE("hash", _key, _leaf, _name, 1, 0)
#endif

#define MC_ROUND8(x) (((x) + 7) & ~7)
#define MC_KEY_BUF MC_ROUND8(MC_MAX_KEY)
#define MC_VAL_BUF MC_ROUND8(MC_MAX_VALUE)

/* Scratch buffers: power-of-two sizes so that "& MC_BUF_MASK" bounds an index. */
#define MC_BUF 2048
#define MC_BUF_MASK (MC_BUF - 1)
#define MC_BUF_PAD 512 /* lets a helper read up to 512 bytes from any masked offset */
#define MC_WIN 384     /* bytes of the packet looked at per command line */

/*
 * A bucket's summary, kept in the first 64 bytes of the bucket's first way: which hash each
 * way holds and since when, and which GET waits in it. A lookup, a miss and a fill choose
 * their way from this one cache line instead of reading the header of every way (a bucket
 * not in the CPU's cache cost a cache miss per way). Only hints: plain stores without a lock;
 * whatever is chosen is checked again under the chosen slot's lock.
 */
struct mc_bucket_meta {
	__u32 hash[MC_WAYS];      /* the hash each way was last filled with */
	__u32 fill_ms[MC_WAYS];   /* when (MC_MS), 0: free (never filled, or invalidated) */
	__u32 miss_hash[MC_WAYS]; /* the hash of the GET waiting in the way */
	__u32 miss_ms[MC_WAYS];   /* since when, 0: none */
};

#define MC_MS(ns) ((__u32)((ns) >> 20) | 1) /* ~1 ms ticks for the summary, never 0 */

_Static_assert(sizeof(struct mc_bucket_meta) == 64, "the bucket summary is one cache line");

/*
 * One way of a bucket. After the summary (used in a bucket's first way only), what a lookup
 * reads under the lock comes first, in one cache line.
 */
struct mc_slot {
	struct mc_bucket_meta meta;
	struct bpf_spin_lock lock;
	__u8 valid;
	__u8 has_flags;       /* the client flags are known: filled from a get, a binary GET or an
			       * mg that asked for f; an mg fill without f answers only mg without f */
	__u16 pad;
	__u32 hash;
	__u16 key_len;
	__u16 val_len;
	__u64 gen;            /* cache generation at fill; older is dead */
	__u64 fill_ns;
	/*
	 * A single-key GET that missed and waits for memcached's reply, kept in the way its
	 * fill will use: the miss costs a store here instead of an LRU map insert, and the
	 * reply finds it by the key's hash and the client's identity (no lookup and delete).
	 * Another miss in the bucket may take the way first: that reply then fills nothing.
	 */
	__u64 miss_get_ns;    /* 0: no GET waits here */
	__u64 miss_gen;
	__u32 miss_hash;
	__u16 miss_port;      /* client port and request id, as in mc_pending_key */
	__u16 miss_rid;
	__u8 unservable;      /* a reply did not fit the frame: pass GETs until refilled */
	__u8 has_cas;         /* filled from a binary reply: cas is memcached's */
	__u8 flags_str_len;   /* decimal text of flags, as memcached prints it */
	__u8 len_str_len;     /* decimal text of val_len */
	__u32 flags;          /* memcached client flags */
	/* second line: the write guard, the miss record's client, what only a hit's reply reads */
	__u64 write_ns;       /* last write seen for any key of this slot */
	__u32 miss_addr[4];   /* the waiting GET's client (IPv4 as ::ffff:a.b.c.d) */
	__u64 cas;
	__u8 flags_str[16];
	__u8 len_str[16];
	__u8 key[MC_KEY_BUF];
	__u8 val[MC_VAL_BUF];
};

_Static_assert(__builtin_offsetof(struct mc_slot, write_ns) == 128,
	       "the summary, then what a lookup reads, one cache line each");
_Static_assert(sizeof(struct mc_slot) == MC_SLOT_HEADER + MC_KEY_BUF + MC_VAL_BUF,
	       "MC_SLOT_HEADER is the slot's size without its buffers");

/* A GET that missed, remembered until its reply passes egress: the client (its IPv6
 * address, an IPv4 one as ::ffff:a.b.c.d), its port and the request id. */
struct mc_pending_key {
	__u32 client_addr[4];
	__u16 client_port;
	__u16 request_id;
};

struct mc_pending {
	__u64 get_ns;   /* when the GET arrived: fills older than a write are refused */
	__u64 gen;
	__u32 opaque;   /* binary: the reply must carry it; mg: the return flags asked, in order */
	__u16 key_len;  /* binary GET/GETQ and mg: the reply has no key, so keep it here */
	__u8 binary;
	__u8 meta;      /* an mg asking for v: opaque holds its return flags (see remember_get) */
	__u8 key[MC_KEY_LIMIT + 6];
};

_Static_assert(sizeof(struct mc_pending_key) == MC_PENDING_KEY_BYTES, "mc_pending_key size");
_Static_assert(sizeof(struct mc_pending) == MC_PENDING_VALUE_BYTES, "mc_pending size");

/* TCP write-stream parser state, per connection: IPv6 addresses, IPv4 ones as ::ffff:a.b.c.d. */
struct mc_conn_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
};

/*
 * Where the scanner stands in a connection's byte stream. Only the bytes the kernel will take
 * in order move it: see tcp_segment (xdp_ingress.c) and docs/HOSTILE_INPUT.md.
 */
enum mc_conn_mode {
	MC_CS_LINE = 0,    /* next_seq is the start of a command */
	MC_CS_VALUE = 1,   /* value bytes up to skip_seq, where the next command starts */
	MC_CS_CARRY = 2,   /* a command line cut at next_seq: its carry_len bytes in mc_carry */
	MC_CS_LONG = 3,    /* inside a line longer than a carry that writes nothing: to its end */
	MC_CS_LONG_CR = 4, /* ... whose last byte read was '\r' */
	MC_CS_BLIND = 5,   /* command boundaries lost: every later byte empties the cache */
};

struct mc_conn {
	__u32 base;      /* the stream's first sequence number (the client's ISN + 1): which
			  * connection of this address pair the state is for */
	__u32 next_seq;  /* the first byte not read yet */
	__u32 skip_seq;  /* MC_CS_VALUE: where the next command starts */
	__u16 mode;      /* enum mc_conn_mode */
	__u16 carry_len; /* MC_CS_CARRY: bytes of the cut line kept */
	__u64 seen_ns;   /* the last data read */
};

/* A command line cut at a segment's end, kept until the rest arrives. */
struct mc_carry {
	__u8 line[MC_CARRY_BYTES];
};
_Static_assert(MC_CARRY_BYTES == MC_WIN, "a carried line is read as one window");
_Static_assert(MC_FR_COUNT <= MC_FLUSH_REASON_ENTRIES, "a counter per flush reason");

_Static_assert(sizeof(struct mc_conn_key) == MC_CONN_KEY_BYTES, "mc_conn_key size");
_Static_assert(sizeof(struct mc_conn) == MC_CONN_VALUE_BYTES, "mc_conn size");

/* Counters: line (stats_slot) x path x verdict, see MC_STAT_SLOTS. The agent alone writes
 * stat_slots (which version each line counts) and stats_archive (the counts of versions whose
 * line went to another version); the programs only count. */
BPF_TABLE_PINNED("percpu_array", u32, u64, mc_stats, MC_STAT_ENTRIES, MC_STATE_DIR "/stats");
BPF_TABLE_PINNED("array", u32, u32, mc_stat_slots, MC_STAT_SLOTS, MC_STATE_DIR "/stat_slots");
struct mc_stat_line {
	__u64 n[MC_STAT_LINE];
};
BPF_TABLE_PINNED("hash", u32, struct mc_stat_line, mc_stats_archive, MC_ARCHIVE_VERSIONS,
		 MC_STATE_DIR "/stats_archive", BPF_F_NO_PREALLOC);
/* Capture: its control (written by the capture process), the ring, records it had no room for. */
BPF_TABLE_PINNED("array", u32, struct mc_capture_ctl, mc_capture_ctl, 1,
		 MC_STATE_DIR "/capture_ctl");
BPF_TABLE_PINNED("percpu_array", u32, u64, mc_capture_lost, 1, MC_STATE_DIR "/capture_lost");
struct mc_capture_ring_table_t {
	int key;
	u32 leaf;
	int (*ringbuf_output)(void *, u64, u64);
	u32 max_entries;
};
/* BPF_RINGBUF_OUTPUT with a pin path (bcc has no pinned form of the macro). */
#ifndef MC_LAYOUT_PASS
__attribute__((section("maps/ringbuf:" MC_STATE_DIR "/capture_ring")))
struct mc_capture_ring_table_t mc_capture_ring = {.max_entries = MC_CAP_RING_BYTES};
#endif
BPF_TABLE_PINNED("array", u32, struct mc_state, mc_state, 1, MC_STATE_DIR "/state");
BPF_TABLE("array", u32, struct mc_config, mc_cfg_tmpl, 1);
BPF_TABLE_PINNED("array_of_maps$mc_cfg_tmpl", u32, int, mc_cfg, 1, MC_STATE_DIR "/cfg");
BPF_TABLE_PINNED("array", u32, struct mc_slot, mc_cache, MC_CACHE_ENTRIES,
		 MC_STATE_DIR "/cache_" MC_SHAPE);
/* Live entries of this cache, by generation parity (see mc_level_add). */
BPF_TABLE_PINNED("array", u32, u64, mc_level, 2, MC_STATE_DIR "/level_" MC_SHAPE);
BPF_TABLE_PINNED("lru_hash", struct mc_pending_key, struct mc_pending, mc_pending,
		 MC_PENDING_ENTRIES, MC_STATE_DIR "/pending");
BPF_TABLE_PINNED("lru_hash", struct mc_conn_key, struct mc_conn, mc_conn, MC_CONN_ENTRIES,
		 MC_STATE_DIR "/conn");
BPF_TABLE_PINNED("lru_hash", struct mc_conn_key, struct mc_carry, mc_carry, MC_CARRY_ENTRIES,
		 MC_STATE_DIR "/carry");
/* Fallback flushes by reason (enum mc_flush_reason). */
BPF_TABLE_PINNED("percpu_array", u32, u64, mc_flush_why, MC_FLUSH_REASON_ENTRIES,
		 MC_STATE_DIR "/flush_why");

/* First slot of the bucket of a key's hash (MC_CACHE_ENTRIES is a power of two >= MC_WAYS). */
static __always_inline __u32 mc_bucket(__u32 hash)
{
	return (hash & (MC_CACHE_ENTRIES / MC_WAYS - 1)) * MC_WAYS;
}

/*
 * What a lookup judges an entry by, read once per key: the time, the cache's generation
 * (older entries are dead), the cut of a delayed flush_all that has come (entries known
 * from before it are dead; 0 while it has not come) and the config's TTL.
 */
struct mc_judge {
	__u64 now;
	__u64 gen;
	__u64 cut;
	__u64 ttl;
};

/* Reads j for a lookup now; 0 when there is no state map (never, once loaded): a pass. */
static __always_inline int mc_judge_now(struct mc_judge *j, __u64 ttl_ns)
{
	u32 zero = 0;
	struct mc_state *st = mc_state.lookup(&zero);
	if (!st)
		return 0;
	j->now = bpf_ktime_get_ns();
	j->gen = st->gen;
	__u64 at = st->flush_at_ns;
	j->cut = at && j->now >= at ? at : 0;
	j->ttl = ttl_ns;
	return 1;
}

/* A slot's entry (its lock held, its generation checked) is too old to serve: older than the
 * TTL, or known from before a flush that has come. */
static __always_inline int mc_entry_stale(struct mc_slot *slot, const struct mc_judge *j)
{
	return j->now - slot->fill_ns > j->ttl || slot->fill_ns < j->cut;
}

/* The first counter of a path's verdicts in a config's line of mc_stats. */
static __always_inline __u32 mc_stat_line(__u32 slot, __u32 path)
{
	return (slot & (MC_STAT_SLOTS - 1)) * MC_STAT_LINE + path * MC_V_COUNT;
}

static __always_inline void mc_count_at(__u32 index, __u64 n)
{
	u64 *c = mc_stats.lookup(&index);
	if (c)
		*c += n;
}

/* Counts a verdict of the packet at hand: each program file defines it, in the line and
 * path of the packet it is working on (kept in its scratch), and notes it for a capture. */
static __always_inline void mc_count(__u32 verdict);

/* The summary of the bucket whose first way is base (see struct mc_bucket_meta). */
static __always_inline struct mc_bucket_meta *mc_meta(__u32 base)
{
	struct mc_slot *first = mc_cache.lookup(&base);
	return first ? &first->meta : NULL;
}

#define MC_NO_CACHE (-2)

/*
 * Where a lookup of hash looks, by its bucket's summary (a hint, checked under the slot's
 * lock): the way that holds the hash (also in *idx), or -1 when none does: the key is not
 * cached, or its fill is completing right now, a miss either way, which is always safe (*idx
 * is then the bucket's first, not to be touched). MC_NO_CACHE: no cache map.
 */
static __always_inline int mc_locate(__u32 hash, __u32 *idx)
{
	__u32 base = mc_bucket(hash);
	*idx = base;
	struct mc_bucket_meta *m = mc_meta(base);
	if (!m)
		return MC_NO_CACHE;
	int way = -1;
	for (__u32 w = 0; w < MC_WAYS; w++) {
		if (m->hash[w] == hash && m->fill_ms[w]) {
			way = base + w;
			break;
		}
	}
	if (way >= 0)
		*idx = way;
	return way;
}

/*
 * The slot a lookup of hash reads, by mc_locate (*way -1: no way holds it, *idx is the
 * bucket's first and its slot is not to be touched), and what its entry is judged by (j).
 * NULL when there is no cache or state map (never, once loaded): the request passes.
 */
static __always_inline struct mc_slot *mc_lookup_slot(__u32 hash, __u32 *idx, int *way,
						      struct mc_judge *j, __u64 ttl_ns)
{
	*way = mc_locate(hash, idx);
	if (*way == MC_NO_CACHE)
		return NULL;
	struct mc_slot *slot = mc_cache.lookup(idx);
	if (!slot || !mc_judge_now(j, ttl_ns))
		return NULL;
	return slot;
}

/*
 * The way to fill with hash: the one that holds (or held) it, else a free one, else the one
 * filled longest ago. A hint: the fill takes the chosen slot's lock and its guard, and a way
 * that another fill takes meanwhile is simply overwritten (invalidation clears the key in
 * every way).
 */
static __always_inline __u32 mc_pick_way(struct mc_bucket_meta *m, __u32 base, __u32 hash)
{
	__u32 idx = base;
	__u32 oldest = ~0U;
	for (__u32 w = 0; w < MC_WAYS; w++) {
		if (m->hash[w] == hash) {
			idx = base + w;
			break;
		}
		if (m->fill_ms[w] < oldest) {
			oldest = m->fill_ms[w];
			idx = base + w;
		}
	}
	return idx;
}

/* a is memcached's IPv6 address: the config's, or any when that is :: (all zero). */
static __always_inline int mc_server6(struct mc_config *cfg, const __u32 *a)
{
	const __u32 *m = cfg->server_addr6;
	return !(m[0] | m[1] | m[2] | m[3]) ||
	       (a[0] == m[0] && a[1] == m[1] && a[2] == m[2] && a[3] == m[3]);
}

static __always_inline struct mc_config *mc_config(void)
{
	u32 zero = 0;
	void *inner = mc_cfg.lookup(&zero);
	if (!inner)
		return NULL;
	return bpf_map_lookup_elem(inner, &zero);
}

static __always_inline __u64 mc_gen(void)
{
	u32 zero = 0;
	struct mc_state *st = mc_state.lookup(&zero);
	return st ? st->gen : 0;
}

/*
 * The cache's fill level, kept as it changes so that reading it costs one lookup however
 * large the cache: +1 when a fill takes a slot that held no live entry, -1 when a live
 * entry is invalidated or expires. Counted per generation parity: a generation bump kills
 * every entry at once, so the next generation's count starts at zero, and an update that
 * raced the bump lands in the count nobody reads.
 */
static __always_inline void mc_level_add(__u64 gen, __s64 delta)
{
	u32 k = gen & 1;
	u64 *n = mc_level.lookup(&k);
	if (n)
		__sync_fetch_and_add(n, delta);
}

/* Empties the whole cache at once: entries of an older generation are dead. */
static __always_inline void mc_bump_gen(__u32 verdict)
{
	u32 zero = 0;
	struct mc_state *st = mc_state.lookup(&zero);
	if (st) {
		/* Like a write to every slot: a GET that arrives while the flush is still in
		 * flight inside memcached may read a value the flush removes. */
		st->flush_ns = bpf_ktime_get_ns();
		u32 next = (st->gen + 1) & 1;
		u64 *n = mc_level.lookup(&next);
		if (n)
			*n = 0;
		__sync_fetch_and_add(&st->gen, 1);
	}
	mc_count(verdict);
}

/* The scanner cannot read traffic the kernel will take: empty the cache, and say why. */
static __always_inline void mc_fallback_flush(__u32 reason)
{
	u32 r = reason;
	u64 *n = mc_flush_why.lookup(&r);
	if (n)
		*n += 1;
	mc_bump_gen(MC_V_FALLBACK_FLUSH);
}

#endif /* MCACHE_MAPS_H */
