/* test_protocol.c — daemon/worker framing: round trips through a socket,
 * frames split across reads byte by byte, several frames in one read,
 * oversized length, malformed JSON, non-object JSON, EOF inside a frame, and
 * the writer queue. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto/frame.h"

static void make_pair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

/* Feeds raw bytes and returns the reader's verdict on the next frame. */
static int next_after_feed(struct lyra_frame_reader *r, const void *data, size_t len, json_t **out,
                           struct lyra_err *err)
{
    assert_int_equal(lyra_frame_reader_feed(r, data, len, err), 0);
    return lyra_frame_reader_next(r, out, err);
}

static void frame_bytes(const char *json, unsigned char *out, size_t *len)
{
    size_t n = strlen(json);
    out[0] = (unsigned char)(n >> 24);
    out[1] = (unsigned char)(n >> 16);
    out[2] = (unsigned char)(n >> 8);
    out[3] = (unsigned char)n;
    memcpy(out + 4, json, n);
    *len = n + 4;
}

static void test_round_trip(void **state)
{
    int sv[2];
    make_pair(sv);
    json_t *msg = json_pack("{s:s, s:I, s:s, s:[i,i]}", "type", "generate", "id", (json_int_t)1 << 40,
                            "prompt", "caf\xc3\xa9 \xe2\x82\xac \"quoted\"\n", "list", 1, 2);
    struct lyra_err err = {0};
    assert_int_equal(lyra_frame_write(sv[0], msg, &err), 0);

    /* the wire format: 4-byte big-endian length, then compact JSON */
    unsigned char hdr[4];
    assert_int_equal(recv(sv[1], hdr, 4, MSG_PEEK), 4);
    uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    char *dump = json_dumps(msg, JSON_COMPACT);
    assert_int_equal(len, strlen(dump));
    free(dump);

    struct lyra_frame_reader *r = lyra_frame_reader_new();
    json_t *got = NULL;
    while (!got) {
        int n = lyra_frame_reader_read(r, sv[1], &err);
        assert_true(n > 0);
        assert_int_equal(lyra_frame_reader_next(r, &got, &err), 0);
    }
    assert_true(json_equal(msg, got));
    /* a NUL inside a string is data, not a protocol error */
    json_decref(got);
    got = NULL;
    json_decref(msg);
    msg = json_pack("{s:s%}", "prompt", "a\0b", (size_t)3);
    assert_int_equal(lyra_frame_write(sv[0], msg, &err), 0);
    while (!got) {
        assert_true(lyra_frame_reader_read(r, sv[1], &err) > 0);
        assert_int_equal(lyra_frame_reader_next(r, &got, &err), 0);
    }
    assert_int_equal(json_string_length(json_object_get(got, "prompt")), 3);
    assert_true(json_equal(msg, got));
    assert_int_equal(lyra_frame_reader_buffered(r), 0);
    assert_int_equal(lyra_frame_reader_eof(r, &err), 0);
    json_decref(got);
    json_decref(msg);

    /* a non-object is refused before anything is written */
    json_t *arr = json_array();
    assert_int_equal(lyra_frame_write(sv[0], arr, &err), LYRA_EINVAL);
    json_decref(arr);

    /* EOF: read returns 0; non-blocking and empty: LYRA_EBUSY */
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    assert_int_equal(lyra_frame_reader_read(r, sv[1], &err), LYRA_EBUSY);
    close(sv[0]);
    assert_int_equal(lyra_frame_reader_read(r, sv[1], &err), 0);
    lyra_frame_reader_free(r);
    close(sv[1]);
}

static void test_byte_by_byte(void **state)
{
    unsigned char buf[256];
    size_t len;
    frame_bytes("{\"type\":\"token\",\"id\":7,\"text\":\"\xe2\x82\xac\",\"n\":1}", buf, &len);
    struct lyra_frame_reader *r = lyra_frame_reader_new();
    struct lyra_err err = {0};
    json_t *got = NULL;
    for (size_t i = 0; i < len; i++) {
        assert_null(got);
        assert_int_equal(next_after_feed(r, buf + i, 1, &got, &err), 0);
        if (i + 1 < len) {
            assert_null(got);
            assert_int_equal(lyra_frame_reader_buffered(r), i + 1);
            /* EOF now would be inside a frame */
            assert_int_equal(lyra_frame_reader_eof(r, &err), LYRA_EPARSE);
        }
    }
    assert_non_null(got);
    assert_string_equal(json_string_value(json_object_get(got, "text")), "\xe2\x82\xac");
    assert_int_equal(json_integer_value(json_object_get(got, "id")), 7);
    json_decref(got);
    lyra_frame_reader_free(r);
}

static void test_many_frames_one_read(void **state)
{
    int sv[2];
    make_pair(sv);
    struct lyra_frame_writer *w = lyra_frame_writer_new();
    struct lyra_err err = {0};
    for (int i = 0; i < 100; i++) {
        json_t *m = json_pack("{s:s, s:i}", "type", "status", "id", i);
        assert_int_equal(lyra_frame_writer_add(w, m, &err), 0);
        json_decref(m);
    }
    const char raw[] = "{\"type\":\"token\",\"id\":100,\"text\":\"x\",\"n\":1}";
    assert_int_equal(lyra_frame_writer_add_raw(w, raw, sizeof raw - 1, &err), 0);
    assert_true(lyra_frame_writer_pending(w) > 100 * 4);
    assert_int_equal(lyra_frame_writer_flush(w, sv[0], &err), 0);
    assert_int_equal(lyra_frame_writer_pending(w), 0);
    close(sv[0]);

    struct lyra_frame_reader *r = lyra_frame_reader_new();
    int seen = 0, n;
    while ((n = lyra_frame_reader_read(r, sv[1], &err)) > 0) {
        json_t *m;
        while (lyra_frame_reader_next(r, &m, &err) == 0 && m) {
            assert_int_equal(json_integer_value(json_object_get(m, "id")), seen);
            seen++;
            json_decref(m);
        }
    }
    assert_int_equal(n, 0);
    assert_int_equal(seen, 101);
    assert_int_equal(lyra_frame_reader_eof(r, &err), 0);
    lyra_frame_reader_free(r);
    lyra_frame_writer_free(w);
    close(sv[1]);
}

static void test_oversize(void **state)
{
    struct lyra_frame_reader *r = lyra_frame_reader_new();
    struct lyra_err err = {0};
    uint32_t big = LYRA_FRAME_MAX + 1;
    unsigned char hdr[4] = {(unsigned char)(big >> 24), (unsigned char)(big >> 16), (unsigned char)(big >> 8),
                            (unsigned char)big};
    json_t *got = NULL;
    assert_int_equal(next_after_feed(r, hdr, 4, &got, &err), LYRA_ETOOBIG);
    assert_null(got);
    assert_non_null(strstr(err.msg, "exceeds"));
    /* sticky: a later valid frame is not accepted */
    unsigned char buf[64];
    size_t len;
    frame_bytes("{}", buf, &len);
    assert_int_equal(lyra_frame_reader_feed(r, buf, len, &err), LYRA_ETOOBIG);
    assert_int_equal(lyra_frame_reader_next(r, &got, &err), LYRA_ETOOBIG);
    lyra_frame_reader_free(r);

    /* exactly the limit is a length the reader waits for, not an error */
    r = lyra_frame_reader_new();
    uint32_t max = LYRA_FRAME_MAX;
    unsigned char hdr2[4] = {(unsigned char)(max >> 24), (unsigned char)(max >> 16), (unsigned char)(max >> 8),
                             (unsigned char)max};
    assert_int_equal(next_after_feed(r, hdr2, 4, &got, &err), 0);
    assert_null(got);
    lyra_frame_reader_free(r);

    /* the writer refuses a body over the limit */
    struct lyra_frame_writer *w = lyra_frame_writer_new();
    assert_int_equal(lyra_frame_writer_add_raw(w, "x", (size_t)LYRA_FRAME_MAX + 1, &err), LYRA_ETOOBIG);
    assert_int_equal(lyra_frame_writer_pending(w), 0);
    lyra_frame_writer_free(w);
}

static void test_malformed(void **state)
{
    static const char *bad[] = {"{\"type\":", "not json", "[1,2,3]", "\"a string\"", "", "{} {}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct lyra_frame_reader *r = lyra_frame_reader_new();
        struct lyra_err err = {0};
        unsigned char buf[64];
        size_t len;
        frame_bytes(bad[i], buf, &len);
        json_t *got = NULL;
        assert_int_equal(next_after_feed(r, buf, len, &got, &err), LYRA_EPARSE);
        assert_null(got);
        assert_true(strlen(err.msg) > 0);
        lyra_frame_reader_free(r);
    }
}

static void test_eof_mid_frame(void **state)
{
    int sv[2];
    make_pair(sv);
    unsigned char buf[64];
    size_t len;
    frame_bytes("{\"type\":\"status\",\"id\":1}", buf, &len);
    assert_int_equal(write(sv[0], buf, len - 3), (ssize_t)(len - 3));
    close(sv[0]);
    struct lyra_frame_reader *r = lyra_frame_reader_new();
    struct lyra_err err = {0};
    json_t *got = NULL;
    int n;
    while ((n = lyra_frame_reader_read(r, sv[1], &err)) > 0)
        assert_int_equal(lyra_frame_reader_next(r, &got, &err), 0);
    assert_int_equal(n, 0);
    assert_null(got);
    assert_int_equal(lyra_frame_reader_buffered(r), len - 3);
    assert_int_equal(lyra_frame_reader_eof(r, &err), LYRA_EPARSE);
    assert_non_null(strstr(err.msg, "inside a frame"));
    lyra_frame_reader_free(r);
    close(sv[1]);
}

static void test_write_to_closed_peer(void **state)
{
    int sv[2];
    make_pair(sv);
    close(sv[1]);
    json_t *m = json_pack("{s:s}", "type", "x");
    struct lyra_err err = {0};
    /* MSG_NOSIGNAL: an error, not a SIGPIPE that kills the test */
    assert_int_equal(lyra_frame_write(sv[0], m, &err), LYRA_EIO);
    assert_non_null(strstr(err.msg, strerror(EPIPE)));
    json_decref(m);
    close(sv[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),       cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_many_frames_one_read), cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_malformed),        cmocka_unit_test(test_eof_mid_frame),
        cmocka_unit_test(test_write_to_closed_peer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
