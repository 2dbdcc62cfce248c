/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Who the cache answers: the allow-list, the amplification guard, the interfaces that serve,
 * the key prefix filter.
 *
 * Needs from its includer: xdp_scratch.h (struct mc_xscratch, mc_count).
 */
#ifndef MC_XDP_POLICY_H
#define MC_XDP_POLICY_H

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

#endif /* MC_XDP_POLICY_H */
