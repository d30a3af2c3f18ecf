/*
 * webhook.h - webhook signatures checked before the claim (SPEC §11).
 *
 * A route with `verify SCHEME SECRET_FILE [tolerance DUR]` holds one
 * verifier; every request the route covers is checked against it once its
 * body is complete, before a key is claimed or a byte goes upstream, so a
 * forged delivery neither executes nor occupies a real event's key.
 *
 *   scheme    signature field(s)                      signed bytes
 *   stripe    Stripe-Signature: t=T,v1=HEX[,v1=HEX]    "T." body
 *   github    X-Hub-Signature-256: sha256=HEX          body
 *   standard  webhook-id, webhook-timestamp,           "ID.T." body
 *             webhook-signature: v1,B64[ v1,B64]
 *   shopify   X-Shopify-Hmac-Sha256: B64               body
 *
 * All HMAC-SHA256. A secret is a line of the file: its bytes, except for
 * `standard`, whose secrets are "whsec_" and the key in base64. Any secret
 * may match (rotation). Timestamps (stripe, standard) must be within the
 * tolerance of now, either way. MACs are compared in constant time.
 */
#ifndef IDEM_WEBHOOK_H
#define IDEM_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "headers.h"
#include "util.h"

#define WEBHOOK_MAX_SECRETS 8
#define WEBHOOK_DEFAULT_TOLERANCE_MS (5 * 60 * 1000)

enum webhook_scheme { WEBHOOK_STRIPE, WEBHOOK_GITHUB, WEBHOOK_STANDARD, WEBHOOK_SHOPIFY };

struct webhook_secret {
    uint8_t *bytes;
    size_t len;
};

struct webhook_verifier {
    enum webhook_scheme scheme;
    struct webhook_secret secrets[WEBHOOK_MAX_SECRETS];
    int nsecrets;
    int64_t tolerance_s; /* stripe and standard */
    char *secret_file;   /* as configured, for messages */
};

enum webhook_result {
    WEBHOOK_VALID,
    WEBHOOK_MISSING,   /* no signature field, or one of several */
    WEBHOOK_MALFORMED, /* a field that does not parse */
    WEBHOOK_STALE,     /* timestamp outside the tolerance */
    WEBHOOK_MISMATCH,  /* no secret gives any of the signatures */
};

/* Scheme by name ("stripe", ...); false for an unknown one. */
bool webhook_scheme_parse(const char *name, enum webhook_scheme *out);
const char *webhook_scheme_name(enum webhook_scheme scheme);
/* Whether the scheme signs a timestamp (tolerance applies). */
bool webhook_scheme_has_timestamp(enum webhook_scheme scheme);

/* A verifier with no secret yet. */
struct webhook_verifier *webhook_verifier_new(enum webhook_scheme scheme, uint64_t tolerance_ms);
/* Adds one secret as written in a secret file's line. NULL, or a phrase in msg. */
const char *webhook_add_secret(struct webhook_verifier *v, const char *text, size_t len, char *msg,
                               size_t msglen);
/* Reads the secrets of a file (one per line, blank lines skipped; private to
 * its owner). NULL, or a phrase in msg. */
const char *webhook_load_secrets(struct webhook_verifier *v, const char *path, char *msg,
                                 size_t msglen);
void webhook_verifier_free(struct webhook_verifier *v);

/* Checks a request's signature; now_s is the Unix time in seconds. */
enum webhook_result webhook_verify(const struct webhook_verifier *v, const struct header_list *h,
                                   const char *body, size_t body_len, int64_t now_s);
const char *webhook_result_phrase(enum webhook_result r);

#endif
