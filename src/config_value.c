/*
 * config_value.c - parsers for the values a directive takes: a string in, a
 * number or a verdict out. No state, no allocation, no messages: a setter
 * that gets IDEM_ERR here writes the phrase, so each can say what it expected.
 *
 *   "30s" --config_parse_duration()--> 30000 ms --config_format_duration()--> "30s"
 *   "64k" --config_parse_size()------> 65536 bytes
 */
#include "config_value.h"

#include <stdio.h>
#include <string.h>

int config_parse_duration(const char *s, uint64_t *ms)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    uint64_t n = 0;
    const char *p = s;

    if (*p < '0' || *p > '9')
        return IDEM_ERR;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned digit = (unsigned)(*p - '0');
        if (n > (UINT64_MAX - digit) / 10)
            return IDEM_ERR;
        n = n * 10 + digit;
    }
    for (size_t i = 0; i < ARRAY_LEN(units); i++) {
        if (strcmp(p, units[i].unit) != 0)
            continue;
        if (n > UINT64_MAX / units[i].ms)
            return IDEM_ERR;
        *ms = n * units[i].ms;
        return IDEM_OK;
    }
    return IDEM_ERR;
}

int config_parse_size(const char *s, size_t *bytes)
{
    size_t n = 0;
    size_t mult = 1;
    const char *p = s;

    if (*p < '0' || *p > '9')
        return IDEM_ERR;
    for (; *p >= '0' && *p <= '9'; p++) {
        size_t digit = (size_t)(*p - '0');
        if (n > (SIZE_MAX - digit) / 10)
            return IDEM_ERR;
        n = n * 10 + digit;
    }
    switch (*p) {
    case '\0': break;
    case 'k':
    case 'K': mult = 1024; break;
    case 'm':
    case 'M': mult = 1024 * 1024; break;
    case 'g':
    case 'G': mult = 1024 * 1024 * 1024; break;
    default: return IDEM_ERR;
    }
    if (*p != '\0' && p[1] != '\0')
        return IDEM_ERR;
    if (n > SIZE_MAX / mult)
        return IDEM_ERR;
    *bytes = n * mult;
    return IDEM_OK;
}

/* "30s", "1m", "1500ms": the largest unit that divides ms exactly. */
const char *config_format_duration(uint64_t ms, char buf[32])
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    for (size_t i = 0; i < ARRAY_LEN(units); i++) {
        if (ms != 0 && ms % units[i].ms == 0) {
            snprintf(buf, 32, "%llu%s", (unsigned long long)(ms / units[i].ms), units[i].unit);
            return buf;
        }
    }
    snprintf(buf, 32, "%llums", (unsigned long long)ms);
    return buf;
}

/* Decimal digits only, lo..hi. */
int config_parse_int(const char *s, long lo, long hi, int *out)
{
    long n = 0;
    if (*s == '\0')
        return IDEM_ERR;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9' || n > hi)
            return IDEM_ERR;
        n = n * 10 + (*s - '0');
    }
    if (n < lo || n > hi)
        return IDEM_ERR;
    *out = (int)n;
    return IDEM_OK;
}

/* RFC 9110 token characters: what a header field name may contain. */
bool config_valid_header_name(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", c) != NULL))
            return false;
    }
    return true;
}
