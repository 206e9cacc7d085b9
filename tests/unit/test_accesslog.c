/* Unit tests for proxy/accesslog: line formats, secret masking, and no stray bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/accesslog.h"

static char *line_of(const struct access_entry *e, size_t *len)
{
    struct evbuffer *b = evbuffer_new();
    accesslog_append(b, e);
    *len = evbuffer_get_length(b);
    char *s = calloc(1, *len + 1);
    evbuffer_remove(b, s, *len);
    evbuffer_free(b);
    return s;
}

/* Regression: a miscounted literal wrote the terminating NUL after every line whose Apple
 * quota was unknown, so the next line began with a NUL byte. */
static void test_regression_no_nul_bytes(void **state)
{
    char err[128];
    assert_int_equal(accesslog_open("-", ACCESSLOG_JSON, err, sizeof(err)), 0);
    for (int quota = -1; quota <= 7; quota += 8)
        for (int reused = -1; reused <= 1; reused++) {
            struct access_entry e = {.time = 1795914872.25, .remote = "127.0.0.1:1",
                                     .method = "GET", .method_len = 3, .target = "/v1/apps",
                                     .target_len = 8, .status = 200, .outcome = "ok",
                                     .upstream_reused = reused, .quota_remaining = quota};
            size_t len;
            char *s = line_of(&e, &len);
            assert_int_equal(strlen(s), len); /* no NUL inside */
            assert_int_equal(s[len - 1], '\n');
            cJSON *j = cJSON_Parse(s);
            assert_non_null(j);
            cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "apple_quota_remaining");
            if (quota < 0)
                assert_true(cJSON_IsNull(q));
            else
                assert_int_equal((int)q->valuedouble, quota);
            cJSON_Delete(j);
            free(s);
        }
    accesslog_close();
}

static void test_masking(void **state)
{
    char out[256];
    const char *t = "/v1/x?limit=2&token=abc&api_key=k&Signature=s&name=ok";
    accesslog_mask_target(t, strlen(t), out, sizeof(out));
    assert_string_equal(out, "/v1/x?limit=2&token=***&api_key=***&Signature=***&name=ok");
    t = "/plain";
    accesslog_mask_target(t, strlen(t), out, sizeof(out));
    assert_string_equal(out, "/plain");
    /* truncation keeps the output NUL-terminated and within the buffer */
    char small[8];
    t = "/abcdefghijk?token=zzz";
    assert_true(accesslog_mask_target(t, strlen(t), small, sizeof(small)) < sizeof(small));
    assert_int_equal(small[7], '\0');
}

static void test_escaping(void **state)
{
    char err[128];
    assert_int_equal(accesslog_open("-", ACCESSLOG_JSON, err, sizeof(err)), 0);
    struct access_entry e = {.time = 1, .method = "GET", .method_len = 3,
                             .target = "/a\"b\\c\x01", .target_len = 7, .status = 400,
                             .outcome = "ok", .upstream_reused = -1, .quota_remaining = -1,
                             .client = "bot", .error = "PROXY_BAD_REQUEST"};
    size_t len;
    char *s = line_of(&e, &len);
    cJSON *j = cJSON_Parse(s);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "path")->valuestring, "/a\"b\\c\x01");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "client")->valuestring, "bot");
    cJSON_Delete(j);
    free(s);
    accesslog_close();
}

/* Strings are copied in runs between the bytes that need an escape: every byte value 1-255,
 * each between two plain ones, comes out as the line's JSON escapes it (quote and backslash
 * with a backslash, controls and bytes past 0x7e as \u00XX), the plain ones around it intact. */
static void test_escaping_every_byte(void **state)
{
    char err[128], client[3 * 255 + 1], want[64 + 3 * 255 * 6];
    size_t o = 0, w = 0;
    assert_int_equal(accesslog_open("-", ACCESSLOG_JSON, err, sizeof(err)), 0);
    w += (size_t)snprintf(want, sizeof(want), "\"client\":\"");
    for (int c = 1; c < 256; c++) {
        client[o++] = 'a';
        client[o++] = (char)c;
        client[o++] = 'z';
        want[w++] = 'a';
        if (c == '"' || c == '\\') {
            want[w++] = '\\';
            want[w++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            w += (size_t)snprintf(want + w, sizeof(want) - w, "\\u%04x", c);
        } else {
            want[w++] = (char)c;
        }
        want[w++] = 'z';
    }
    client[o] = '\0';
    want[w++] = '"';
    want[w] = '\0';
    struct access_entry e = {.time = 1, .method = "GET", .method_len = 3, .target = "/",
                             .target_len = 1, .status = 200, .outcome = "ok",
                             .upstream_reused = -1, .quota_remaining = -1, .client = client};
    size_t len;
    char *s = line_of(&e, &len);
    assert_non_null(strstr(s, want));
    free(s);
    accesslog_close();
}

static void test_text_format(void **state)
{
    char err[128];
    assert_int_equal(accesslog_open("-", ACCESSLOG_TEXT, err, sizeof(err)), 0);
    struct access_entry e = {.time = 1795914872.5, .remote = "127.0.0.1:9", .method = "POST",
                             .method_len = 4, .target = "/x?password=p", .target_len = 13,
                             .status = 201, .outcome = "ok", .upstream_reused = 1,
                             .quota_remaining = -1};
    size_t len;
    char *s = line_of(&e, &len);
    assert_non_null(strstr(s, "POST /x?password=*** 201"));
    assert_null(strstr(s, "=p "));
    assert_int_equal(strlen(s), len);
    free(s);
    accesslog_close();
}

/* A push's apns-id is in its line (JSON and text); lines without one do not mention it. */
static void test_apns_id(void **state)
{
    char err[128];
    struct access_entry e = {.time = 1795914872.5, .remote = "127.0.0.1:9", .method = "POST",
                             .method_len = 4, .target = "/3/device/ab", .target_len = 12,
                             .status = 200, .outcome = "ok", .upstream_reused = 1,
                             .quota_remaining = -1,
                             .apns_id = "123E4567-E89B-12D3-A456-4266554400A0"};
    size_t len;
    char *s;
    cJSON *doc;
    (void)state;
    assert_int_equal(accesslog_open("-", ACCESSLOG_JSON, err, sizeof(err)), 0);
    s = line_of(&e, &len);
    doc = cJSON_Parse(s);
    assert_non_null(doc);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(doc, "apns_id")->valuestring,
                        "123E4567-E89B-12D3-A456-4266554400A0");
    assert_non_null(cJSON_GetObjectItemCaseSensitive(doc, "apple_quota_remaining"));
    cJSON_Delete(doc);
    free(s);
    e.apns_id = NULL;
    s = line_of(&e, &len);
    assert_null(strstr(s, "apns_id"));
    free(s);
    accesslog_close();
    assert_int_equal(accesslog_open("-", ACCESSLOG_TEXT, err, sizeof(err)), 0);
    e.apns_id = "123E4567-E89B-12D3-A456-4266554400A0";
    s = line_of(&e, &len);
    assert_non_null(strstr(s, " apns_id=123E4567-E89B-12D3-A456-4266554400A0\n"));
    free(s);
    accesslog_close();
}

/* The JSON line, byte for byte: each field, its escapes, the largest counter, the three values
 * of upstream_reused and both of the quota, the duration rounded to the microsecond, and a
 * timestamp whose second part is reused from the line before. */
static void test_exact_json_line(void **state)
{
    char err[128];
    static const char *const want[] = {
        "{\"time\":\"2026-11-29T01:14:32.250Z\",\"client\":\"ci\\\"bot\\\\\",\"remote\":\"127.0.0.1:5\",\"method\":\"POST\",\"path\":\"/3/device/ab?token=***&x=\\u0001\\u00c3\\u00a9\",\"route\":\"push\",\"credential\":\"apns\",\"status\":403,\"error\":\"PROXY_X\",\"outcome\":\"ok\",\"bytes_in\":12,\"bytes_out\":18446744073709551615,\"duration\":0.012346,\"upstream_reused\":true,\"apns_id\":\"ID\\u007f\\u0009\",\"apple_quota_remaining\":3600}\n",
        "{\"time\":\"2026-11-29T01:14:33.999Z\",\"client\":null,\"remote\":\"127.0.0.1:5\",\"method\":\"POST\",\"path\":\"/3/device/ab?token=***&x=\\u0001\\u00c3\\u00a9\",\"route\":\"push\",\"credential\":\"apns\",\"status\":403,\"error\":null,\"outcome\":\"ok\",\"bytes_in\":12,\"bytes_out\":18446744073709551615,\"duration\":2.500000,\"upstream_reused\":null,\"apple_quota_remaining\":null}\n",
        "{\"time\":\"2026-11-29T01:14:33.999Z\",\"client\":null,\"remote\":\"127.0.0.1:5\",\"method\":\"POST\",\"path\":\"/3/device/ab?token=***&x=\\u0001\\u00c3\\u00a9\",\"route\":\"push\",\"credential\":\"apns\",\"status\":403,\"error\":null,\"outcome\":\"ok\",\"bytes_in\":12,\"bytes_out\":18446744073709551615,\"duration\":0.000000,\"upstream_reused\":false,\"apple_quota_remaining\":null}\n"};
    struct access_entry e = {.time = 1795914872.25, .client = "ci\"bot\\", .remote = "127.0.0.1:5",
                             .method = "POST", .method_len = 4,
                             .target = "/3/device/ab?token=s3cret&x=\x01\xc3\xa9", .target_len = 31,
                             .route = "push", .credential = "apns", .status = 403,
                             .error = "PROXY_X", .outcome = "ok", .bytes_in = 12,
                             .bytes_out = UINT64_MAX, .duration = 0.0123456, .upstream_reused = 1,
                             .quota_remaining = 3600, .apns_id = "ID\x7f\t"};
    size_t len;
    char *s;
    (void)state;
    assert_int_equal(accesslog_open("-", ACCESSLOG_JSON, err, sizeof(err)), 0);
    s = line_of(&e, &len);
    assert_string_equal(s, want[0]);
    free(s);
    e.upstream_reused = -1;
    e.quota_remaining = -1;
    e.apns_id = NULL;
    e.client = NULL;
    e.error = NULL;
    e.duration = 2.5;
    e.time = 1795914873.999;
    s = line_of(&e, &len);
    assert_string_equal(s, want[1]);
    free(s);
    e.upstream_reused = 0;
    e.duration = 0;
    s = line_of(&e, &len);
    assert_string_equal(s, want[2]);
    free(s);
    accesslog_close();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regression_no_nul_bytes),
        cmocka_unit_test(test_exact_json_line),
        cmocka_unit_test(test_masking),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_escaping_every_byte),
        cmocka_unit_test(test_text_format),
        cmocka_unit_test(test_apns_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
