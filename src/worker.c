/*
 * worker.c - a worker thread and its event loop.
 *
 * Each worker is a complete proxy on the configuration main.c parsed (one
 * immutable struct config, shared by reference, its upstream names resolved
 * once): it accepts on its own duplicates of the listening sockets that
 * main.c bound once, keeps its own Redis connections and upstream pool, and
 * serves its connections from start to end. Nothing on the request path is
 * shared between workers, so nothing needs a lock; whichever worker's loop
 * is free takes the next connection from the shared accept queue.
 *
 *   main thread                         worker thread
 *   worker_start() --pthread_create-->  setup: pool, store, listeners
 *        waits on the handshake  <----  started (or failed, with a reason)
 *   worker_prepare()  ---- 'p' ---->    build pool and listeners, keep them aside
 *   worker_prepared() waits  <-------   ready (or failed, with a reason)
 *   worker_decide()   ---- 'c' ---->    swap them in, or let them go
 *   (each step names the reload's generation: late answers and decisions
 *   about an older reload are ignored)
 *   worker_drain()    ---- 'd' ---->    ... loop ends after the drain ...
 *   on_exit on the main loop  <-------  one byte up the exit pipe
 *   worker_join()
 *
 * A reload is all or nothing: main commits only when every worker has
 * prepared, and aborts everywhere otherwise.
 *
 * Commands cross threads as bytes on pipes, never as calls into another
 * thread's event base: libevent's bases then need no locks at all (no
 * evthread_use_pthreads), so the request path takes none.
 */
#include "worker.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "flush.h"
#include "latency.h"
#include "log.h"
#include "runtime.h"
#include "server.h"
#include "store.h"
#include "tls.h"
#include "upstream.h"

enum { COMMAND_PREPARE = 'p', COMMAND_DECIDE = 'c', COMMAND_DRAIN = 'd' };

/* What main hands a worker to start or reload with. */
struct worker_input {
    uint64_t generation;               /* which reload this is (main counts them) */
    struct config *cfg;                /* referenced; parsed and resolved by main */
    struct tls *tls;                   /* built by main from the same file */
    int listen_fds[CONFIG_MAX_LISTEN]; /* our duplicates of main's, parallel to the listen lines */
    int nlisten;
};

/* A reload built and waiting for main's word (worker thread only). */
struct prepared {
    uint64_t generation;
    struct config *cfg;
    struct tls *tls;
    struct upstream_pool *pool;
    struct server_listeners *listeners;
};

struct worker {
    int index;
    char *config_path;
    struct worker_input next; /* set by main under `lock`, taken by the worker */
    struct prepared prepared; /* the worker's own */
    pthread_t thread;
    struct runtime rt;
    int command_pipe[2];   /* main writes COMMAND_* bytes, the worker reads */
    int exit_pipe[2];      /* the worker writes one byte when its loop has ended */
    struct event *command; /* on the worker's base, reading command_pipe */
    _Atomic bool redis_up; /* published by the store for the main thread */
    bool joinable;
    struct event *shutdown_timer;
    struct event *exited; /* on the main loop, reading exit_pipe: runs on_exit */
    void (*on_exit)(void *arg);
    void *on_exit_arg;

    /* start-up handshake, used once */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int started; /* 0 waiting, 1 serving, -1 failed */
    char err[256];
    /* Reload handshake, under `lock`. Every message names its generation:
     * after a prepare that timed out, a late answer or a late decision
     * about an older reload must not pass for the current one's. */
    uint64_t reported_generation; /* the prepare answered last */
    int prepare_state;            /* its answer: 1 prepared, -1 failed */
    char prepare_err[256];
    uint64_t decided_generation; /* main's last decision: commit or abort that generation */
    bool decided_commit;
};

/* ---- draining ----------------------------------------------------------- */

static void maybe_exit(struct runtime *rt)
{
    if (rt->draining && rt->exchanges == 0 && rt->clients == 0)
        event_base_loopexit(rt->base, NULL);
}

static void on_shutdown_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    log_warn("worker %d: shutdown_timeout passed with %d request(s) in flight; exiting anyway",
             w->index, (int)w->rt.exchanges);
    event_base_loopexit(w->rt.base, NULL);
}

static void drain(struct worker *w)
{
    struct runtime *rt = &w->rt;
    if (rt->draining)
        return;
    rt->draining = true;
    server_drain(rt->server);
    uint64_t ms = rt->cfg->shutdown_timeout_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    w->shutdown_timer = evtimer_new(rt->base, on_shutdown_timeout, w);
    evtimer_add(w->shutdown_timer, &tv);
    maybe_exit(rt);
}

/* ---- reload ------------------------------------------------------------- */

static void free_input(struct worker_input *in)
{
    if (in->cfg)
        config_unref(in->cfg);
    tls_unref(in->tls);
    for (int i = 0; i < in->nlisten; i++)
        if (in->listen_fds[i] >= 0)
            close(in->listen_fds[i]);
    memset(in, 0, sizeof(*in));
}

/*
 * Runs in main's thread. The sockets are duplicated here, at once: main may
 * close its own (an address dropped by a later reload) before the worker
 * gets to them. A failed duplicate (-1) makes the worker's listen fail.
 */
static void set_input(struct worker_input *in, struct config *cfg, struct tls *tls,
                      const int listen_fds[], int nlisten)
{
    free_input(in);
    in->cfg = config_ref(cfg);
    in->tls = tls_ref(tls);
    for (int i = 0; i < nlisten; i++)
        in->listen_fds[i] = fcntl(listen_fds[i], F_DUPFD_CLOEXEC, 0);
    in->nlisten = nlisten;
}

/* What main handed over last, now ours. */
static void take_input(struct worker *w, struct worker_input *in)
{
    pthread_mutex_lock(&w->lock);
    *in = w->next;
    memset(&w->next, 0, sizeof(w->next));
    pthread_mutex_unlock(&w->lock);
}

static void discard_prepared(struct prepared *p)
{
    upstream_pool_free(p->pool);
    server_listeners_discard(p->listeners);
    if (p->cfg)
        config_unref(p->cfg);
    tls_unref(p->tls);
    memset(p, 0, sizeof(*p));
}

static void report_prepared(struct worker *w, uint64_t generation, int state, const char *err)
{
    pthread_mutex_lock(&w->lock);
    w->reported_generation = generation;
    w->prepare_state = state;
    snprintf(w->prepare_err, sizeof(w->prepare_err), "%s", err);
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

/* Builds what the new configuration needs, beside the running one. */
static void prepare(struct worker *w)
{
    struct runtime *rt = &w->rt;
    struct worker_input in;
    char err[256] = "";
    take_input(w, &in);
    if (in.cfg == NULL)
        return; /* a late 'p' whose input an earlier one took */
    discard_prepared(&w->prepared);
    struct server_listeners *listeners =
        server_listeners_prepare(rt->server, in.cfg, in.listen_fds, err, sizeof(err));
    if (listeners == NULL) {
        log_error("worker %d: cannot prepare the new configuration: %s", w->index, err);
        report_prepared(w, in.generation, -1, err);
        free_input(&in);
        return;
    }
    w->prepared = (struct prepared){
        .generation = in.generation,
        .cfg = in.cfg,
        .tls = in.tls,
        .pool = upstream_pool_new(rt->base, rt->flusher, in.cfg, in.tls),
        .listeners = listeners,
    };
    report_prepared(w, in.generation, 1, "");
    in.cfg = NULL;
    in.tls = NULL;
    free_input(&in);
}

/* Swaps in what prepare built. Requests in flight keep what they began with. */
static void commit(struct worker *w)
{
    struct runtime *rt = &w->rt;
    struct prepared *p = &w->prepared;
    if (p->cfg == NULL)
        return;
    server_listeners_commit(rt->server, p->listeners);
    if (store_target_differs(rt->store, p->cfg)) {
        /* Requests in flight keep the old store (their keys live there)
         * until they end; new ones use the new target. */
        log_info("worker %d: redis settings changed; new requests use the new target", w->index);
        store_publish_readiness(rt->store, NULL);
        store_unref(rt->store);
        rt->store = store_new(rt->base, rt->flusher, p->cfg, p->tls);
        store_publish_readiness(rt->store, &w->redis_up);
    } else {
        store_reconfigure(rt->store, p->cfg);
    }
    upstream_pool_free(rt->pool);
    rt->pool = p->pool;
    config_unref(rt->cfg);
    rt->cfg = p->cfg;
    tls_unref(rt->tls);
    rt->tls = p->tls;
    memset(p, 0, sizeof(*p));
    log_debug("worker %d: configuration reloaded", w->index);
}

/* Main's word on a prepared reload: applies only to the generation it names. */
static void decide(struct worker *w)
{
    pthread_mutex_lock(&w->lock);
    uint64_t generation = w->decided_generation;
    bool commit_it = w->decided_commit;
    pthread_mutex_unlock(&w->lock);
    if (w->prepared.cfg == NULL || w->prepared.generation != generation)
        return; /* about another reload, or already applied */
    if (commit_it && !w->rt.draining)
        commit(w);
    else
        discard_prepared(&w->prepared);
}

static void on_command(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct worker *w = arg;
    char commands[16];
    ssize_t n = read(fd, commands, sizeof(commands));
    for (ssize_t i = 0; i < n; i++) {
        if (commands[i] == COMMAND_DRAIN)
            drain(w);
        else if (commands[i] == COMMAND_PREPARE)
            prepare(w);
        else if (commands[i] == COMMAND_DECIDE)
            decide(w);
    }
}

static void post(struct worker *w, char command)
{
    /* One byte into a pipe nobody fills faster than the worker empties it. */
    if (write(w->command_pipe[1], &command, 1) != 1)
        log_error("worker %d: cannot send command '%c': %s", w->index, command, strerror(errno));
}

void worker_prepare(struct worker *w, uint64_t generation, struct config *cfg, struct tls *tls,
                    const int listen_fds[], int nlisten)
{
    pthread_mutex_lock(&w->lock);
    set_input(&w->next, cfg, tls, listen_fds, nlisten);
    w->next.generation = generation;
    pthread_mutex_unlock(&w->lock);
    post(w, COMMAND_PREPARE);
}

int worker_prepared(struct worker *w, uint64_t generation, const struct timespec *deadline,
                    char *err, size_t errlen)
{
    pthread_mutex_lock(&w->lock);
    while (w->reported_generation != generation)
        if (pthread_cond_timedwait(&w->cond, &w->lock, deadline) != 0)
            break;
    bool answered = w->reported_generation == generation;
    int state = answered ? w->prepare_state : 0;
    if (state < 0)
        snprintf(err, errlen, "worker %d: %s", w->index, w->prepare_err);
    else if (!answered)
        snprintf(err, errlen, "worker %d: no answer in time", w->index);
    pthread_mutex_unlock(&w->lock);
    return state > 0 ? IDEM_OK : IDEM_ERR;
}

void worker_decide(struct worker *w, uint64_t generation, bool commit_it)
{
    pthread_mutex_lock(&w->lock);
    w->decided_generation = generation;
    w->decided_commit = commit_it;
    pthread_mutex_unlock(&w->lock);
    post(w, COMMAND_DECIDE);
}

void worker_drain(struct worker *w)
{
    post(w, COMMAND_DRAIN);
}

/* ---- the thread --------------------------------------------------------- */

static int setup(struct worker *w)
{
    struct runtime *rt = &w->rt;
    struct event_config *ec = event_config_new();
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK); /* one thread only: no locks */
    rt->base = event_base_new_with_config(ec);
    event_config_free(ec);
    rt->flusher = flusher_new(rt->base);
    rt->on_idle = maybe_exit;
    w->command = event_new(rt->base, w->command_pipe[0], EV_READ | EV_PERSIST, on_command, w);
    event_add(w->command, NULL);
    rt->server = server_new(rt);
    struct worker_input in;
    take_input(w, &in);
    rt->cfg = in.cfg;
    rt->tls = in.tls;
    in.cfg = NULL;
    in.tls = NULL;
    rt->pool = upstream_pool_new(rt->base, rt->flusher, rt->cfg, rt->tls);
    struct server_listeners *listeners =
        server_listeners_prepare(rt->server, rt->cfg, in.listen_fds, w->err, sizeof(w->err));
    free_input(&in);
    if (listeners == NULL)
        return IDEM_ERR;
    server_listeners_commit(rt->server, listeners);
    rt->store = store_new(rt->base, rt->flusher, rt->cfg, rt->tls);
    store_publish_readiness(rt->store, &w->redis_up);
    return IDEM_OK;
}

static void teardown(struct worker *w)
{
    struct runtime *rt = &w->rt;
    discard_prepared(&w->prepared);
    server_free(rt->server);
    store_unref(rt->store);
    store_free_released();
    upstream_pool_free(rt->pool);
    if (w->shutdown_timer)
        event_free(w->shutdown_timer);
    event_free(w->command);
    flusher_free(rt->flusher);
    event_base_free(rt->base);
    if (rt->cfg)
        config_unref(rt->cfg);
    tls_unref(rt->tls);
}

static void report_start(struct worker *w, int started)
{
    pthread_mutex_lock(&w->lock);
    w->started = started;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    metrics_thread_init();
    bool ok = setup(w) == IDEM_OK;
    if (ok) {
        report_start(w, 1);
        event_base_dispatch(w->rt.base);
        teardown(w);
        metrics_thread_exit();
        latency_thread_exit();
        char done = 'x';
        if (write(w->exit_pipe[1], &done, 1) != 1)
            log_error("worker %d: cannot report its exit: %s", w->index, strerror(errno));
        return NULL;
    }
    teardown(w);
    metrics_thread_exit();
    report_start(w, -1);
    return NULL;
}

static void on_exited(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct worker *w = arg;
    char done;
    if (read(fd, &done, 1) == 1)
        w->on_exit(w->on_exit_arg);
}

struct worker *worker_start(int index, const char *config_path, struct config *cfg, struct tls *tls,
                            const int listen_fds[], int nlisten, struct event_base *main_base,
                            void (*on_exit)(void *arg), void *arg, char *err, size_t errlen)
{
    struct worker *w = xcalloc(1, sizeof(*w));
    w->index = index;
    set_input(&w->next, cfg, tls, listen_fds, nlisten);
    w->config_path = xstrdup(config_path);
    w->on_exit = on_exit;
    w->on_exit_arg = arg;
    if (pipe2(w->command_pipe, O_CLOEXEC) != 0 ||
        pipe2(w->exit_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        snprintf(err, errlen, "cannot start worker %d: pipe: %s", index, strerror(errno));
        free(w->config_path);
        free_input(&w->next);
        free(w);
        return NULL;
    }
    w->exited = event_new(main_base, w->exit_pipe[0], EV_READ | EV_PERSIST, on_exited, w);
    event_add(w->exited, NULL);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);

    /* Signals belong to the main thread's loop: workers never take them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start worker %d: %s", index, strerror(rc));
        worker_join(w);
        return NULL;
    }
    w->joinable = true;
    pthread_mutex_lock(&w->lock);
    while (w->started == 0)
        pthread_cond_wait(&w->cond, &w->lock);
    pthread_mutex_unlock(&w->lock);
    if (w->started < 0) {
        snprintf(err, errlen, "%s", w->err);
        worker_join(w);
        return NULL;
    }
    return w;
}

void worker_join(struct worker *w)
{
    if (w->joinable)
        pthread_join(w->thread, NULL);
    event_free(w->exited);
    for (int i = 0; i < 2; i++) {
        close(w->command_pipe[i]);
        close(w->exit_pipe[i]);
    }
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w->config_path);
    free_input(&w->next);
    free(w);
}

void worker_add_gauges(const struct worker *w, struct metrics_gauges *out)
{
    const struct runtime *rt = &w->rt;
    out->inflight += rt->exchanges;
    out->parked += rt->parked;
    out->connections += rt->clients;
    out->redis_up = out->redis_up && w->redis_up;
}
