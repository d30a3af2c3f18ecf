/*
 * config_net.c - the directives that name places on the network: listeners,
 * upstreams, the Redis store (one server, Sentinel, Cluster) and the
 * addresses they take, and the proxies trusted to speak for clients. Called
 * by config.c's directive table (config_private.h); pure: names are
 * resolved later, by upstream_resolve() and store_resolve() in the main
 * thread, never here.
 *
 *   argv --set_listen / set_upstream / set_redis / set_redis_sentinel /
 *          set_redis_cluster / set_trusted_proxies / ...--> fields of
 *          struct config, or a phrase (config_phrase) for config.c to report
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "config_private.h"
#include "config_value.h"

/* ---- addresses ------------------------------------------------------- */

/* A host name (letters, digits, '-', '.', '_') or, bracketed, an IPv6 address. */
bool config_valid_host(const char *host, bool bracketed)
{
    unsigned char addr[16];
    if (bracketed)
        return inet_pton(AF_INET6, host, addr) == 1;
    for (const char *p = host; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return false;
    }
    return *host != '\0';
}

static bool valid_port(const char *s)
{
    int port;
    return strlen(s) <= 5 && config_parse_int(s, 1, 65535, &port) == IDEM_OK;
}

/*
 * Splits "HOST:PORT" or "[IPV6]:PORT"; with default_port non-NULL the port
 * may be left out. On success *host (without brackets) and *port are
 * malloc'd for the caller; on failure nothing is allocated.
 */
static const char *split_host_port(struct setting *s, const char *arg, const char *default_port,
                                   char **host, char **port, bool *bracketed)
{
    const char *h = arg;
    const char *port_str = default_port;
    size_t hlen;

    if (arg[0] == '[') {
        const char *close = strchr(arg, ']');
        if (close == NULL || (close[1] != ':' && (close[1] != '\0' || default_port == NULL)))
            return config_phrase(s->ps, "expected [IPV6]:PORT, got \"%s\"", arg);
        h = arg + 1;
        hlen = (size_t)(close - h);
        if (close[1] == ':')
            port_str = close + 2;
        *bracketed = true;
    } else {
        const char *colon = strrchr(arg, ':');
        if (colon == NULL && default_port == NULL)
            return config_phrase(s->ps, "expected HOST:PORT, got \"%s\"", arg);
        hlen = colon != NULL ? (size_t)(colon - arg) : strlen(arg);
        if (memchr(arg, ':', hlen) != NULL)
            return config_phrase(s->ps,
                                 "IPv6 addresses go in brackets, like [::1]:8080, got \"%s\"", arg);
        if (colon != NULL)
            port_str = colon + 1;
        *bracketed = false;
    }
    if (hlen == 0)
        return config_phrase(s->ps, "missing host in \"%s\"", arg);
    if (!valid_port(port_str))
        return config_phrase(s->ps, "port must be 1..65535, got \"%s\"", port_str);
    *host = xstrndup(h, hlen);
    *port = xstrdup(port_str);
    return NULL;
}

/* A listening address: numeric IPv4, or bracketed IPv6, and a port. */
static const char *parse_listen_addr(struct setting *s, const char *arg, struct listen_addr *out)
{
    unsigned char addr[16];
    bool bracketed = false;
    char *host = NULL;
    char *port = NULL;
    const char *err = split_host_port(s, arg, NULL, &host, &port, &bracketed);
    if (err != NULL)
        return err;
    if (inet_pton(bracketed ? AF_INET6 : AF_INET, host, addr) != 1) {
        free(host);
        free(port);
        return config_phrase(s->ps,
                             "expected a numeric address like 127.0.0.1:8080 or [::1]:8080, "
                             "got \"%s\"",
                             arg);
    }
    out->host = host;
    out->port = port;
    out->tls = false;
    out->reuseport = false;
    return NULL;
}

const char *set_listen(struct setting *s)
{
    struct config *cfg = s->base;
    struct listen_addr la;
    const char *err;

    bool tls = false;
    bool reuseport = false;

    for (int i = 1; i < s->argc; i++) {
        bool *flag = strcmp(s->argv[i], "tls") == 0         ? &tls
                     : strcmp(s->argv[i], "reuseport") == 0 ? &reuseport
                                                            : NULL;
        if (flag == NULL || *flag)
            return config_phrase(
                s->ps, "unexpected parameter \"%s\" (expected tls or reuseport, once each)",
                s->argv[i]);
        *flag = true;
    }
    if (cfg->nlistens == CONFIG_MAX_LISTEN)
        return config_phrase(s->ps, "too many listen addresses (at most %d)", CONFIG_MAX_LISTEN);
    err = parse_listen_addr(s, s->argv[0], &la);
    if (err != NULL)
        return err;
    la.tls = tls;
    la.reuseport = reuseport;
    for (int i = 0; i < cfg->nlistens; i++) {
        if (strcmp(cfg->listens[i].host, la.host) == 0 &&
            strcmp(cfg->listens[i].port, la.port) == 0) {
            free(la.host);
            free(la.port);
            return config_phrase(s->ps, "duplicate address \"%s\"", s->argv[0]);
        }
    }
    cfg->listens[cfg->nlistens++] = la;
    return NULL;
}

/* Parses "ADDR" or "ADDR/BITS" (IPv4 or IPv6) into c. */
static bool parse_cidr(const char *text, struct cidr *c)
{
    char addr[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(text, '/');
    size_t n = slash ? (size_t)(slash - text) : strlen(text);
    if (n == 0 || n >= sizeof(addr))
        return false;
    memcpy(addr, text, n);
    addr[n] = '\0';
    memset(c, 0, sizeof(*c));
    c->family = strchr(addr, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(c->family, addr, c->addr) != 1)
        return false;
    int max = c->family == AF_INET ? 32 : 128;
    c->bits = max;
    if (slash != NULL) {
        char *end;
        long bits = strtol(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end != '\0' || bits < 0 || bits > max)
            return false;
        c->bits = (int)bits;
    }
    return true;
}

const char *set_trusted_proxies(struct setting *s)
{
    struct config *cfg = s->base;
    if (s->argc == 1 && strcmp(s->argv[0], "none") == 0)
        return NULL;
    if (cfg->ntrusted_proxies + s->argc > CONFIG_MAX_TRUSTED_PROXIES)
        return config_phrase(s->ps, "at most %d address blocks", CONFIG_MAX_TRUSTED_PROXIES);
    for (int i = 0; i < s->argc; i++)
        if (!parse_cidr(s->argv[i], &cfg->trusted_proxies[cfg->ntrusted_proxies++]))
            return config_phrase(s->ps, "expected an address or ADDR/BITS, got \"%s\"", s->argv[i]);
    return NULL;
}

bool config_trusts_peer(const struct config *cfg, const char *peer)
{
    if (cfg->ntrusted_proxies == 0)
        return false;
    unsigned char addr[16];
    /* An IPv4 client on a dual-stack listener: ::ffff:a.b.c.d */
    if (strncasecmp(peer, "::ffff:", 7) == 0 && strchr(peer + 7, ':') == NULL)
        peer += 7;
    int family = strchr(peer, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(family, peer, addr) != 1)
        return false;
    for (int i = 0; i < cfg->ntrusted_proxies; i++) {
        const struct cidr *c = &cfg->trusted_proxies[i];
        if (c->family != family)
            continue;
        int whole = c->bits / 8, rest = c->bits % 8;
        if (memcmp(addr, c->addr, (size_t)whole) != 0)
            continue;
        unsigned char mask = (unsigned char)(0xff << (8 - rest));
        if (rest == 0 || ((addr[whole] ^ c->addr[whole]) & mask) == 0)
            return true;
    }
    return false;
}

bool listen_addr_same(const struct listen_addr *a, const struct listen_addr *b)
{
    if (a->host == NULL || b->host == NULL)
        return a->host == b->host;
    return strcmp(a->host, b->host) == 0 && strcmp(a->port, b->port) == 0;
}

const char *set_admin_listen(struct setting *s)
{
    struct config *cfg = s->base;
    if (strcmp(s->argv[0], "off") == 0)
        return NULL; /* host stays NULL */
    return parse_listen_addr(s, s->argv[0], &cfg->admin_listen);
}

/* http[s]://HOST[:PORT][/]; HOST a name, an IPv4 address or [IPv6]. */
static const char *parse_upstream_url(struct setting *s, const char *url, struct upstream_url *out)
{
    bool tls = strncasecmp(url, "https://", 8) == 0;
    const char *authority = url + (tls ? 8 : 7);
    const char *slash;
    size_t alen;
    char *auth;
    const char *err;
    bool bracketed = false;

    if (!tls && strncasecmp(url, "http://", 7) != 0)
        return config_phrase(
            s->ps, "expected a URL like http://host:port or https://host, got \"%s\"", url);
    slash = strchr(authority, '/');
    if (slash != NULL && strcmp(slash, "/") != 0)
        return config_phrase(s->ps, "an upstream URL cannot have a path, got \"%s\"", url);
    alen = slash != NULL ? (size_t)(slash - authority) : strlen(authority);
    auth = xstrndup(authority, alen);
    err = split_host_port(s, auth, tls ? "443" : "80", &out->host, &out->port, &bracketed);
    if (err == NULL && !config_valid_host(out->host, bracketed)) {
        err = config_phrase(s->ps, "invalid host in \"%s\"", url);
        free(out->host);
        free(out->port);
    }
    if (err != NULL) {
        free(auth);
        return err;
    }
    out->url = xstrdup(url);
    out->host_header = auth;
    out->tls = tls;
    return NULL;
}

const char *set_upstream(struct setting *s)
{
    struct config *cfg = s->base;
    for (int i = 0; i < s->argc; i++) {
        struct upstream_url u;
        const char *err;
        if (cfg->nupstreams == CONFIG_MAX_UPSTREAM)
            return config_phrase(s->ps, "too many upstreams (at most %d)", CONFIG_MAX_UPSTREAM);
        err = parse_upstream_url(s, s->argv[i], &u);
        if (err != NULL)
            return err;
        cfg->upstreams[cfg->nupstreams++] = u;
    }
    return NULL;
}

const char *set_redis(struct setting *s)
{
    struct config *cfg = s->base;
    const char *arg = s->argv[0];
    char *host = NULL;
    char *port = NULL;
    bool bracketed = false;
    const char *err;

    if (strncmp(arg, "unix:", 5) == 0) {
        if (arg[5] == '\0')
            return "expected unix:PATH with a path";
    } else {
        err = split_host_port(s, arg, NULL, &host, &port, &bracketed);
        if (err != NULL)
            return err;
        if (!config_valid_host(host, bracketed)) {
            free(host);
            free(port);
            return config_phrase(s->ps, "invalid host in \"%s\"", arg);
        }
    }
    free(cfg->redis_host);
    free(cfg->redis_port);
    free(cfg->redis_unix);
    cfg->redis_host = host;
    cfg->redis_port = port;
    cfg->redis_unix = host == NULL ? xstrdup(arg + 5) : NULL;
    return NULL;
}

/*
 * Reads the secret (a password, the admin token) now, so that a missing file
 * fails the check (-t) and a reload, not the first Redis connection or admin
 * call. The secret never appears in a message; the path does.
 */
/* HOST:PORT arguments from argv[first] on into addrs (at most max); their
 * names are resolved by store_resolve(). On error nothing is kept. */
static const char *parse_addrs(struct setting *s, int first, struct redis_addr *addrs, int max,
                               int *count)
{
    int n = 0;
    const char *err = NULL;
    for (int i = first; i < s->argc && n < max && err == NULL; i++, n++) {
        bool bracketed = false;
        err = split_host_port(s, s->argv[i], NULL, &addrs[n].host, &addrs[n].port, &bracketed);
        if (err == NULL && !config_valid_host(addrs[n].host, bracketed))
            err = config_phrase(s->ps, "invalid host in \"%s\"", s->argv[i]);
        if (err == NULL && addrs[n].port == NULL)
            err = config_phrase(s->ps, "expected HOST:PORT, got \"%s\"", s->argv[i]);
    }
    if (err != NULL) {
        for (int i = 0; i <= n && i < max; i++) {
            free(addrs[i].host);
            free(addrs[i].port);
        }
        return err;
    }
    *count = n;
    return NULL;
}

/* redis_sentinel MASTER HOST:PORT... */
const char *set_redis_sentinel(struct setting *s)
{
    struct config *cfg = s->base;
    struct redis_addr addrs[CONFIG_MAX_SENTINELS] = {{0}};
    int n = 0;
    const char *err = parse_addrs(s, 1, addrs, CONFIG_MAX_SENTINELS, &n);
    if (err != NULL)
        return err;
    free(cfg->sentinel_master);
    cfg->sentinel_master = xstrdup(s->argv[0]);
    memcpy(cfg->sentinels, addrs, sizeof(addrs));
    cfg->nsentinels = n;
    return NULL;
}

/* redis_cluster HOST:PORT...: seed nodes (SPEC §8). */
const char *set_redis_cluster(struct setting *s)
{
    struct config *cfg = s->base;
    struct redis_addr addrs[CONFIG_MAX_CLUSTER_SEEDS] = {{0}};
    int n = 0;
    const char *err = parse_addrs(s, 0, addrs, CONFIG_MAX_CLUSTER_SEEDS, &n);
    if (err != NULL)
        return err;
    memcpy(cfg->cluster_seeds, addrs, sizeof(addrs));
    cfg->ncluster_seeds = n;
    return NULL;
}

/* redis_min_replicas N [TIMEOUT] */
const char *set_min_replicas(struct setting *s)
{
    struct config *cfg = s->base;
    char *end;
    errno = 0;
    long n = strtol(s->argv[0], &end, 10);
    if (errno != 0 || *end != '\0' || end == s->argv[0] || n < 0 || n > 16)
        return config_phrase(s->ps, "expected a number of replicas from 0 to 16, got \"%s\"",
                             s->argv[0]);
    uint64_t ms = 50;
    if (s->argc > 1 && (config_parse_duration(s->argv[1], &ms) != IDEM_OK || ms == 0))
        return config_phrase(s->ps, "expected a timeout like 50ms, got \"%s\"", s->argv[1]);
    cfg->redis_min_replicas = (int)n;
    cfg->redis_min_replicas_timeout_ms = ms;
    return NULL;
}
