/*
 * config_value.h - the syntax of single configuration values: durations,
 * sizes, bounded integers and header names. Pure functions of a string,
 * shared by the directive setters (config.c, config_policy.c) and by tests.
 */
#ifndef IDEM_CONFIG_VALUE_H
#define IDEM_CONFIG_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/*
 * "30s", "1500ms", "24h": digits then one of ms, s, m, h, d. Stores the
 * milliseconds in *ms and returns IDEM_OK, or returns IDEM_ERR (also on
 * overflow) and leaves *ms alone.
 */
int config_parse_duration(const char *s, uint64_t *ms) MUST_CHECK;

/* "512", "64k", "1m", "1g" (either case; powers of 1024). Same contract. */
int config_parse_size(const char *s, size_t *bytes) MUST_CHECK;

/* Decimal digits only, within lo..hi (hi <= INT_MAX). Same contract. */
int config_parse_int(const char *s, long lo, long hi, int *out) MUST_CHECK;

/* RFC 9110 token characters, at least one: what a header field name may be. */
bool config_valid_header_name(const char *s);

/*
 * Writes ms into buf in the largest unit that divides it exactly ("30s",
 * "1m", "1500ms") and returns buf.
 */
const char *config_format_duration(uint64_t ms, char buf[32]);

#endif
