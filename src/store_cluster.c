/*
 * store_cluster.c - the topology of a Redis Cluster, without I/O: key slots,
 * the slot map, redirections (store_cluster.h).
 *
 *   key --cluster_key_slot--> slot --map.owner[slot]--> node index --store.c--> its link
 *   CLUSTER SLOTS answer --cluster_map_load--> map (every slot, every primary)
 *   -MOVED slot ip:port --cluster_parse_redirect--> map.owner[slot] = that node
 *   -ASK slot ip:port   --cluster_parse_redirect--> that node, this once (map unchanged)
 *
 * Replicas in the answer are skipped: every command of ours writes, or must
 * read what the last write left, so only primaries are asked.
 *
 * A cluster set to `cluster-preferred-endpoint-type hostname` names its
 * nodes by host name, in CLUSTER SLOTS and in redirections. Nothing here
 * resolves names (that would block the loop): a node's address is the "ip"
 * of its networking metadata, its host name is kept as the name TLS
 * checks, and a redirection by host name goes to the node of that name.
 */
#include "store_cluster.h"

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as the cluster
 * specification requires. Bitwise: keys are short, and a table would be
 * one more thing to get right. */
static uint16_t crc16(const char *p, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint16_t)(unsigned char)p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned cluster_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close != NULL && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) & (CLUSTER_SLOTS - 1);
    }
    return crc16(key, len) & (CLUSTER_SLOTS - 1);
}

void cluster_map_init(struct cluster_map *m)
{
    memset(m, 0, sizeof(*m));
    for (int i = 0; i < CLUSTER_SLOTS; i++)
        m->owner[i] = -1;
}

void cluster_map_free(struct cluster_map *m)
{
    for (int i = 0; i < m->nnodes; i++) {
        free(m->nodes[i].ip);
        free(m->nodes[i].port);
        free(m->nodes[i].name);
        free(m->nodes[i].hostname);
    }
    free(m->nodes);
    m->nodes = NULL;
    m->nnodes = m->cap = 0;
}

bool cluster_numeric_address(const char *s)
{
    unsigned char addr[16];
    return inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1;
}

int cluster_map_node(struct cluster_map *m, const char *ip, const char *port, const char *name)
{
    int free_at = -1;
    for (int i = 0; i < m->nnodes; i++) {
        if (m->nodes[i].ip == NULL)
            free_at = free_at < 0 ? i : free_at;
        else if (strcmp(m->nodes[i].ip, ip) == 0 && strcmp(m->nodes[i].port, port) == 0)
            return i;
    }
    if (free_at < 0) {
        if (m->nnodes == CLUSTER_NODES_MAX)
            return -1;
        if (m->nnodes == m->cap) {
            m->cap = m->cap ? m->cap * 2 : 8;
            m->nodes = xrealloc(m->nodes, (size_t)m->cap * sizeof(*m->nodes));
        }
        free_at = m->nnodes++;
    }
    struct cluster_node *n = &m->nodes[free_at];
    n->ip = xstrdup(ip);
    n->port = xstrdup(port);
    n->name = name ? xstrdup(name) : NULL;
    n->hostname = NULL;
    n->owned = 0;
    return free_at;
}

void cluster_map_forget(struct cluster_map *m, int node)
{
    struct cluster_node *n = &m->nodes[node];
    if (n->ip == NULL || n->owned > 0)
        return;
    free(n->ip);
    free(n->port);
    free(n->name);
    free(n->hostname);
    *n = (struct cluster_node){0};
}

bool cluster_map_in_use(const struct cluster_map *m, int node)
{
    return node >= 0 && node < m->nnodes && m->nodes[node].ip != NULL;
}

int cluster_map_find(const struct cluster_map *m, const char *host, const char *port)
{
    for (int i = 0; i < m->nnodes; i++) {
        const struct cluster_node *n = &m->nodes[i];
        if (n->ip != NULL &&
            (strcmp(n->ip, host) == 0 || (n->name != NULL && strcmp(n->name, host) == 0) ||
             (n->hostname != NULL && strcmp(n->hostname, host) == 0)) &&
            strcmp(n->port, port) == 0)
            return i;
    }
    return -1;
}

void cluster_map_set_owner(struct cluster_map *m, unsigned slot, int node)
{
    if (slot >= CLUSTER_SLOTS || node < 0 || node >= m->nnodes)
        return;
    if (m->owner[slot] >= 0)
        m->nodes[m->owner[slot]].owned--;
    m->owner[slot] = (int16_t)node;
    m->nodes[node].owned++;
}

/* One range of an answer: {first, last, {ip, port, ...}, ...}; false if malformed. */
static bool range_ok(const redisReply *e)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
        e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER)
        return false;
    long long first = e->element[0]->integer, last = e->element[1]->integer;
    const redisReply *p = e->element[2];
    return first >= 0 && first <= last && last < CLUSTER_SLOTS && p->type == REDIS_REPLY_ARRAY &&
           p->elements >= 2 &&
           (p->element[0]->type == REDIS_REPLY_STRING || p->element[0]->type == REDIS_REPLY_NIL) &&
           p->element[1]->type == REDIS_REPLY_INTEGER && p->element[1]->integer > 0 &&
           p->element[1]->integer < 65536;
}

/* A node's "ip" from the networking metadata after its id (Redis 7: given
 * when its endpoint is a host name), or NULL. */
static const char *metadata_ip(const redisReply *p)
{
    if (p->elements < 4 || p->element[3]->type != REDIS_REPLY_ARRAY)
        return NULL;
    const redisReply *md = p->element[3];
    for (size_t i = 0; i + 1 < md->elements; i += 2)
        if (md->element[i]->type == REDIS_REPLY_STRING && strcmp(md->element[i]->str, "ip") == 0 &&
            md->element[i + 1]->type == REDIS_REPLY_STRING &&
            cluster_numeric_address(md->element[i + 1]->str))
            return md->element[i + 1]->str;
    return NULL;
}

/* The address of a range's primary, or NULL if it has none we can reach;
 * *hostname: the name it goes by, if it is named. */
static const char *range_ip(const redisReply *p, const char *asked_ip, const char **hostname)
{
    /* NULL or "": the endpoint is the node we asked; "?" is unknown */
    const char *ip = p->element[0]->type == REDIS_REPLY_STRING && p->element[0]->len > 0
                         ? p->element[0]->str
                         : asked_ip;
    *hostname = NULL;
    if (!cluster_numeric_address(ip)) { /* a host name: connect to its "ip" */
        *hostname = ip;
        ip = metadata_ip(p);
    }
    return ip == NULL || strcmp(ip, "?") == 0 ? NULL : ip;
}

int cluster_map_load(struct cluster_map *m, const void *reply, const char *asked_ip, char *err,
                     size_t errlen)
{
    const redisReply *r = reply;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "CLUSTER SLOTS: %s",
                 r != NULL && r->type == REDIS_REPLY_ERROR ? r->str : "not an array");
        return IDEM_ERR;
    }
    size_t reachable = 0;
    for (size_t i = 0; i < r->elements; i++) {
        if (!range_ok(r->element[i])) {
            snprintf(err, errlen, "CLUSTER SLOTS: malformed range %zu", i);
            return IDEM_ERR;
        }
        const char *hostname;
        reachable += range_ip(r->element[i]->element[2], asked_ip, &hostname) != NULL;
    }
    /* A map where no node owns a slot (a node in no cluster yet answers
     * none) would keep us from dialling the seeds that can give the real one. */
    if (reachable == 0) {
        snprintf(err, errlen, "CLUSTER SLOTS: %s",
                 r->elements == 0 ? "no slot assigned (a node in no cluster yet?)"
                                  : "no primary with an address");
        return IDEM_ERR;
    }
    for (int i = 0; i < CLUSTER_SLOTS; i++)
        m->owner[i] = -1;
    for (int i = 0; i < m->nnodes; i++)
        m->nodes[i].owned = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        const redisReply *p = e->element[2];
        const char *hostname;
        const char *ip = range_ip(p, asked_ip, &hostname);
        if (ip == NULL)
            continue; /* no address: its slots have no primary we can reach */
        char port[8];
        snprintf(port, sizeof(port), "%lld", p->element[1]->integer);
        int node = cluster_map_node(m, ip, port, NULL);
        if (node < 0)
            continue; /* the table is full: its slots have no primary we know */
        struct cluster_node *n = &m->nodes[node];
        if (hostname != NULL && (n->hostname == NULL || strcmp(n->hostname, hostname) != 0)) {
            free(n->hostname);
            n->hostname = xstrdup(hostname);
        }
        for (long long s = e->element[0]->integer; s <= e->element[1]->integer; s++)
            cluster_map_set_owner(m, (unsigned)s, node);
    }
    m->loaded = true;
    return IDEM_OK;
}

bool cluster_map_covered(const struct cluster_map *m)
{
    if (!m->loaded)
        return false;
    for (int i = 0; i < CLUSTER_SLOTS; i++)
        if (m->owner[i] < 0)
            return false;
    return true;
}

enum cluster_redirect cluster_parse_redirect(const char *error, unsigned *slot, char *host,
                                             size_t hostlen, char *port, size_t portlen)
{
    enum cluster_redirect kind;
    const char *p;
    if (strncmp(error, "MOVED ", 6) == 0) {
        kind = CLUSTER_REDIRECT_MOVED;
        p = error + 6;
    } else if (strncmp(error, "ASK ", 4) == 0) {
        kind = CLUSTER_REDIRECT_ASK;
        p = error + 4;
    } else {
        return CLUSTER_REDIRECT_NONE;
    }
    char *end;
    unsigned long s = strtoul(p, &end, 10);
    if (end == p || *end != ' ' || s >= CLUSTER_SLOTS)
        return CLUSTER_REDIRECT_NONE;
    const char *addr = end + 1;
    const char *colon = strrchr(addr, ':'); /* the last: an IPv6 address has others */
    if (colon == NULL || colon[1] == '\0' || (size_t)(colon - addr) >= hostlen ||
        strlen(colon + 1) >= portlen || strspn(colon + 1, "0123456789") != strlen(colon + 1))
        return CLUSTER_REDIRECT_NONE;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    snprintf(port, portlen, "%s", colon + 1);
    *slot = (unsigned)s;
    return kind;
}
