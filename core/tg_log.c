/*
 * tg_log.c: error log and access log (see tg_log.h).
 *
 * The error log is written line by line with one write(2) each, so lines from
 * several workers appending to the same file never interleave. The access log
 * is buffered and flushed per loop iteration: at high request rates one write
 * per request would cost more than the request itself.
 *
 * State is per process (a worker inherits the master's and may reopen), kept
 * in one static struct: the logs are process-wide by nature, like stderr.
 */
#include "tg_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define TG_LOG_LINE_MAX    4096       /* longer error lines are truncated */
#define TG_ACCESS_BUF_SIZE (64 * 1024) /* flushed when full or per loop turn */

static struct {
    int  fd;
    int  level;
    int  owns_fd;
    char role[32];
    int  access_fd;
    int  access_owns_fd;
    char access_buf[TG_ACCESS_BUF_SIZE];
    size_t access_len;
} tg_logs = { 2, TG_LOG_INFO, 0, "main", -1, 0, {0}, 0 };

static const char *level_names[] = { "debug", "info", "notice", "warn", "error", "crit" };

int tg_log_level_parse(const char *name) {
    for (size_t i = 0; i < tg_nelems(level_names); i++)
        if (strcmp(name, level_names[i]) == 0) return (int)i;
    if (strcmp(name, "warning") == 0) return TG_LOG_WARN;
    if (strcmp(name, "err") == 0) return TG_LOG_ERR;
    return -1;
}

const char *tg_log_level_name(int level) {
    if (level < 0 || level >= (int)tg_nelems(level_names)) return "?";
    return level_names[level];
}

static int open_target(const char *path, int *owns) {
    *owns = 0;
    if (path == NULL || strcmp(path, "off") == 0) return -1;
    if (strcmp(path, "stderr") == 0) return 2;
    if (strcmp(path, "stdout") == 0) return 1;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) *owns = 1;
    return fd;
}

int tg_log_open(const char *path, int level) {
    int owns;
    int fd = open_target(path, &owns);
    if (fd < 0 && path && strcmp(path, "off") != 0) return TG_ERROR;
    if (tg_logs.owns_fd && tg_logs.fd >= 0) close(tg_logs.fd);
    tg_logs.fd = fd;
    tg_logs.owns_fd = owns;
    tg_logs.level = level;
    return TG_OK;
}

void tg_log_set_role(const char *role) {
    snprintf(tg_logs.role, sizeof(tg_logs.role), "%s", role);
}

int tg_log_enabled(int level) {
    return tg_logs.fd >= 0 && level >= tg_logs.level;
}

static size_t format_time(char *buf, size_t cap) {
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(buf, cap, "%Y/%m/%d %H:%M:%S", &tm);
    n += (size_t)snprintf(buf + n, cap - n, ".%03d", (int)(tv.tv_usec / 1000));
    return n;
}

void tg_log_vwrite(int level, const char *request_id, const char *fmt, va_list ap) {
    if (!tg_log_enabled(level)) return;
    char line[TG_LOG_LINE_MAX];
    int saved_errno = errno;
    size_t n = format_time(line, sizeof(line));
    n += (size_t)snprintf(line + n, sizeof(line) - n, " [%s] %s[%d]: ",
                          tg_log_level_name(level), tg_logs.role, (int)getpid());
    if (request_id && *request_id && n + 16 < sizeof(line)) {
        /* Escaped like a JSON string: a plugin-set id must not be able to
         * forge fields of the line. */
        memcpy(line + n, "request_id=\"", 12);
        n += 12;
        tg_json_escape(line, sizeof(line) / 2, &n, request_id, strlen(request_id));
        memcpy(line + n, "\" ", 2);
        n += 2;
    }
    if (n < sizeof(line)) {
        int m = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        if (m > 0) n += (size_t)m;
    }
    if (n > sizeof(line) - 2) n = sizeof(line) - 2;
    line[n++] = '\n';
    ssize_t w = write(tg_logs.fd, line, n);
    (void)w;
    errno = saved_errno;
}

void tg_log_write(int level, const char *request_id, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    tg_log_vwrite(level, request_id, fmt, ap);
    va_end(ap);
}

int tg_access_log_open(const char *path) {
    tg_access_log_close();
    int owns;
    int fd = open_target(path, &owns);
    if (fd < 0 && path && strcmp(path, "off") != 0) return TG_ERROR;
    tg_logs.access_fd = fd;
    tg_logs.access_owns_fd = owns;
    return TG_OK;
}

void tg_access_log_close(void) {
    tg_access_log_flush();
    if (tg_logs.access_owns_fd && tg_logs.access_fd >= 0) close(tg_logs.access_fd);
    tg_logs.access_fd = -1;
    tg_logs.access_owns_fd = 0;
}

int tg_access_log_enabled(void) {
    return tg_logs.access_fd >= 0;
}

void tg_access_log_flush(void) {
    size_t off = 0;
    while (off < tg_logs.access_len) {
        ssize_t w = write(tg_logs.access_fd, tg_logs.access_buf + off, tg_logs.access_len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;   /* a full disk must not stall the worker: drop */
        off += (size_t)w;
    }
    tg_logs.access_len = 0;
}

void tg_access_log_append(const char *line, size_t len) {
    if (tg_logs.access_fd < 0) return;
    if (tg_logs.access_len + len + 1 > sizeof(tg_logs.access_buf)) tg_access_log_flush();
    if (len + 1 > sizeof(tg_logs.access_buf)) len = sizeof(tg_logs.access_buf) - 1;
    memcpy(tg_logs.access_buf + tg_logs.access_len, line, len);
    tg_logs.access_len += len;
    tg_logs.access_buf[tg_logs.access_len++] = '\n';
}

/* Length of the valid UTF-8 sequence at s[0..len), or 0 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *s, size_t len) {
    unsigned char c = s[0];
    size_t n;
    unsigned min;
    unsigned cp;
    if (c >= 0xc2 && c <= 0xdf) { n = 2; cp = c & 0x1f; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { n = 3; cp = c & 0x0f; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (len < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

void tg_json_escape(char *out, size_t cap, size_t *pos, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    size_t p = *pos;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (p + 6 >= cap) break;
        if (c == '"' || c == '\\') {
            out[p++] = '\\';
            out[p++] = (char)c;
        } else if (c >= 0x80) {
            /* Valid UTF-8 passes as is; any other byte is escaped so that the
             * output is valid JSON whatever a client sends. */
            size_t n = utf8_seq((const unsigned char *)s + i, len - i);
            if (n && p + n < cap - 6) {
                memcpy(out + p, s + i, n);
                p += n;
                i += n - 1;
            } else {
                out[p++] = '\\'; out[p++] = 'u'; out[p++] = '0'; out[p++] = '0';
                out[p++] = hex[c >> 4]; out[p++] = hex[c & 15];
            }
        } else if (c < 0x20 || c == 0x7f) {
            out[p++] = '\\'; out[p++] = 'u'; out[p++] = '0'; out[p++] = '0';
            out[p++] = hex[c >> 4]; out[p++] = hex[c & 15];
        } else {
            out[p++] = (char)c;
        }
    }
    *pos = p;
}
