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
#include <stdint.h>
#include <time.h>

#include "metrics.h"
#include "util.h"

struct config;
struct event_base;
struct tls;
struct worker;

/*
 * Starts worker `index` on cfg (referenced; parsed from config_path and its
 * upstreams resolved by the caller, never changed after), serving TLS with
 * tls (referenced; built by the caller from the same file), accepting on
 * duplicates of listen_fds (bound once by the caller, parallel to the listen
 * lines); connects, and only then does this call return it. On failure
 * returns NULL with a phrase in err (the thread has ended). on_exit runs on
 * main_base's loop when the worker's loop has ended (after a drain).
 */
struct worker *worker_start(int index, const char *config_path, struct config *cfg, struct tls *tls,
                            const int listen_fds[], int nlisten, struct event_base *main_base,
                            void (*on_exit)(void *arg), void *arg, char *err, size_t errlen);

/*
 * A reload, in two steps so that it is all or nothing across workers, each
 * naming the reload's generation (a number main increases every time):
 * worker_prepare hands the worker the same inputs as worker_start and asks
 * it to build what they need beside what runs; worker_prepared waits (until
 * the CLOCK_REALTIME deadline) for its answer to that generation: IDEM_OK,
 * or IDEM_ERR with a phrase in err. Then worker_decide commits (every worker
 * prepared) or aborts that generation; a decision about an older one is
 * ignored. Connections and requests in flight carry on with what they
 * started with.
 */
void worker_prepare(struct worker *w, uint64_t generation, struct config *cfg, struct tls *tls,
                    const int listen_fds[], int nlisten);
int worker_prepared(struct worker *w, uint64_t generation, const struct timespec *deadline,
                    char *err, size_t errlen) MUST_CHECK;
void worker_decide(struct worker *w, uint64_t generation, bool commit_it);

/* Asks the worker to stop accepting, finish what is in flight and end. */
void worker_drain(struct worker *w);

/* Waits for the thread and frees the worker. */
void worker_join(struct worker *w);

/* Adds this worker's gauges to out (redis_up is and-ed). */
void worker_add_gauges(const struct worker *w, struct metrics_gauges *out);

#endif
