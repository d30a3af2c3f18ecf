/*
 * store_health.h - what Redis says of itself that puts the promise at risk:
 * a maxmemory-policy that evicts keys, no persistence (asked at every
 * connection), and writes refused for lack of memory. Process-wide: every
 * worker talks to the same Redis; any thread may read the results, through
 * store_redis_risks() and store_refusing_writes() (store.h).
 */
#ifndef IDEM_STORE_HEALTH_H
#define IDEM_STORE_HEALTH_H

struct redis_conn;

/* Asks on c (INFO memory, INFO persistence, CONFIG GET save); the answers
 * are logged (warn when the promise is at risk) and published. who names
 * the connection in the log ("redis 10.0.0.5:6379"). */
void store_health_check(struct redis_conn *c, const char *who);
/* Back to "not known" (a reload asks again). */
void store_health_forget(void);
/* Redis refused a write for lack of memory (an OOM reply). */
void store_health_note_oom(const char *reply);

#endif
