/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Include before <uapi/linux/in.h> and <uapi/linux/tcp.h>. Both include <linux/socket.h>,
 * which bcc resolves to the kernel's internal header: that one drags in linux/uio.h and a
 * good part of the kernel's headers with it, about a quarter of a second of every compile.
 * What the two use from it (__kernel_sa_family_t, struct __kernel_sockaddr_storage) is all
 * in its uapi half, so the internal header is marked as already seen.
 */
#ifndef MCACHE_SOCKET_H
#define MCACHE_SOCKET_H

#define _LINUX_SOCKET_H
#include <uapi/linux/socket.h>

#endif /* MCACHE_SOCKET_H */
