/*
 * admin.h - the admin listener (SPEC §3 admin_listen, §4.5): /healthz,
 * /readyz and /metrics over HTTP on their own address, served by libevent's
 * evhttp on the runtime's event loop. Admin requests are not access-logged.
 */
#ifndef IDEM_ADMIN_H
#define IDEM_ADMIN_H

#include <stddef.h>

#include "config.h"
#include "runtime.h"

struct admin;

/*
 * Binds cfg->admin_listen and starts serving on rt->base. Returns NULL with
 * err set to "" when admin_listen is off, and NULL with a phrase in err when
 * the address cannot be bound (a start-up failure for the caller to report).
 * rt must outlive the admin listener; rt->store may still be NULL (not
 * ready). The address is read once: a reload does not move the listener.
 */
struct admin *admin_start(struct runtime *rt, const struct config *cfg, char *err, size_t errlen);

/*
 * Closes the listener and every admin connection. Accepts NULL. Call before
 * event_base_free(), never from inside an admin request callback.
 */
void admin_free(struct admin *a);

#endif
