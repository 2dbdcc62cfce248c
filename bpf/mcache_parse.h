/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Bounded parsing helpers over a scratch buffer (a copy of packet bytes).
 * Indexes are masked with MC_BUF_MASK so the verifier can bound them.
 */
#ifndef MCACHE_PARSE_H
#define MCACHE_PARSE_H

#include "mcache_maps.h"

#define MC_MAX_TOK 16 /* a power of two: a command word and up to 15 keys */

/*
 * buf[p] with p masked into the buffer. The empty asm keeps clang from
 * proving the mask redundant and folding the index into a pointer walk that
 * the verifier can no longer bound.
 */
static __always_inline __u32 mc_mask(__u32 p)
{
	asm volatile("" : "+r"(p));
	return p & MC_BUF_MASK;
}

/* Hides a loop counter from clang's loop rewrites, which merge "i < N" and
 * "i < len" into one trip count that the verifier cannot bound. */
#define MC_OPAQUE(x) asm volatile("" : "+r"(x))

/*
 * 1 <= x <= hi, tested so that the verifier sees both bounds on the register
 * later passed as a helper's size (clang would otherwise fold the two tests
 * into one on a copy: "x - 1 <= hi - 1").
 */
#define MC_SIZE_OK(x, hi) ({ \
	int __ok = 0; \
	MC_OPAQUE(x); \
	if ((x) >= 1) { \
		MC_OPAQUE(x); \
		if ((x) <= (hi)) \
			__ok = 1; \
	} \
	__ok; \
})
#define MC_AT(buf, p) ((buf)[mc_mask(p)])

/* Read a field of map memory back as the verifier sees it: an unknown value. */
#define MC_LOAD(x) (*(volatile typeof(x) *)&(x))

/*
 * Token positions. This lives in map memory (the per-CPU scratch), not on the
 * stack, on purpose: the verifier does not track map contents, so the values a
 * loop leaves here do not multiply the states it has to explore afterwards.
 */
struct mc_tokens {
	__u16 off[MC_MAX_TOK];
	__u16 len[MC_MAX_TOK];
	__u32 n;        /* tokens recorded */
	__u32 overflow; /* more tokens than recorded */
	__u32 start;    /* start of the token being read */
	__u32 end;      /* loop bound, re-read each time so that compares do not refine it */
	__u32 eol;      /* result of mc_find_crlf, kept in map memory likewise */
};

/*
 * Keys are read as little-endian words: whole words in a loop, then the last partial word
 * zero-padded past the length, outside the loop so that each step has one branch less for
 * the verifier to follow. Reads 8 bytes at a masked offset, so buf needs 8 bytes of room
 * past MC_BUF_MASK (every scratch buffer has MC_BUF_PAD).
 */
static __always_inline __u64 mc_word(const __u8 *buf, __u32 off)
{
	return *(const __u64 *)&buf[mc_mask(off)];
}

static __always_inline __u64 mc_low_bytes(__u64 w, __u32 n)
{
	return w & ((1ULL << ((n & 7) * 8)) - 1);
}

#define MC_KEY_WORDS ((MC_KEY_LIMIT + 7) / 8)

/* Whole words in len bytes, the word loops' bound. Hidden from clang: knowing len's range, it
 * would drop the loops' own bound (MC_KEY_WORDS), which the verifier needs. */
static __always_inline __u32 mc_full_words(__u32 len)
{
	__u32 full = len / 8;
	MC_OPAQUE(full);
	return full;
}

/*
 * Where the last, partial word starts: len & ~7, computed apart from the loop's bound. The
 * loop's exit pins its bound to one exact value per trip count; used after the loop, that
 * register would make the verifier follow the rest of the program once per key length.
 */
static __always_inline __u32 mc_tail_off(__u32 len)
{
	__u32 t = len;
	MC_OPAQUE(t);
	return t & ~7U;
}

static __always_inline __u64 mc_hash_step(__u64 h, __u64 w)
{
	h = (h ^ w) * MC_HASH_MUL;
	return h ^ (h >> 32);
}

/* The key hash over buf[off, off + len); len <= MC_KEY_LIMIT. layout.key_hash is its twin. */
static __always_inline __u32 mc_hash(const __u8 *buf, __u32 off, __u32 len)
{
	__u64 h = MC_HASH_SEED ^ len;
	__u32 full = mc_full_words(len);
	for (__u32 i = 0; i < MC_KEY_WORDS; i++) {
		MC_OPAQUE(i);
		if (i >= full)
			break;
		h = mc_hash_step(h, mc_word(buf, off + i * 8));
	}
	if (len & 7)
		h = mc_hash_step(h, mc_low_bytes(mc_word(buf, off + mc_tail_off(len)), len));
	h *= MC_HASH_MUL;
	return (__u32)(h ^ (h >> 32));
}

/* A byte of w equal to c (the classic "has zero byte" test on w ^ c repeated). */
static __always_inline __u64 mc_has_byte(__u64 w, __u8 c)
{
	__u64 x = w ^ (0x0101010101010101ULL * c);
	return (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
}

static __always_inline int mc_word_plain(__u64 w)
{
	return !(mc_has_byte(w, ' ') | mc_has_byte(w, '\r') | mc_has_byte(w, '\n'));
}

/* No space, CR or LF in buf[off, off + len): a key as memcached's tokenizer reads it, whole. */
static __always_inline int mc_key_plain(const __u8 *buf, __u32 off, __u32 len)
{
	__u32 full = mc_full_words(len);
	for (__u32 i = 0; i < MC_KEY_WORDS; i++) {
		MC_OPAQUE(i);
		if (i >= full)
			break;
		if (!mc_word_plain(mc_word(buf, off + i * 8)))
			return 0;
	}
	if (!(len & 7))
		return 1;
	/* The bytes past the key become 'a', which matches nothing. */
	__u64 keep = mc_low_bytes(~0ULL, len);
	__u64 w = mc_word(buf, off + mc_tail_off(len));
	return mc_word_plain((w & keep) | (0x6161616161616161ULL & ~keep));
}

/* key (a slot's, 8-byte aligned, len bytes) == buf[off, off + len), a word at a time. */
static __always_inline int mc_key_equal(const __u8 *key, const __u8 *buf, __u32 off, __u32 len)
{
	if (len > MC_KEY_BUF)
		return 0;
	__u32 full = mc_full_words(len);
	for (__u32 i = 0; i < MC_KEY_BUF / 8; i++) {
		MC_OPAQUE(i);
		if (i >= full)
			break;
		if (((const __u64 *)key)[i] != mc_word(buf, off + i * 8))
			return 0;
	}
	if (!(len & 7))
		return 1;
	__u32 t = mc_tail_off(len);
	MC_OPAQUE(t);
	if (t >= MC_KEY_BUF)
		return 0;
	return mc_low_bytes(*(const __u64 *)&key[t], len) == mc_low_bytes(mc_word(buf, off + t), len);
}

/* Offset of the first space in buf[off, off + max), or -1: a word at a time. */
static __always_inline int mc_find_space(const __u8 *buf, __u32 off, __u32 max)
{
	int at = -1;
	for (__u32 i = 0; i < MC_KEY_WORDS + 1; i++) {
		MC_OPAQUE(i);
		if (i * 8 >= max)
			break;
		__u64 m = mc_has_byte(mc_word(buf, off + i * 8), ' ');
		if (m) {
			/* The lowest flag marks the first space (a borrow only flags bytes above
			 * a match); its byte index read off a multiply. */
			__u32 b = (((m & -m) >> 7) * 0x0001020304050607ULL) >> 56;
			if (i * 8 + b < max)
				at = off + i * 8 + b;
			break;
		}
	}
	return at;
}

/* Offset of the first byte c in buf[off, off + max), max <= 16, or -1. */
static __always_inline int mc_find_byte(const __u8 *buf, __u32 off, __u32 max, __u8 c)
{
	int at = -1;
	for (__u32 i = 0; i < 16; i++) {
		MC_OPAQUE(i);
		if (i >= max)
			break;
		if (MC_AT(buf, off + i) == c) {
			at = off + i;
			break;
		}
	}
	return at;
}

/* Index of the first "\r\n" in buf[start, min(limit, start + MC_WIN + 2)), or -1. */
static __always_inline int mc_find_crlf(const __u8 *buf, __u32 start, __u32 limit)
{
	for (__u32 i = 0; i < MC_WIN + 1; i++) {
		MC_OPAQUE(i);
		__u32 p = start + i;
		if (p + 1 >= limit)
			break;
		if (MC_AT(buf, p) == '\r' && MC_AT(buf, p + 1) == '\n')
			return p;
	}
	return -1;
}

/* Split buf[start, end) on single spaces (memcached's own tokenizer does the same). */
static __always_inline void mc_tokenize(const __u8 *buf, __u32 start, __u32 end,
					struct mc_tokens *t)
{
	t->n = 0;
	t->overflow = 0;
	t->start = start;
	t->end = end;
	for (__u32 i = 0; i < MC_WIN; i++) {
		MC_OPAQUE(i);
		__u32 p = start + i;
		__u32 e = MC_LOAD(t->end);
		if (p > e)
			break;
		if (p == e || MC_AT(buf, p) == ' ') {
			__u32 ts = MC_LOAD(t->start);
			if (p > ts) {
				__u32 n = MC_LOAD(t->n);
				if (n >= MC_MAX_TOK) {
					t->overflow = 1;
					break;
				}
				t->off[n & (MC_MAX_TOK - 1)] = ts;
				t->len[n & (MC_MAX_TOK - 1)] = p - ts;
				t->n = n + 1;
			}
			t->start = p + 1;
		}
	}
}

/* Decimal u32 at buf[off, off + len); returns -1 when not a number. */
static __always_inline long long mc_atou(const __u8 *buf, __u32 off, __u32 len)
{
	long long v = 0;
	if (len == 0 || len > 10)
		return -1;
	for (__u32 i = 0; i < 10; i++) {
		MC_OPAQUE(i);
		if (i >= len)
			break;
		__u8 c = MC_AT(buf, off + i);
		if (c < '0' || c > '9')
			return -1;
		v = v * 10 + (c - '0');
	}
	if (v > 0xffffffffLL)
		return -1;
	return v;
}

/* Same, but a leading '-' (exptime -1) is allowed and ignored. */
static __always_inline int mc_is_int(const __u8 *buf, __u32 off, __u32 len)
{
	if (len > 0 && MC_AT(buf, off) == '-') {
		off++;
		len--;
	}
	return mc_atou(buf, off, len) >= 0;
}

/* Writes v in decimal into out[0..]; returns its length (1..10). */
/* Writes v in decimal into out[0, 16); returns its length (1..10). */
static __always_inline __u32 mc_utoa(__u32 v, __u8 *out)
{
	__u32 n = 1;
	__u32 t = v;
	for (int i = 0; i < 9; i++) {
		MC_OPAQUE(i);
		if (t < 10)
			break;
		t /= 10;
		n++;
	}
	for (__u32 i = 0; i < 10; i++) {
		MC_OPAQUE(i);
		if (i >= n)
			break;
		out[(n - 1 - i) & 15] = '0' + (v % 10);
		v /= 10;
	}
	return n;
}

/* Up to the first 8 bytes of a word as a little-endian number, to compare with MC_Wn(). */
static __always_inline __u64 mc_word64(const __u8 *buf, __u32 off, __u32 len)
{
	__u64 w = 0;
	for (int i = 0; i < 8; i++) {
		MC_OPAQUE(i);
		if (i >= len)
			break;
		w |= (__u64)MC_AT(buf, off + i) << (8 * i);
	}
	return w;
}

#define MC_W2(a, b) ((__u64)(a) | (__u64)(b) << 8)
#define MC_W3(a, b, c) (MC_W2(a, b) | (__u64)(c) << 16)
#define MC_W4(a, b, c, d) (MC_W3(a, b, c) | (__u64)(d) << 24)
#define MC_W5(a, b, c, d, e) (MC_W4(a, b, c, d) | (__u64)(e) << 32)
#define MC_W6(a, b, c, d, e, f) (MC_W5(a, b, c, d, e) | (__u64)(f) << 40)
#define MC_W7(a, b, c, d, e, f, g) (MC_W6(a, b, c, d, e, f) | (__u64)(g) << 48)
#define MC_W8(a, b, c, d, e, f, g, h) (MC_W7(a, b, c, d, e, f, g) | (__u64)(h) << 56)

#endif /* MCACHE_PARSE_H */
