/*
 * test_store_cluster.c - the cluster topology of store_cluster.c: key slots
 * (the specification's examples, hash tags), the slot map read from a
 * CLUSTER SLOTS answer (primaries only, endpoints left empty), and the
 * -MOVED / -ASK redirections.
 */
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <stdio.h>
#include <string.h>

#include "store_cluster.h"
#include "unit.h"

static unsigned slot_of(const char *key)
{
    return cluster_key_slot(key, strlen(key));
}

START_TEST(test_key_slots)
{
    ck_assert_uint_eq(slot_of("123456789"), 12739); /* the specification's check value */
    ck_assert_uint_eq(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
    ck_assert_uint_eq(slot_of("{user1000}.following"), slot_of("user1000"));
    /* an empty tag: the whole key */
    ck_assert_uint_eq(slot_of("foo{}{bar}"), cluster_key_slot("foo{}{bar}", 10));
    ck_assert_uint_ne(slot_of("foo{}{bar}"), slot_of("bar"));
    /* the tag ends at the first '}' after the first '{' */
    ck_assert_uint_eq(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    ck_assert_uint_eq(slot_of("foo{bar}{zap}"), slot_of("bar"));
    /* no closing brace: the whole key */
    ck_assert_uint_ne(slot_of("foo{bar"), slot_of("bar"));
    ck_assert_uint_lt(slot_of(""), CLUSTER_SLOTS);
}
END_TEST

/* Our record and token key names share their tag, so one script may touch both. */
START_TEST(test_record_and_token_share_a_slot)
{
    ck_assert_uint_eq(slot_of("idem:{ab12:tok}"), slot_of("idem:token:{ab12:tok}"));
    ck_assert_uint_eq(slot_of("idem:r0011223344556677:{ab12:k}x}"),
                      slot_of("idem:token:{ab12:k}x}"));
}
END_TEST

/* A redisReply parsed from RESP text, as hiredis hands it to a callback. */
static redisReply *parse(const char *resp)
{
    redisReader *rd = redisReaderCreate();
    redisReaderFeed(rd, resp, strlen(resp));
    void *reply = NULL;
    ck_assert_int_eq(redisReaderGetReply(rd, &reply), REDIS_OK);
    ck_assert_ptr_nonnull(reply);
    redisReaderFree(rd);
    return reply;
}

START_TEST(test_map_from_cluster_slots)
{
    /* 0-5460 on :7000 (replica :7003), 5461-16383 on :7001, whose ip is empty */
    redisReply *r = parse("*2\r\n"
                          "*4\r\n:0\r\n:5460\r\n"
                          "*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n"
                          "*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nid\r\n"
                          "*3\r\n:5461\r\n:16383\r\n"
                          "*3\r\n$0\r\n\r\n:7001\r\n$2\r\nid\r\n");
    struct cluster_map m;
    cluster_map_init(&m);
    int seed = cluster_map_node(&m, "10.0.0.9", "7001", "redis.example");
    ck_assert_int_eq(cluster_map_node(&m, "10.0.0.9", "7001", NULL), seed);
    ck_assert(!cluster_map_covered(&m));
    char err[128];
    ck_assert_int_eq(cluster_map_load(&m, r, "10.0.0.9", err, sizeof(err)), IDEM_OK);
    ck_assert(cluster_map_covered(&m));
    ck_assert_int_eq(m.nnodes, 2); /* the seed and :7000; no replica */
    int a = m.owner[0];
    ck_assert_str_eq(m.nodes[a].ip, "127.0.0.1");
    ck_assert_str_eq(m.nodes[a].port, "7000");
    ck_assert_int_eq(m.owner[5460], a);
    ck_assert_int_eq(m.owner[5461], seed); /* empty ip: the node asked */
    ck_assert_int_eq(m.owner[16383], seed);
    ck_assert_int_eq(m.nodes[a].owned, 5461);
    ck_assert_int_eq(m.nodes[seed].owned, 16384 - 5461);
    cluster_map_set_owner(&m, 100, seed); /* a MOVED */
    ck_assert_int_eq(m.owner[100], seed);
    ck_assert_int_eq(m.nodes[a].owned, 5460);
    freeReplyObject(r);

    /* a map that leaves slots uncovered, and answers that are not maps */
    r = parse("*1\r\n*3\r\n:0\r\n:99\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n");
    ck_assert_int_eq(cluster_map_load(&m, r, "x", err, sizeof(err)), IDEM_OK);
    ck_assert(!cluster_map_covered(&m));
    ck_assert_int_eq(m.owner[100], -1);
    freeReplyObject(r);
    r = parse("-ERR This instance has cluster support disabled\r\n");
    ck_assert_int_eq(cluster_map_load(&m, r, "x", err, sizeof(err)), IDEM_ERR);
    ck_assert(strstr(err, "cluster support disabled") != NULL);
    freeReplyObject(r);
    r = parse("*0\r\n"); /* a cluster node that has joined no cluster */
    ck_assert_int_eq(cluster_map_load(&m, r, "x", err, sizeof(err)), IDEM_ERR);
    ck_assert(strstr(err, "no slot assigned") != NULL);
    ck_assert_int_eq(m.owner[0], a); /* untouched */
    freeReplyObject(r);
    r = parse("*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$1\r\n?\r\n:7000\r\n"); /* unknown */
    ck_assert_int_eq(cluster_map_load(&m, r, "x", err, sizeof(err)), IDEM_ERR);
    ck_assert(strstr(err, "no primary with an address") != NULL);
    ck_assert_int_eq(m.owner[0], a);
    freeReplyObject(r);
    r = parse("*1\r\n*3\r\n:5\r\n:1\r\n*2\r\n$1\r\na\r\n:1\r\n"); /* first > last */
    ck_assert_int_eq(cluster_map_load(&m, r, "x", err, sizeof(err)), IDEM_ERR);
    ck_assert_int_eq(m.owner[0], a); /* untouched */
    freeReplyObject(r);
    cluster_map_free(&m);
}
END_TEST

/* cluster-preferred-endpoint-type hostname: nodes named, addresses in metadata */
START_TEST(test_map_of_named_nodes)
{
    redisReply *r = parse("*2\r\n"
                          "*3\r\n:0\r\n:8191\r\n"
                          "*4\r\n$12\r\nredis-0.test\r\n:7000\r\n$2\r\nid\r\n"
                          "*2\r\n$2\r\nip\r\n$8\r\n10.0.0.1\r\n"
                          "*3\r\n:8192\r\n:16383\r\n"
                          "*3\r\n$12\r\nredis-1.test\r\n:7000\r\n$2\r\nid\r\n");
    struct cluster_map m;
    cluster_map_init(&m);
    char err[128];
    ck_assert_int_eq(cluster_map_load(&m, r, "10.0.0.9", err, sizeof(err)), IDEM_OK);
    int a = m.owner[0];
    ck_assert_int_ge(a, 0);
    ck_assert_str_eq(m.nodes[a].ip, "10.0.0.1");           /* connected by address */
    ck_assert_str_eq(m.nodes[a].hostname, "redis-0.test"); /* what TLS checks */
    ck_assert_ptr_null(m.nodes[a].name);
    /* a name without an address is no primary we can reach */
    ck_assert_int_eq(m.owner[8192], -1);
    ck_assert(!cluster_map_covered(&m));
    /* a redirection by name finds the node; an unknown name finds none */
    ck_assert_int_eq(cluster_map_find(&m, "redis-0.test", "7000"), a);
    ck_assert_int_eq(cluster_map_find(&m, "10.0.0.1", "7000"), a);
    ck_assert_int_eq(cluster_map_find(&m, "redis-0.test", "7001"), -1);
    ck_assert_int_eq(cluster_map_find(&m, "redis-1.test", "7000"), -1);
    /* a seed (configured as an address) named by the cluster: found by that name */
    int seed = cluster_map_node(&m, "10.0.0.2", "7000", "10.0.0.2");
    freeReplyObject(r);
    r = parse("*1\r\n*3\r\n:8192\r\n:16383\r\n"
              "*4\r\n$12\r\nredis-2.test\r\n:7000\r\n$2\r\nid\r\n"
              "*2\r\n$2\r\nip\r\n$8\r\n10.0.0.2\r\n");
    ck_assert_int_eq(cluster_map_load(&m, r, "10.0.0.9", err, sizeof(err)), IDEM_OK);
    ck_assert_int_eq(m.owner[8192], seed);
    ck_assert_int_eq(cluster_map_find(&m, "redis-2.test", "7000"), seed);
    ck_assert_str_eq(m.nodes[seed].name, "10.0.0.2"); /* as configured: TLS checks that */
    ck_assert(cluster_numeric_address("127.0.0.1") && cluster_numeric_address("::1"));
    ck_assert(!cluster_numeric_address("localhost") && !cluster_numeric_address(""));
    freeReplyObject(r);
    cluster_map_free(&m);
}
END_TEST

/* Nodes that come and go at new addresses: a forgotten node's place is
 * taken by the next new one, and the table stops at CLUSTER_NODES_MAX. */
START_TEST(test_forgotten_nodes_are_reused)
{
    struct cluster_map m;
    cluster_map_init(&m);
    int seed = cluster_map_node(&m, "10.0.0.1", "7000", "seed");
    int old = cluster_map_node(&m, "10.0.0.2", "7000", NULL);
    cluster_map_set_owner(&m, 5, old);
    cluster_map_forget(&m, old); /* owns a slot: kept */
    ck_assert(cluster_map_in_use(&m, old));
    cluster_map_set_owner(&m, 5, seed);
    cluster_map_forget(&m, old);
    ck_assert(!cluster_map_in_use(&m, old));
    ck_assert_int_eq(cluster_map_find(&m, "10.0.0.2", "7000"), -1);
    ck_assert(cluster_map_in_use(&m, seed));
    /* a new node takes the free place; the same address again is that node */
    int fresh = cluster_map_node(&m, "10.0.0.3", "7000", NULL);
    ck_assert_int_eq(fresh, old);
    ck_assert_int_eq(m.nnodes, 2);
    ck_assert_str_eq(m.nodes[fresh].ip, "10.0.0.3");
    ck_assert_int_eq(m.nodes[fresh].owned, 0);
    ck_assert_int_eq(cluster_map_node(&m, "10.0.0.3", "7000", NULL), fresh);
    /* a thousand replacements later the table has not grown */
    char ip[32];
    for (int i = 0; i < 1000; i++) {
        cluster_map_forget(&m, fresh);
        snprintf(ip, sizeof(ip), "10.1.%d.%d", i / 250, i % 250);
        fresh = cluster_map_node(&m, ip, "7000", NULL);
    }
    ck_assert_int_eq(m.nnodes, 2);
    /* full: no more nodes, and no owner index past int16_t */
    for (int i = m.nnodes; i < CLUSTER_NODES_MAX; i++) {
        snprintf(ip, sizeof(ip), "10.2.%d.%d", i / 250, i % 250);
        ck_assert_int_eq(cluster_map_node(&m, ip, "7000", NULL), i);
    }
    ck_assert_int_eq(cluster_map_node(&m, "10.3.0.1", "7000", NULL), -1);
    cluster_map_free(&m);
}
END_TEST

START_TEST(test_redirections)
{
    unsigned slot = 0;
    char host[64], port[8];
    ck_assert_int_eq(cluster_parse_redirect("MOVED 3999 127.0.0.1:6381", &slot, host, sizeof(host),
                                            port, sizeof(port)),
                     CLUSTER_REDIRECT_MOVED);
    ck_assert_uint_eq(slot, 3999);
    ck_assert_str_eq(host, "127.0.0.1");
    ck_assert_str_eq(port, "6381");
    ck_assert_int_eq(
        cluster_parse_redirect("ASK 16383 ::1:7002", &slot, host, sizeof(host), port, sizeof(port)),
        CLUSTER_REDIRECT_ASK);
    ck_assert_uint_eq(slot, 16383);
    ck_assert_str_eq(host, "::1");
    ck_assert_str_eq(port, "7002");
    ck_assert_int_eq(
        cluster_parse_redirect("MOVED 1 :7000", &slot, host, sizeof(host), port, sizeof(port)),
        CLUSTER_REDIRECT_MOVED);
    ck_assert_str_eq(host, "");
    const char *bad[] = {"MOVED 16384 a:1", "MOVED x a:1", "MOVED 1 a",
                         "ASK 1 a:",        "ASK 1 a:1x",  "CLUSTERDOWN The cluster is down",
                         "TRYAGAIN",        "MOVED"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(cluster_parse_redirect(bad[i], &slot, host, sizeof(host), port,
                                             sizeof(port)) == CLUSTER_REDIRECT_NONE,
                      "%s", bad[i]);
}
END_TEST

static Suite *store_cluster_suite(void)
{
    Suite *s = suite_create("store_cluster");
    TCase *tc = tcase_create("topology");
    tcase_add_test(tc, test_key_slots);
    tcase_add_test(tc, test_record_and_token_share_a_slot);
    tcase_add_test(tc, test_map_from_cluster_slots);
    tcase_add_test(tc, test_map_of_named_nodes);
    tcase_add_test(tc, test_forgotten_nodes_are_reused);
    tcase_add_test(tc, test_redirections);
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(store_cluster_suite)
