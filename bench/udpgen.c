// SPDX-License-Identifier: GPL-2.0
/*
 * udpgen: the benchmarks' own small UDP load generator, for what memcaslap cannot do:
 * skewed (Zipf) key popularity, misses only, non-memcached UDP, and counting requests lost
 * while the data plane is swapped. Closed loop: `conc` requests in flight on one socket,
 * each identified by the memcached UDP frame header's request id; a request unanswered for
 * `timeout_ms` is counted lost and replaced. Stops by itself after `duration` seconds.
 *
 *   udpgen get  SERVER PORT DURATION_S CONC NKEYS ZIPF_S PREFIX TIMEOUT_MS [KEYS_PER_GET]
 *   udpgen raw  SERVER PORT DURATION_S CONC PAYLOAD_BYTES TIMEOUT_MS
 *   udpgen echo BIND_ADDR PORT DURATION_S        (the server for `raw`)
 *
 * Keys are PREFIX followed by the key index as %08u; ZIPF_S 0 is uniform. Prints one JSON
 * line: sent, replies, hits (VALUE), misses (END only), lost, ops_s, latency percentiles (us).
 * KEYS_PER_GET (1-32, default 1) sends multi-gets, `get k1 k2 ... kN`, keys drawn
 * independently; a reply is a hit when it carries N items (all keys hit), a miss otherwise,
 * and `items` counts the items of all replies. ops_s counts requests, not keys.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONC 256
#define MAX_KEYS_PER_GET 32
#define HIST_US 100000

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t rng = 88172645463325252ull;
static inline uint64_t xorshift(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static double *cdf;
static unsigned nkeys;

static void zipf_init(unsigned n, double s)
{
	nkeys = n;
	if (s <= 0)
		return;
	cdf = malloc(sizeof(double) * n);
	double sum = 0;
	for (unsigned i = 0; i < n; i++) {
		sum += 1.0 / pow(i + 1, s);
		cdf[i] = sum;
	}
	for (unsigned i = 0; i < n; i++)
		cdf[i] /= sum;
}

static unsigned pick_key(void)
{
	if (!cdf)
		return xorshift() % nkeys;
	double u = (xorshift() >> 11) * (1.0 / 9007199254740992.0);
	unsigned lo = 0, hi = nkeys - 1;
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		if (cdf[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	/* scatter popular ranks over the key space (and the cache's slots) */
	return (unsigned)(((uint64_t)lo * 2654435761u) % nkeys);
}

static int echo_server(const char *addr, int port, int duration)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	inet_pton(AF_INET, addr, &sa.sin_addr);
	if (bind(fd, (void *)&sa, sizeof(sa))) {
		perror("bind");
		return 1;
	}
	uint64_t end = now_ns() + (uint64_t)duration * 1000000000ull;
	char buf[2048];
	unsigned long n = 0;
	while (now_ns() < end) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 100) <= 0)
			continue;
		struct sockaddr_in from;
		socklen_t fl = sizeof(from);
		ssize_t r;
		while ((r = recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT, (void *)&from, &fl)) > 0) {
			sendto(fd, buf, r, 0, (void *)&from, fl);
			n++;
			fl = sizeof(from);
		}
	}
	printf("{\"echoed\": %lu}\n", n);
	return 0;
}

struct slot {
	uint64_t sent_ns;
	uint16_t rid;
	uint16_t got, total;
	int hit;
	unsigned items;
	int busy;
};

int main(int argc, char **argv)
{
	if (argc >= 5 && !strcmp(argv[1], "echo"))
		return echo_server(argv[2], atoi(argv[3]), atoi(argv[4]));
	int raw = argc >= 8 && !strcmp(argv[1], "raw");
	if (!raw && !(argc >= 10 && !strcmp(argv[1], "get"))) {
		fprintf(stderr, "usage: see the header of udpgen.c\n");
		return 2;
	}
	const char *server = argv[2];
	int port = atoi(argv[3]);
	double duration = atof(argv[4]);
	int conc = atoi(argv[5]);
	if (conc < 1 || conc > MAX_CONC)
		conc = conc < 1 ? 1 : MAX_CONC;
	unsigned payload = 0;
	const char *prefix = "";
	int timeout_ms;
	int kpg = 1;
	if (raw) {
		payload = atoi(argv[6]);
		if (payload < 8)
			payload = 8;
		if (payload > 1400)
			payload = 1400;
		timeout_ms = atoi(argv[7]);
	} else {
		zipf_init(atoi(argv[6]), atof(argv[7]));
		prefix = argv[8];
		timeout_ms = atoi(argv[9]);
		if (argc >= 11)
			kpg = atoi(argv[10]);
		if (kpg < 1 || kpg > MAX_KEYS_PER_GET)
			kpg = kpg < 1 ? 1 : MAX_KEYS_PER_GET;
		if (8 + 5 + kpg * (strlen(prefix) + 9) > 1500) {
			fprintf(stderr, "udpgen: %d keys of prefix %s pass one request\n", kpg, prefix);
			return 2;
		}
	}
	rng ^= (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;

	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	inet_pton(AF_INET, server, &sa.sin_addr);
	if (connect(fd, (void *)&sa, sizeof(sa))) {
		perror("connect");
		return 1;
	}
	int rb = 4 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, sizeof(rb));

	static uint32_t hist[HIST_US + 1];
	struct slot slots[MAX_CONC] = {0};
	unsigned long sent = 0, replies = 0, hits = 0, misses = 0, lost = 0, other = 0;
	unsigned long items = 0;
	double lat_sum = 0;
	uint16_t gen = 0;
	char req[1500], buf[2048];
	uint64_t start = now_ns();
	uint64_t end = start + (uint64_t)(duration * 1e9);
	uint64_t tmo = (uint64_t)timeout_ms * 1000000ull;

#define SEND(i)                                                                       \
	do {                                                                          \
		gen++;                                                                \
		slots[i].rid = (uint16_t)((gen << 8) | (i));                          \
		int n_;                                                               \
		req[0] = slots[i].rid >> 8;                                           \
		req[1] = slots[i].rid & 0xff;                                         \
		req[2] = req[3] = req[6] = req[7] = 0;                                \
		req[4] = 0;                                                           \
		req[5] = 1;                                                           \
		if (raw) {                                                            \
			memset(req + 8, 'p', payload - 8);                            \
			n_ = payload;                                                 \
		} else {                                                              \
			n_ = 8 + sprintf(req + 8, "get");                             \
			for (int k_ = 0; k_ < kpg; k_++)                              \
				n_ += sprintf(req + n_, " %s%08u", prefix, pick_key()); \
			n_ += sprintf(req + n_, "\r\n");                              \
		}                                                                     \
		slots[i].sent_ns = now_ns();                                          \
		slots[i].got = slots[i].total = 0;                                    \
		slots[i].hit = 0;                                                     \
		slots[i].items = 0;                                                   \
		slots[i].busy = 1;                                                    \
		if (send(fd, req, n_, 0) == n_)                                       \
			sent++;                                                       \
	} while (0)

	for (int i = 0; i < conc; i++)
		SEND(i);
	uint64_t last_check = now_ns();
	while (1) {
		uint64_t t = now_ns();
		if (t >= end)
			break;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int pr = poll(&p, 1, 1);
		if (pr > 0) {
			ssize_t r;
			while ((r = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT)) >= 8) {
				uint16_t rid = ((uint8_t)buf[0] << 8) | (uint8_t)buf[1];
				uint16_t total = ((uint8_t)buf[4] << 8) | (uint8_t)buf[5];
				int i = rid & 0xff;
				if (i >= conc || !slots[i].busy || slots[i].rid != rid) {
					other++; /* late reply to a request already counted lost */
					continue;
				}
				slots[i].got++;
				slots[i].total = total ? total : 1;
				if (!raw && r >= 13 && !memcmp(buf + 8, "VALUE", 5))
					slots[i].hit = 1;
				if (!raw && kpg > 1) {
					/* the values are the preload's 'x's: "VALUE " only starts items */
					buf[r] = 0;
					for (char *v = buf + 8; (v = memmem(v, buf + r - v, "VALUE ", 6));
					     v += 6)
						slots[i].items++;
				}
				int done = 1;
				if (!raw) {
					/* memcached may send the item and END as separate messages */
					done = r >= 13 && !memcmp(buf + r - 5, "END\r\n", 5);
				}
				if (!done)
					continue;
				uint64_t now = now_ns();
				uint64_t us = (now - slots[i].sent_ns) / 1000;
				hist[us > HIST_US ? HIST_US : us]++;
				lat_sum += us;
				replies++;
				if (kpg > 1) {
					items += slots[i].items;
					slots[i].hit = slots[i].items == (unsigned)kpg;
				}
				if (!raw) {
					if (slots[i].hit)
						hits++;
					else
						misses++;
				}
				slots[i].busy = 0;
				if (now < end)
					SEND(i);
			}
		}
		t = now_ns();
		if (t - last_check > 1000000) {
			last_check = t;
			for (int i = 0; i < conc; i++)
				if (slots[i].busy && t - slots[i].sent_ns > tmo) {
					lost++;
					slots[i].busy = 0;
					SEND(i);
				}
		}
	}
	double secs = (now_ns() - start) / 1e9;
	double pct[] = {0.5, 0.9, 0.99, 0.999};
	unsigned long pv[4] = {0};
	unsigned long acc = 0, maxus = 0;
	int k = 0;
	for (unsigned long us = 0; us <= HIST_US; us++) {
		if (hist[us])
			maxus = us;
		acc += hist[us];
		while (k < 4 && replies && acc >= pct[k] * replies)
			pv[k++] = us;
	}
	printf("{\"sent\": %lu, \"replies\": %lu, \"hits\": %lu, \"misses\": %lu, \"lost\": %lu, "
	       "\"keys_per_get\": %d, \"items\": %lu, "
	       "\"late\": %lu, \"seconds\": %.3f, \"ops_s\": %.1f, \"mean_us\": %.2f, "
	       "\"p50_us\": %lu, \"p90_us\": %lu, \"p99_us\": %lu, \"p999_us\": %lu, \"max_us\": %lu}\n",
	       sent, replies, hits, misses, lost, kpg, items, other, secs, replies / secs,
	       replies ? lat_sum / replies : 0.0, pv[0], pv[1], pv[2], pv[3], maxus);
	return 0;
}
