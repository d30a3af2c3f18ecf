/*
 * admin.h - the admin listener (SPEC §3 admin_listen, §4.5, §9): /healthz,
 * /readyz, /metrics and the keys admin API over HTTP on their own address,
 * served by libevent's evhttp on the main thread's event loop. Admin requests
 * are not access-logged.
 */
#ifndef IDEM_ADMIN_H
#define IDEM_ADMIN_H

#include <stddef.h>

#include <stdbool.h>

#include "config.h"
#include "metrics.h"

struct event_base;
struct tls;
struct admin;

/* What the admin listener asks of the process; called on its own loop. */
struct admin_source {
    void (*gauges)(void *arg, struct metrics_gauges *out);
    bool (*draining)(void *arg);
    void *arg;
};

/*
 * Binds cfg->admin_listen and starts serving on base. Returns NULL with err
 * set to "" when admin_listen is off, and NULL with a phrase in err when the
 * address cannot be bound (a start-up failure for the caller to report).
 * src must outlive the admin listener. /readyz is 200 while src reports
 * redis_up and not draining. The address is read once: a reload does not
 * move the listener.
 */
struct admin *admin_start(struct event_base *base, struct config *cfg, struct tls *tls,
                          const struct admin_source *src, char *err, size_t errlen);

/* A reload took effect: the keys admin API (admin_keys.h) uses cfg and tls
 * from now on. The listener's address stays. */
void admin_reconfigure(struct admin *a, struct config *cfg, struct tls *tls);

/*
 * Closes the listener and every admin connection. Accepts NULL. Call before
 * event_base_free(), never from inside an admin request callback.
 */
void admin_free(struct admin *a);

#endif
