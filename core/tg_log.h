/*
 * tg_log.h: the error log (levels, one line per event, with context) and the
 * access log (one JSON line per request, batched per loop iteration).
 *
 * Messages are lowercase, values quoted; log once, where the decision is
 * made. Never pass secrets (Authorization, API keys, cookies) to these.
 */
#ifndef TG_LOG_H
#define TG_LOG_H

#include "tg_core.h"
#include <stdarg.h>

enum tg_log_level {
    TG_LOG_DEBUG = 0,
    TG_LOG_INFO,
    TG_LOG_NOTICE,
    TG_LOG_WARN,
    TG_LOG_ERR,
    TG_LOG_CRIT,
};

/* Opens the error log ("stderr", "stdout", "off" or a file path, appended).
 * Returns TG_OK or TG_ERROR with errno set. May be called again (reload). */
int tg_log_open(const char *path, int level);
/* Parses "debug|info|notice|warn|error|crit"; -1 if unknown. */
int tg_log_level_parse(const char *name);
const char *tg_log_level_name(int level);
/* Sets the process role shown on each line ("master", "worker 1"). */
void tg_log_set_role(const char *role);
int tg_log_enabled(int level);

/* Writes one line: time, level, role/pid, request id (may be NULL), text. */
void tg_log_write(int level, const char *request_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void tg_log_vwrite(int level, const char *request_id, const char *fmt, va_list ap);

#define tg_log_crit(...)   do { if (tg_log_enabled(TG_LOG_CRIT))   tg_log_write(TG_LOG_CRIT, NULL, __VA_ARGS__); } while (0)
#define tg_log_error(...)  do { if (tg_log_enabled(TG_LOG_ERR))    tg_log_write(TG_LOG_ERR, NULL, __VA_ARGS__); } while (0)
#define tg_log_warn(...)   do { if (tg_log_enabled(TG_LOG_WARN))   tg_log_write(TG_LOG_WARN, NULL, __VA_ARGS__); } while (0)
#define tg_log_notice(...) do { if (tg_log_enabled(TG_LOG_NOTICE)) tg_log_write(TG_LOG_NOTICE, NULL, __VA_ARGS__); } while (0)
#define tg_log_info(...)   do { if (tg_log_enabled(TG_LOG_INFO))   tg_log_write(TG_LOG_INFO, NULL, __VA_ARGS__); } while (0)
#ifdef TG_DEBUG
#define tg_log_debug(...)  do { if (tg_log_enabled(TG_LOG_DEBUG))  tg_log_write(TG_LOG_DEBUG, NULL, __VA_ARGS__); } while (0)
#else
#define tg_log_debug(...)  do { } while (0)
#endif

/* Access log: opened per config; lines are appended to a buffer and flushed
 * when it fills or when tg_access_log_flush() is called (once per loop
 * iteration and at exit). */
int tg_access_log_open(const char *path);   /* "off" disables; NULL = off */
void tg_access_log_close(void);
int tg_access_log_enabled(void);
/* Appends one already-formatted line (without newline). */
void tg_access_log_append(const char *line, size_t len);
void tg_access_log_flush(void);

/* Appends s as the inside of a JSON string (quotes not included) to
 * out[*pos..cap), escaping as needed; truncates safely at cap. */
void tg_json_escape(char *out, size_t cap, size_t *pos, const char *s, size_t len);

#endif
