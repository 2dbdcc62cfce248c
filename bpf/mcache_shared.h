/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mcache: the one place where constants, verdicts and map value layouts live.
 *
 * The C programs include this file; the agent reads it too
 * (mcache_agent/constants.py parses the #defines and the verdict enum, and
 * takes struct layouts from bcc's BTF-derived ctypes), so nothing here is
 * copied into Python.
 *
 * Program-shape parameters (MC_CACHE_ENTRIES, MC_MAX_KEY, MC_MAX_VALUE) are
 * passed as -D flags by the agent at compile time; the defaults below are
 * what tests use when they compile without a config.
 */
#ifndef MCACHE_SHARED_H
#define MCACHE_SHARED_H

/* --- shape: changing any of these is a program hot swap (new cache map) --- */
#ifndef MC_CACHE_ENTRIES
#define MC_CACHE_ENTRIES 4096 /* slots; a power of two */
#endif
#ifndef MC_MAX_KEY
#define MC_MAX_KEY 250 /* memcached's own key limit */
#endif
#ifndef MC_MAX_VALUE
#define MC_MAX_VALUE 1024 /* bytes of value data a slot holds */
#endif
/* Slots per bucket: a key's hash picks a bucket of MC_WAYS adjacent slots and may sit in
 * any of them, so two hot keys whose hashes share the low bits both stay cached. */
#define MC_WAYS 4

/*
 * --- limits of a config ---
 * The schema (schemas/mcache-config.schema.json) states each again, the agent's checks read
 * them from here (mcache_agent/constants.py), and tests/unit/test_limits.py fails when the
 * two drift apart.
 */
#define MC_MIN_ENTRIES 16          /* smallest cache: a power of two of MC_WAYS buckets */
#define MC_MAX_ENTRIES_LIMIT 1048576
#define MC_KEY_LIMIT 250           /* memcached refuses longer keys */
#define MC_MAX_VALUE_LIMIT 1400    /* a cached reply must fit one UDP datagram ... */
#define MC_DATAGRAM_LIMIT 1400     /* ... of this many payload bytes: key + value + */
#define MC_REPLY_OVERHEAD 100      /* the frame header, "VALUE <key> <flags> <len>" and "END" */
#define MC_MAX_PREFIX 32           /* key prefix filter bytes */
#define MC_MAX_IFS 8               /* interfaces a config lists ... */
#define MC_MAX_SERVE_IFS 9         /* ... and lo, which the agent always serves */
#define MC_MAX_CLIENT_NETS 16      /* client networks a config lists (or its interfaces have) */
#define MC_MAX_ALLOWED 18          /* ... and the host's own address and 127.0.0.0/8 */

_Static_assert(MC_MAX_SERVE_IFS == MC_MAX_IFS + 1, "lo is served besides the listed interfaces");
_Static_assert(MC_MAX_ALLOWED == MC_MAX_CLIENT_NETS + 2,
	       "the host's own address and loopback are always allowed besides the listed networks");

/* --- fixed limits of the parsers (verifier bounds) --- */
#define MC_MAX_MULTIGET 32   /* keys in one ASCII multi-get answered by XDP (a power of two) */
#define MC_MGET_PER_CALL 4   /* ... looked up per xdp_get_key run: 8 tail calls for 32 keys */
#define MC_MGET_LINE 1536    /* bytes of a multi-get's line split into keys: 32 keys of 40 */
#define MC_MGET_ROOM 1459    /* bytes of a multi-get's items in one reply datagram */
#define MC_TAIL_CALLS 33     /* the kernel's cap on tail calls per packet (MAX_TAIL_CALL_CNT) */
#define MC_MAX_TCP_CMDS 8    /* commands parsed in one TCP segment */
#define MC_MAX_FILL_ITEMS 31 /* VALUE items filled from one reply (a multi-get with a miss) */
#define MC_META_RET 4        /* mg return flags answered from the cache: f, k, s, O */
#define MC_META_OPAQUE 32    /* memcached's longest opaque (O) token */
#define MC_MAX_EXT_HDRS 4    /* IPv6 extension headers walked to find TCP or UDP */
#define MC_MAX_LINE 320      /* bytes of an ASCII command line parsed */
#define MC_UDP_FRAME_HDR 8   /* memcached UDP frame: id, seq, count, reserved */
#define MC_BIN_HDR 24        /* memcached binary header */
#define MC_PROG_SETS 1       /* slots in the root dispatchers' prog arrays */

/* Tail calls, counted from the root dispatcher's: a multi-get's are xdp_main, xdp_get_parse,
 * xdp_get_key per MC_MGET_PER_CALL keys, xdp_reply, xdp_capture; a reply's fills are tc_main,
 * tc_fill_item per item (none after the last it may fill), tc_capture. */
_Static_assert((MC_MAX_MULTIGET & (MC_MAX_MULTIGET - 1)) == 0, "keys are indexed by a mask");
_Static_assert(2 + (MC_MAX_MULTIGET + MC_MGET_PER_CALL - 1) / MC_MGET_PER_CALL + 2 <= MC_TAIL_CALLS,
	       "a multi-get's lookups fit the tail-call cap");
_Static_assert(1 + MC_MAX_FILL_ITEMS + 1 <= MC_TAIL_CALLS, "a reply's fills fit the tail-call cap");

/*
 * --- sizes of the pinned maps (mcache_maps.h asserts them) ---
 * The agent estimates a config's kernel memory from these before it loads anything (the
 * 1 GiB check), and reports the kernel's own account once loaded.
 */
#define MC_SLOT_HEADER 192         /* struct mc_slot without its key and value buffers */
#define MC_PENDING_ENTRIES 65536   /* GETs that missed, awaiting their reply */
#define MC_PENDING_KEY_BYTES 20
#define MC_PENDING_VALUE_BYTES 280
#define MC_CONN_ENTRIES 65536      /* TCP write streams followed */
#define MC_CONN_KEY_BYTES 36
#define MC_CONN_VALUE_BYTES 24
#define MC_CARRY_ENTRIES 4096      /* command lines cut at a segment's end, awaiting the rest */
#define MC_CARRY_BYTES 384         /* ... the longest kept (MC_WIN): longer is no write we read */
#define MC_FLUSH_REASON_ENTRIES 16 /* counters of fallback flushes by reason */
#define MC_SOCK_KEY_BYTES 36       /* local bypass: a socket's key (mcache_bypass.h) */
#define MC_BYPASS_SOCKETS 65536    /* ... sockets in it at once (two per connection) */
#define MC_MISS_WAIT_MS 1000 /* a miss record older than this (in MC_MS ticks) waits for nothing */

/* The key hash (mc_hash): eight key bytes per step, each step a multiply and an xor-shift,
 * so a 32-byte key costs four steps instead of FNV-1a's 32. */
#define MC_HASH_SEED 0xcbf29ce484222325
#define MC_HASH_MUL 0x9e3779b97f4a7c15

/* cache.protocols bits */
#define MC_PROTO_ASCII 1
#define MC_PROTO_BINARY 2

/* config families bits: the address families whose GETs are answered (memcached.address) */
#define MC_FAMILY_IPV4 1
#define MC_FAMILY_IPV6 2

/* interface roles in the config map */
#define MC_ROLE_SERVE 1 /* answer GET hits and watch writes */
#define MC_ROLE_WATCH 2 /* watch writes only (e.g. lo) */

/*
 * XDP to TC ingress: a hit whose reply cannot be built in XDP's frame (generic XDP on a veth
 * or lo has ~256 bytes of room) is handed to tc_ingress in the CPU's scratch (struct
 * mc_handover, xdp_scratch.h), which answers it from the skb, grown to the interface's MTU.
 */
#define MC_META_FROM_SCRATCH 0xffffffff /* hand-over slot: the whole reply waits in the scratch */

/* binary protocol */
#define MC_BIN_REQ_MAGIC 0x80
#define MC_BIN_RES_MAGIC 0x81

/* Tail-call indexes inside one program set's own prog arrays (the agent fills them). */
#define MC_TAIL_GET_KEY 0   /* xdp_get_key */
#define MC_TAIL_REPLY 1     /* xdp_reply */
#define MC_TAIL_SCAN 2      /* xdp_scan */
#define MC_TAIL_GET_PARSE 3 /* xdp_get_parse */
#define MC_TAIL_CAPTURE 4   /* xdp_capture */
#define MC_TAIL_FILL_ITEM 0 /* tc_fill_item */
#define MC_TAIL_TC_CAPTURE 1 /* tc_capture */

/*
 * Verdicts, counted per CPU in the "mc_stats" map (index = verdict).
 * Keep MC_V_COUNT last; names are lower-cased without the MC_V_ prefix
 * by the agent ("hit", "miss", ...).
 */
enum mc_verdict {
	MC_V_HIT = 0,          /* GET answered from the cache with XDP_TX */
	MC_V_MISS = 1,         /* GET passed to memcached (no entry, or stale) */
	MC_V_PASS = 2,         /* not memcached traffic: passed untouched */
	MC_V_TOO_BIG = 3,      /* key or value over the configured limits */
	MC_V_INVALIDATE = 4,   /* a write invalidated one key's slot */
	MC_V_FLUSH = 5,        /* flush_all emptied the cache (generation bump) */
	MC_V_FALLBACK_FLUSH = 6, /* parser unsure of a write stream: emptied all */
	MC_V_FILL = 7,         /* a GET reply filled a slot */
	MC_V_FILL_REJECTED = 8, /* a fill refused by the race guard */
	MC_V_MALFORMED = 9,    /* memcached port, not well formed: passed */
	MC_V_DENIED = 10,      /* client outside cache.allowed_clients: passed */
	MC_V_DISABLED = 11,    /* kill switch off: passed */
	MC_V_EXPIRED = 12,     /* entry older than ttl_ms: treated as a miss */
	MC_V_GETS = 13,        /* gets (needs CAS): passed to memcached */
	MC_V_PROBE_HIT = 14,   /* a hit for the health probe's key: the probe's own evidence */
	MC_V_EVICT = 15,       /* a fill replaced another key's live entry (bucket full) */
	MC_V_TO_TC = 16,       /* a hit whose reply does not fit the XDP frame: to tc_ingress */
	MC_V_REDIRECT = 17,    /* local bypass: a message put in its peer socket's queue */
	MC_V_LEFT = 18,        /* local bypass: a connection left it (its messages take TCP) */
	MC_V_JOINED = 19,      /* local bypass: a connection joined it (sockops) */
	MC_V_UNREAD = 20,      /* TCP data no connection takes (none, or out of its window): passed */
	MC_V_OUT_OF_ORDER = 21, /* TCP data past a gap in what was read: dropped, TCP resends */
	MC_V_GUARDED = 22,     /* UDP to memcached from outside the allow-list: dropped (guard) */
	MC_V_HIDDEN = 23,      /* a packet that would hide a write from the scanner: dropped */
	MC_V_COUNT = 24,
};

/*
 * Why the write scanner emptied the whole cache (MC_V_FALLBACK_FLUSH): counted per reason in
 * mc_flush_why. Each is real traffic the kernel accepts that the scanner cannot read; none can
 * be caused by a segment outside a connection's window. Names are lower-cased without the
 * MC_FR_ prefix by the agent.
 */
enum mc_flush_reason {
	MC_FR_CUT_LINE = 0,      /* a command line cut at a segment's end and longer than a carry */
	MC_FR_UNSURE = 1,        /* a write whose keys cannot be named (base64 keys, long gat) */
	MC_FR_BLIND = 2,         /* data on a connection whose command boundaries are lost */
	MC_FR_UNKNOWN_STREAM = 3, /* a connection whose start was not seen (older than the maps) */
	MC_FR_DESYNC = 4,        /* the kernel took bytes of a connection that were never read */
	MC_FR_STEPS = 5,         /* more commands in one packet than the scanner may read */
	MC_FR_TAIL_CALL = 6,     /* a tail call failed (a program set being swapped) */
	MC_FR_LOAD = 7,          /* the packet's bytes could not be read */
	MC_FR_UDP_FRAGMENT = 8,  /* a fragmented UDP datagram to memcached (reassembled later) */
	MC_FR_COUNT = 9,
};

/*
 * The sub-program that decided (counted) a verdict: counters are kept per path, and a
 * capture record names it. Names are lower-cased without the MC_P_ prefix by the agent.
 */
enum mc_path {
	MC_P_XDP_MAIN = 0,      /* parse, classify, the common GET */
	MC_P_XDP_GET_PARSE = 1, /* any other ASCII get */
	MC_P_XDP_GET_KEY = 2,   /* one key of a GET looked up */
	MC_P_XDP_REPLY = 3,     /* a multi-key or binary reply written */
	MC_P_XDP_SCAN = 4,      /* a write stream's commands */
	MC_P_TC_MAIN = 5,       /* a reply from memcached, the common fill */
	MC_P_TC_FILL_ITEM = 6,  /* one item of another reply filled */
	MC_P_TC_INGRESS = 7,    /* a hit answered at TC ingress (the reply outgrew XDP's frame) */
	MC_P_SK_MSG = 8,        /* local bypass: a message between local sockets (sk_msg) */
	MC_P_SOCKOPS = 9,       /* local bypass: a TCP connection established (sockops) */
	MC_P_COUNT = 10,
};

/*
 * --- counters per config version ---
 * mc_stats holds MC_STAT_SLOTS lines of MC_P_COUNT x MC_V_COUNT per-CPU counters; a config
 * names its line (stats_slot) and every packet counts in the line of the config it read.
 * The agent gives each version a line (stat_slots: the version counted in each line) and,
 * before it gives a line to another version, adds its counts to stats_archive (by version).
 */
#define MC_STAT_SLOTS 8 /* a power of two */
#define MC_STAT_LINE (MC_P_COUNT * MC_V_COUNT)
#define MC_STAT_ENTRIES (MC_STAT_SLOTS * MC_STAT_LINE)
#define MC_ARCHIVE_VERSIONS 65536 /* versions whose counts the archive keeps */

/*
 * --- capture (mcache-agent capture) ---
 * Off unless a capture process has set mc_capture_ctl.on and renews its lease (until_ns);
 * then the frames its filters select are copied, with their verdicts, to the capture ring.
 */
#define MC_CAP_KEY 64             /* key bytes a record carries */
#define MC_CAP_SNAP 2048          /* frame bytes a record carries at most (a power of two) */
#define MC_CAP_RING_BYTES 4194304 /* the ring between the data plane and the capture */
#define MC_CAP_NONE MC_V_COUNT    /* verdict filter bit: frames that got no verdict */
#define MC_CAP_WAKE_EVERY 64      /* records of a CPU per wakeup of the capture process */
#define MC_CAP_POLL_MS 50         /* ... which also reads the ring this often */

/* Where in its way a captured frame was seen. */
enum mc_cap_stage {
	MC_CAP_IN = 0,     /* a request as it arrived (XDP) */
	MC_CAP_TX = 1,     /* the reply the data plane sent back with XDP_TX */
	MC_CAP_EGRESS = 2, /* a frame leaving the host (TC egress) */
};

struct mc_capture_ctl {
	__u32 on;
	__u32 ifindex;  /* 0: every interface */
	__u32 verdicts; /* a bit per verdict, and MC_CAP_NONE */
	__u32 snaplen;  /* frame bytes copied, at most MC_CAP_SNAP */
	__u64 until_ns; /* the lease (bpf_ktime_get_ns): nothing is copied after it */
	__u32 owner;    /* pid of the capture process */
	__u32 key_len;  /* 0: any key, else a record's key must start with key[0..key_len) */
	__u8 key[MC_CAP_KEY];
};

/* One record on the ring: this header, then cap_len bytes of the frame. */
struct mc_capture_hdr {
	__u64 ts_ns;     /* bpf_ktime_get_ns */
	__u32 ifindex;
	__u32 version;   /* the config version that decided */
	__u32 verdicts;  /* a bit per verdict counted for the frame */
	__u32 frame_len; /* the frame's length (cap_len may be less) */
	__u16 cap_len;
	__u16 key_full;  /* the key's length (key holds at most MC_CAP_KEY bytes of it) */
	__u8 path;       /* enum mc_path */
	__u8 stage;      /* enum mc_cap_stage */
	__u8 action;     /* XDP or TC action returned for the frame */
	__u8 key_len;
	__u8 key[MC_CAP_KEY];
};

#define MC_CAP_HDR 96 /* sizeof(struct mc_capture_hdr): the agent reads records by it */
_Static_assert(sizeof(struct mc_capture_hdr) == MC_CAP_HDR, "MC_CAP_HDR is the record header");

/*
 * Config: one element of an inner array map, swapped as a whole into
 * mc_cfg (array of maps, slot 0) -- the map hot swap. Addresses and ports
 * in network byte order.
 */
struct mc_cidr {
	__u32 addr;
	__u32 mask;
};

struct mc_cidr6 {
	__u32 addr[4];
	__u32 mask[4];
};

struct mc_config {
	__u32 version;       /* config version this map belongs to */
	__u32 enabled;       /* kill switch: 0 = pass everything */
	__u64 ttl_ns;        /* cap on an entry's age */
	__u64 fill_hold_ns;  /* fills refused this long after a write to the slot */
	__u32 server_addr;   /* memcached IPv4; 0 = any local address */
	__u16 port;          /* memcached port (network order) */
	__u16 protocols;     /* MC_PROTO_* bits */
	__u32 prefix_len;    /* 0 = cache every key */
	__u8 prefix[MC_MAX_PREFIX];
	__u32 n_allowed;     /* 0 = nobody may read from the cache */
	struct mc_cidr allowed[MC_MAX_ALLOWED];
	__u32 serve_ifindex[MC_MAX_SERVE_IFS]; /* 0-terminated; others watch only */
	__u64 unix_offset_ns; /* wall clock - ktime at apply: flush_all with a unix time */
	__u32 probe_hash;     /* mc_hash of the health probe's key */
	__u32 stats_slot;     /* the line of mc_stats this version counts in */
	/* IPv6 (writes are watched on every address of both families; these gate answers) */
	__u32 families;       /* MC_FAMILY_* bits: GETs answered over IPv4, IPv6 */
	__u32 server_addr6[4]; /* memcached IPv6; :: = any local address */
	__u32 n_allowed6;     /* IPv6 networks that may read from the cache */
	struct mc_cidr6 allowed6[MC_MAX_ALLOWED];
	/* local bypass (sock_bypass.c) */
	__u32 bypass;         /* 1: local connections to memcached join it, and stay in it */
	__u32 guard;          /* 1: UDP to memcached from outside the allow-list is dropped */
	__u64 netns_cookie;   /* the agent's network namespace: only its connections join */
};

/* Global state (mc_state[0]): the cache generation. */
struct mc_state {
	__u64 gen;            /* bumped by flush_all and fallbacks; older entries are dead */
	__u64 flush_at_ns;    /* flush_all <delay>: entries known before this die at it */
	__u64 flush_ns;       /* when the last flush arrived: fills wait fill_hold_ns after it */
};

#endif /* MCACHE_SHARED_H */
