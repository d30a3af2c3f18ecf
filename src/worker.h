/*
 * worker.h - one worker: a thread with its own event loop, configuration,
 * Redis connections and upstream pool, accepting on duplicates of the
 * listening sockets main.c bound once. Workers share nothing that needs a
 * lock; the main thread talks to them through worker_* calls, which are safe
 * from any thread.
 */
#ifndef IDEM_WORKER_H
#define IDEM_WORKER_H

#include <stdbool.h>
#include <stddef.h>

#include "metrics.h"
#include "util.h"

struct event_base;
struct tls;
struct worker;

/*
 * Starts worker `index`: it parses config_text (the content of config_path,
 * validated by the caller) itself, serves TLS with tls (referenced; built by
 * the caller from the same text), accepts on duplicates of listen_fds (bound
 * once by the caller, parallel to the listen lines), connects, and only then
 * does this call return it. On failure returns NULL with a phrase in err (the
 * thread has ended). on_exit runs on main_base's loop when the worker's loop
 * has ended (after a drain).
 */
struct worker *worker_start(int index, const char *config_path, const char *config_text,
                            struct tls *tls, const int listen_fds[], int nlisten,
                            struct event_base *main_base, void (*on_exit)(void *arg), void *arg,
                            char *err, size_t errlen);

/* Asks the worker to reload: the same inputs as worker_start, which the
 * caller has validated (every worker parses the same bytes; one keeps its
 * old configuration if building the new one fails). Connections and requests
 * in flight carry on with what they started with. */
void worker_reload(struct worker *w, const char *config_text, struct tls *tls,
                   const int listen_fds[], int nlisten);

/* Asks the worker to stop accepting, finish what is in flight and end. */
void worker_drain(struct worker *w);

/* Waits for the thread and frees the worker. */
void worker_join(struct worker *w);

/* Adds this worker's gauges to out (redis_up is and-ed). */
void worker_add_gauges(const struct worker *w, struct metrics_gauges *out);

#endif
