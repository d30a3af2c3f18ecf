/*
 * main.c - the process: command line, start-up, signals, reload, shutdown.
 *
 *   argv -> config_load -> log_configure -> admin listener -> upstream names
 *        resolved -> `workers` worker threads (worker.c), each a complete proxy
 *        on the same immutable config -> READY=1 -> the main loop: signals,
 *        admin, watchdog
 *   SIGHUP  -> parse, resolve and check the file here, once; every worker
 *              prepares the new config beside its running one; all commit, or
 *              all abort and the reload is reported failed; requests in flight
 *              keep the config (and the Redis store) they started with
 *   SIGUSR1 -> reopen log files
 *   SIGTERM -> every worker stops accepting, closes idle connections and lets
 *              in-flight requests finish (bounded by shutdown_timeout); the
 *              process exits 0 when the last worker's loop has ended
 *
 * Exit codes (SPEC §2): 0 clean stop, 1 configuration error, 2 start-up
 * failure.
 */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "sdnotify.h"
#include "server.h"
#include "store.h"
#include "store_sentinel.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

/* The version is written in one place, the first line of debian/changelog;
 * the Makefile passes it as -DIDEMPROXY_VERSION for -v and the start-up line
 * (and scripts/manpage.py puts the same one in the man pages). */
#ifndef IDEMPROXY_VERSION
#error "IDEMPROXY_VERSION is not defined: build with make (it reads debian/changelog)"
#endif

#define MAX_WORKERS 64

struct daemon {
    const char *config_path;
    struct config *cfg; /* the main thread's copy: logs, admin, workers, timeouts */
    struct tls *tls;    /* built from cfg here, shared by every worker */
    struct event_base *base;
    int listen_fds[CONFIG_MAX_LISTEN]; /* bound once; every worker accepts on a dup */
    int nlisten;
    struct worker *workers[MAX_WORKERS];
    int nworkers;
    int running;                /* workers whose loop has not ended */
    uint64_t reload_generation; /* of the last reload asked of the workers */
    bool draining;
    struct event *sig_term, *sig_int, *sig_hup, *sig_usr1;
    struct event *watchdog;
    struct admin *admin;
};

static int check_environment(struct config *cfg, char *err, size_t errlen);

static void usage(FILE *out)
{
    fprintf(out, "usage: idemproxy [-c FILE] [-t] [-v] [-h]\n"
                 "  -c FILE   configuration file (default " CONFIG_DEFAULT_FILE ")\n"
                 "  -t        check the configuration and exit\n"
                 "  -v        print version and exit\n"
                 "  -h        this help\n");
}

static void print_error(void *arg, const char *message)
{
    (void)arg;
    fprintf(stderr, "%s\n", message);
}

static void log_config_error(void *arg, const char *message)
{
    (void)arg;
    log_error("%s", message);
}

/*
 * Said at every start and reload: which certificate the listeners serve
 * (the way to confirm a rotation from the log), whether it is about to
 * expire, and when the operator chose to trust the path to the upstreams.
 */
static void log_tls(const struct config *cfg, const struct tls *tls)
{
    char what[512];
    int days;
    if (tls_describe_certificate(tls, what, sizeof(what), &days)) {
        if (days < 0)
            log_error("tls_certificate %s: EXPIRED: %s", cfg->tls_certificate, what);
        else if (days < 14)
            log_warn("tls_certificate %s: expires in %d day(s): %s", cfg->tls_certificate, days,
                     what);
        else
            log_info("tls_certificate %s: %s", cfg->tls_certificate, what);
    }
    if (config_tls_upstream(cfg) && !cfg->upstream_tls_verify)
        log_warn("upstream_tls_verify off: the certificates of https upstreams are NOT "
                 "verified; anyone on the path can impersonate them");
}

static int worker_count(const struct config *cfg)
{
    long n = cfg->workers > 0 ? cfg->workers : sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (int)n;
}

/* ---- shutdown ----------------------------------------------------------- */

static void on_worker_exit(void *arg)
{
    struct daemon *d = arg;
    if (--d->running == 0)
        event_base_loopexit(d->base, NULL);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct daemon *d = arg;
    if (d->draining)
        return;
    struct metrics_gauges g = {.redis_up = true};
    for (int i = 0; i < d->nworkers; i++)
        worker_add_gauges(d->workers[i], &g);
    log_info("%s: draining %d request(s) in flight, then exiting", strsignal((int)sig), g.inflight);
    sdnotify_send("STOPPING=1");
    d->draining = true;
    for (int i = 0; i < d->nworkers; i++)
        worker_drain(d->workers[i]);
    /* The workers close their duplicates; with ours the sockets close. */
    server_unbind(d->listen_fds, d->nlisten);
    d->nlisten = 0;
}

/* ---- reload ------------------------------------------------------------- */

/* Closes the sockets of addresses the new listen lines dropped. */
static void unbind_dropped(const int old_fds[], int nold, const int fds[], int n)
{
    for (int i = 0; i < nold; i++) {
        bool kept = false;
        for (int j = 0; j < n && !kept; j++)
            kept = fds[j] == old_fds[i];
        if (!kept)
            close(old_fds[i]);
    }
}

static void send_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[96];
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
    sdnotify_send(msg);
}

/* How long a reload waits for each worker to prepare: a worker's loop that
 * does not turn for this long is stuck, and the reload fails. */
#define RELOAD_PREPARE_MS 5000

/* Every worker's word on a reload, for this generation. */
static void decide_workers(struct daemon *d, bool commit_it)
{
    for (int i = 0; i < d->nworkers; i++)
        worker_decide(d->workers[i], d->reload_generation, commit_it);
}

/* Asks every worker to prepare cfg, all within one deadline; all of them,
 * or none: aborts them all and says why (the first reason) when one fails. */
static int prepare_workers(struct daemon *d, struct config *cfg, struct tls *tls, const int fds[],
                           int nfds, char *err, size_t errlen)
{
    d->reload_generation++;
    for (int i = 0; i < d->nworkers; i++)
        worker_prepare(d->workers[i], d->reload_generation, cfg, tls, fds, nfds);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += RELOAD_PREPARE_MS / 1000;
    int rc = IDEM_OK;
    for (int i = 0; i < d->nworkers; i++) {
        char why[256];
        if (worker_prepared(d->workers[i], d->reload_generation, &deadline, why, sizeof(why)) ==
            IDEM_OK)
            continue;
        if (rc == IDEM_OK)
            snprintf(err, errlen, "%s", why);
        rc = IDEM_ERR;
    }
    if (rc != IDEM_OK)
        decide_workers(d, false);
    return rc;
}

/*
 * Everything is parsed, resolved and checked here, once (configuration, TLS
 * files, upstream names, log paths, new listen addresses bound); then every
 * worker prepares the same immutable configuration beside its running one,
 * and only when all have does any switch. A failure anywhere changes nothing
 * anywhere. Addresses that stay keep their sockets, so no connection waiting
 * in an accept queue is lost. Returns whether the reload took effect.
 */
static bool reload(struct daemon *d)
{
    log_info("SIGHUP: reloading %s", d->config_path);
    char *text = NULL;
    size_t len;
    struct config *cfg = NULL;
    struct tls *tls = NULL;
    char err[256] = "";
    int fds[CONFIG_MAX_LISTEN];
    bool bound = false;

    if (config_read_file(d->config_path, &text, &len, log_config_error, NULL) != IDEM_OK)
        goto fail;
    cfg = config_parse(d->config_path, text, len, log_config_error, NULL);
    if (cfg == NULL || (tls = tls_new(cfg, log_config_error, NULL)) == NULL)
        goto fail;
    if (check_environment(cfg, err, sizeof(err)) != IDEM_OK ||
        server_rebind(d->cfg, d->listen_fds, cfg, fds, err, sizeof(err)) != IDEM_OK)
        goto fail;
    bound = true;
    if (prepare_workers(d, cfg, tls, fds, cfg->nlistens, err, sizeof(err)) != IDEM_OK)
        goto fail;
    if (log_configure(cfg, err, sizeof(err)) != IDEM_OK) {
        decide_workers(d, false);
        goto fail;
    }
    decide_workers(d, true);

    unbind_dropped(d->listen_fds, d->nlisten, fds, cfg->nlistens);
    memcpy(d->listen_fds, fds, sizeof(fds));
    d->nlisten = cfg->nlistens;
    if (worker_count(cfg) != d->nworkers)
        log_warn("reload: workers changed; the new count takes effect at the next restart");
    if (!listen_addr_same(&d->cfg->admin_listen, &cfg->admin_listen))
        log_warn("reload: admin_listen changed; the admin listener stays as it is until the next "
                 "restart");
    log_tls(cfg, tls);
    admin_reconfigure(d->admin, cfg, tls);
    config_unref(d->cfg);
    d->cfg = cfg;
    tls_unref(d->tls);
    d->tls = tls;
    free(text);
    log_info("reload complete");
    return true;

fail:
    if (err[0] != '\0')
        log_error("reload failed: %s; every worker keeps the running configuration", err);
    else
        log_error("reload failed: every worker keeps the running configuration");
    if (bound) /* closes the sockets bound for new addresses only */
        unbind_dropped(fds, cfg->nlistens, d->listen_fds, d->nlisten);
    tls_unref(tls);
    if (cfg != NULL)
        config_unref(cfg);
    free(text);
    return false;
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct daemon *d = arg;
    if (d->draining)
        return;
    send_reloading();
    /* READY=1 either way: systemd waits for it after RELOADING=1. */
    if (reload(d))
        sdnotify_send("READY=1\nSTATUS=serving");
    else
        sdnotify_send("READY=1\nSTATUS=serving; the last reload failed (see the error log)");
}

static void on_usr1(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    log_reopen();
    log_info("SIGUSR1: log files reopened");
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    sdnotify_send("WATCHDOG=1");
}

/* ---- start -------------------------------------------------------------- */

/* A log path the daemon will open for appending, tried now. */
static int check_log_path(const char *name, const char *path, char *err, size_t errlen)
{
    if (path == NULL || strcmp(path, "stderr") == 0 || strcmp(path, "off") == 0)
        return IDEM_OK;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open %s: %s", name, path, strerror(errno));
        return IDEM_ERR;
    }
    close(fd);
    return IDEM_OK;
}

/*
 * What a start or a reload needs beyond a valid file: upstream names that
 * resolve and log files that open. Checked by -t and before a reload is
 * applied anywhere, so that a reload is all or nothing.
 */
static int check_environment(struct config *cfg, char *err, size_t errlen)
{
    if (upstream_resolve(cfg, err, errlen) != IDEM_OK || store_resolve(cfg, err, errlen) != IDEM_OK)
        return IDEM_ERR;
    if (check_log_path("error_log", cfg->error_log, err, errlen) != IDEM_OK ||
        check_log_path("access_log", cfg->access_log, err, errlen) != IDEM_OK)
        return IDEM_ERR;
    return IDEM_OK;
}

static int check_config(const char *path)
{
    struct config *cfg = config_load(path, print_error, NULL);
    if (cfg == NULL)
        return 1;
    struct tls *tls = tls_new(cfg, print_error, NULL);
    if (tls == NULL) {
        config_unref(cfg);
        return 1;
    }
    tls_unref(tls);
    char err[256];
    int rc = check_environment(cfg, err, sizeof(err));
    config_unref(cfg);
    if (rc != IDEM_OK) {
        fprintf(stderr, "%s: %s\n", path, err);
        return 1;
    }
    printf("%s: configuration OK\n", path);
    return 0;
}

static void install_signals(struct daemon *d)
{
    struct event_base *base = d->base;
    d->sig_term = evsignal_new(base, SIGTERM, on_stop_signal, d);
    d->sig_int = evsignal_new(base, SIGINT, on_stop_signal, d);
    d->sig_hup = evsignal_new(base, SIGHUP, on_hup, d);
    d->sig_usr1 = evsignal_new(base, SIGUSR1, on_usr1, d);
    evsignal_add(d->sig_term, NULL);
    evsignal_add(d->sig_int, NULL);
    evsignal_add(d->sig_hup, NULL);
    evsignal_add(d->sig_usr1, NULL);
    uint64_t usec = sdnotify_watchdog_usec();
    if (usec > 0) {
        usec /= 2;
        struct timeval tv = {(time_t)(usec / 1000000), (suseconds_t)(usec % 1000000)};
        d->watchdog = event_new(base, -1, EV_PERSIST, on_watchdog, d);
        evtimer_add(d->watchdog, &tv);
    }
}

static void admin_gauges(void *arg, struct metrics_gauges *out)
{
    struct daemon *d = arg;
    memset(out, 0, sizeof(*out));
    out->redis_up = true;
    for (int i = 0; i < d->nworkers; i++)
        worker_add_gauges(d->workers[i], out);
    out->redis_oom = store_refusing_writes();
    store_redis_risks(&out->redis_may_evict, &out->redis_may_lose);
}

static bool admin_draining(void *arg)
{
    return ((struct daemon *)arg)->draining;
}

/* Joins the workers (asking them to stop first, when start-up failed half
 * way and their loops still run), then frees everything. */
static void teardown(struct daemon *d, bool stop_workers)
{
    for (int i = 0; stop_workers && i < d->nworkers; i++)
        worker_drain(d->workers[i]);
    for (int i = 0; i < d->nworkers; i++)
        worker_join(d->workers[i]);
    admin_free(d->admin);
    server_unbind(d->listen_fds, d->nlisten);
    struct event *events[] = {d->sig_term, d->sig_int, d->sig_hup, d->sig_usr1, d->watchdog};
    for (size_t i = 0; i < ARRAY_LEN(events); i++)
        if (events[i])
            event_free(events[i]);
    if (d->base)
        event_base_free(d->base);
    config_unref(d->cfg);
    tls_unref(d->tls);
    metrics_reset();
    log_close();
}

static int start_workers(struct daemon *d, char *err, size_t errlen)
{
    int n = worker_count(d->cfg);
    for (int i = 0; i < n; i++) {
        struct worker *w = worker_start(i, d->config_path, d->cfg, d->tls, d->listen_fds,
                                        d->nlisten, d->base, on_worker_exit, d, err, errlen);
        if (w == NULL)
            return IDEM_ERR;
        d->workers[d->nworkers++] = w;
        d->running++;
    }
    return IDEM_OK;
}

static int run(struct daemon *d)
{
    char err[256] = "";
    d->cfg = config_load(d->config_path, print_error, NULL);
    d->tls = d->cfg != NULL ? tls_new(d->cfg, print_error, NULL) : NULL;
    if (d->tls == NULL) {
        config_unref(d->cfg);
        return 1;
    }
    if (log_configure(d->cfg, err, sizeof(err)) != IDEM_OK) {
        fprintf(stderr, "idemproxy: cannot start: %s\n", err);
        config_unref(d->cfg);
        tls_unref(d->tls);
        return 2;
    }
    log_tls(d->cfg, d->tls);
    signal(SIGPIPE, SIG_IGN);
    d->base = event_base_new();
    metrics_init();
    install_signals(d); /* before the first socket is bound: a SIGTERM is never lost */
    struct admin_source src = {.gauges = admin_gauges, .draining = admin_draining, .arg = d};
    /* The admin listener first: once clients can connect, so can probes. */
    d->admin = admin_start(d->base, d->cfg, d->tls, &src, err, sizeof(err));
    if ((d->admin == NULL && err[0] != '\0') ||
        server_bind(d->cfg, d->listen_fds, &d->nlisten, err, sizeof(err)) != IDEM_OK ||
        upstream_resolve(d->cfg, err, sizeof(err)) != IDEM_OK ||
        store_resolve(d->cfg, err, sizeof(err)) != IDEM_OK ||
        start_workers(d, err, sizeof(err)) != IDEM_OK) {
        log_error("cannot start: %s", err);
        teardown(d, true);
        return 2;
    }
    log_info("idemproxy " IDEMPROXY_VERSION " started (pid %d, %d worker%s, config %s)",
             (int)getpid(), d->nworkers, d->nworkers == 1 ? "" : "s", d->config_path);
    sdnotify_send("READY=1\nSTATUS=serving");
    event_base_dispatch(d->base);
    log_info("stopped");
    teardown(d, false);
    return 0;
}

int main(int argc, char **argv)
{
    struct daemon d;
    memset(&d, 0, sizeof(d));
    d.config_path = CONFIG_DEFAULT_FILE;
    bool test_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:tvh")) != -1) {
        switch (opt) {
        case 'c': d.config_path = optarg; break;
        case 't': test_only = true; break;
        case 'v': printf("idemproxy " IDEMPROXY_VERSION "\n"); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 1;
    }
    if (test_only)
        return check_config(d.config_path);
    return run(&d);
}
