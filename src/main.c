/*
 * main.c - the process: command line, start-up, signals, reload, shutdown.
 *
 *   argv -> config_load -> log_configure -> store, upstream pool, listeners
 *        -> READY=1 -> event loop
 *   SIGHUP  -> parse a new config; swap it in only if it (and its pool and
 *              logs) are valid; requests in flight keep the old one
 *   SIGUSR1 -> reopen log files
 *   SIGTERM -> stop accepting, close idle connections, let in-flight
 *              requests finish (bounded by shutdown_timeout), exit 0
 *
 * Exit codes (SPEC §2): 0 clean stop, 1 configuration error, 2 start-up
 * failure.
 */
#include <errno.h>
#include <event2/event.h>
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
#include "runtime.h"
#include "sdnotify.h"
#include "server.h"
#include "store.h"
#include "upstream.h"

#define IDEMPROXY_VERSION "0.1.0"

struct daemon {
    struct runtime rt;
    const char *config_path;
    struct event *sig_term, *sig_int, *sig_hup, *sig_usr1;
    struct event *watchdog;
    struct event *shutdown_timer;
    struct admin *admin;
};

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

/* Directives the parser knows whose behaviour comes with later work. */
static void warn_unimplemented(const struct config *cfg)
{
    if (cfg->workers > 1)
        log_warn("workers %d: this build runs one event loop; using 1", cfg->workers);
}

/* ---- shutdown ----------------------------------------------------------- */

static void maybe_exit(struct runtime *rt)
{
    if (rt->draining && rt->exchanges == 0 && rt->clients == 0)
        event_base_loopexit(rt->base, NULL);
}

static void on_shutdown_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct daemon *d = arg;
    log_warn("shutdown_timeout passed with %d request(s) in flight; exiting anyway",
             d->rt.exchanges);
    event_base_loopexit(d->rt.base, NULL);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct daemon *d = arg;
    if (d->rt.draining)
        return;
    log_info("%s: draining %d request(s) in flight, then exiting", strsignal((int)sig),
             d->rt.exchanges);
    sdnotify_send("STOPPING=1");
    d->rt.draining = true;
    server_drain(d->rt.server);
    uint64_t ms = d->rt.cfg->shutdown_timeout_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    d->shutdown_timer = evtimer_new(d->rt.base, on_shutdown_timeout, d);
    evtimer_add(d->shutdown_timer, &tv);
    maybe_exit(&d->rt);
}

/* ---- reload ------------------------------------------------------------- */

static bool listens_equal(const struct config *a, const struct config *b)
{
    if (a->nlistens != b->nlistens)
        return false;
    for (int i = 0; i < a->nlistens; i++)
        if (strcmp(a->listens[i].host, b->listens[i].host) != 0 ||
            strcmp(a->listens[i].port, b->listens[i].port) != 0)
            return false;
    return true;
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

static void reload(struct daemon *d)
{
    struct runtime *rt = &d->rt;
    log_info("SIGHUP: reloading %s", d->config_path);
    struct config *cfg = config_load(d->config_path, log_config_error, NULL);
    if (cfg == NULL) {
        log_error("reload failed: keeping the running configuration");
        return;
    }
    char err[256];
    struct upstream_pool *pool = upstream_pool_new(rt->base, cfg, err, sizeof(err));
    if (pool == NULL) {
        log_error("reload failed: %s; keeping the running configuration", err);
        config_unref(cfg);
        return;
    }
    if (log_configure(cfg, err, sizeof(err)) != IDEM_OK) {
        log_error("reload failed: %s; keeping the running configuration", err);
        upstream_pool_free(pool);
        config_unref(cfg);
        return;
    }
    if (!listens_equal(rt->cfg, cfg))
        log_warn("reload: listen addresses changed; they take effect at the next restart");
    store_reconfigure(rt->store, cfg);
    upstream_pool_free(rt->pool);
    rt->pool = pool;
    config_unref(rt->cfg);
    rt->cfg = cfg;
    warn_unimplemented(cfg);
    log_info("reload complete");
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct daemon *d = arg;
    if (d->rt.draining)
        return;
    send_reloading();
    reload(d);
    sdnotify_send("READY=1\nSTATUS=serving");
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

static int check_config(const char *path)
{
    struct config *cfg = config_load(path, print_error, NULL);
    if (cfg == NULL)
        return 1;
    printf("%s: configuration OK\n", path);
    config_unref(cfg);
    return 0;
}

static void install_signals(struct daemon *d)
{
    struct event_base *base = d->rt.base;
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

static void teardown(struct daemon *d)
{
    admin_free(d->admin);
    server_free(d->rt.server);
    store_free(d->rt.store);
    upstream_pool_free(d->rt.pool);
    struct event *events[] = {d->sig_term, d->sig_int,  d->sig_hup,
                              d->sig_usr1, d->watchdog, d->shutdown_timer};
    for (size_t i = 0; i < ARRAY_LEN(events); i++)
        if (events[i])
            event_free(events[i]);
    event_base_free(d->rt.base);
    config_unref(d->rt.cfg);
    log_close();
}

static int run(struct daemon *d)
{
    struct runtime *rt = &d->rt;
    char err[256];
    rt->cfg = config_load(d->config_path, print_error, NULL);
    if (rt->cfg == NULL)
        return 1;
    if (log_configure(rt->cfg, err, sizeof(err)) != IDEM_OK) {
        fprintf(stderr, "idemproxy: %s\n", err);
        config_unref(rt->cfg);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    rt->base = event_base_new();
    rt->on_idle = maybe_exit;
    metrics_init();
    rt->server = server_new(rt);
    rt->pool = upstream_pool_new(rt->base, rt->cfg, err, sizeof(err));
    if (rt->pool != NULL) {
        rt->store = store_new(rt->base, rt->cfg);
        /* The admin listener first: once clients can connect, so can probes. */
        d->admin = admin_start(rt, rt->cfg, err, sizeof(err));
    }
    if (rt->pool == NULL || (d->admin == NULL && err[0] != '\0') ||
        server_listen(rt->server, rt->cfg, err, sizeof(err)) != IDEM_OK) {
        log_error("cannot start: %s", err);
        teardown(d);
        metrics_reset();
        return 2;
    }
    install_signals(d);
    warn_unimplemented(rt->cfg);
    log_info("idemproxy " IDEMPROXY_VERSION " started (pid %d, config %s)", (int)getpid(),
             d->config_path);
    sdnotify_send("READY=1\nSTATUS=serving");
    event_base_dispatch(rt->base);
    log_info("stopped");
    teardown(d);
    metrics_reset();
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
