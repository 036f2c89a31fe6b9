/*
 * tg_buf.h: fixed-size I/O buffers from a per-worker free list. A client
 * connection holds a read buffer only while it has bytes of a request in
 * flight; an idle keep-alive connection gives it back, so it costs a few
 * hundred bytes instead of a buffer (the 10,000-idle-connections case).
 *
 * Data lives in data[start..end); free space is data[end..size).
 */
#ifndef TG_BUF_H
#define TG_BUF_H

#include "tg_core.h"

typedef struct tg_buf_s {
    struct tg_buf_s *next;     /* free-list link */
    size_t           size;
    size_t           start;
    size_t           end;
    char             data[];
} tg_buf_t;

typedef struct {
    tg_buf_t *free;
    int       nfree;
    int       max_free;        /* buffers kept for reuse; the rest are freed */
    size_t    size;            /* size of every buffer of this list */
    long      outstanding;     /* buffers handed out and not returned */
} tg_buf_list_t;

void tg_buf_list_init(tg_buf_list_t *l, size_t size, int max_free);
void tg_buf_list_free(tg_buf_list_t *l);
/* An empty buffer (start = end = 0). Never NULL (see tg_pool.h on OOM). */
tg_buf_t *tg_buf_get(tg_buf_list_t *l);
/* Returns b to the list; NULL is ignored. */
void tg_buf_put(tg_buf_list_t *l, tg_buf_t *b);

static inline size_t tg_buf_len(const tg_buf_t *b) { return b->end - b->start; }
static inline size_t tg_buf_room(const tg_buf_t *b) { return b->size - b->end; }
/* Moves the data to the front so that the room is contiguous. */
static inline void tg_buf_compact(tg_buf_t *b) {
    if (b->start == 0) return;
    size_t n = b->end - b->start;
    if (n) memmove(b->data, b->data + b->start, n);
    b->start = 0;
    b->end = n;
}

/*
 * tg_wqueue_t: bytes accepted for a socket that the kernel did not take yet.
 * Writes go straight to the socket; only the part that does not fit is
 * copied here (backpressure is the only time data is copied on output).
 * While it is non-empty, the producer feeding this socket stops reading.
 */
typedef struct {
    char   *data;      /* malloc'ed, grown as needed, freed when drained */
    size_t  len;
    size_t  off;       /* bytes of data already written */
    size_t  cap;
} tg_wqueue_t;

static inline int tg_wqueue_empty(const tg_wqueue_t *q) { return q->off >= q->len; }
void tg_wqueue_reset(tg_wqueue_t *q);

struct iovec;
/* Writes iov to fd, queueing what the socket did not take. Returns TG_OK
 * when everything was written, TG_AGAIN when some is queued (wait for
 * writability and call tg_wqueue_flush), TG_ERROR on a socket error. If the
 * queue is not empty, everything is appended to it first (order kept). */
int tg_wqueue_writev(tg_wqueue_t *q, int fd, const struct iovec *iov, int iovcnt);
/* Appends n bytes to the queue (copied). */
void tg_wqueue_append(tg_wqueue_t *q, const char *p, size_t n);
/* Writes queued bytes. TG_OK when the queue is empty, TG_AGAIN, TG_ERROR. */
int tg_wqueue_flush(tg_wqueue_t *q, int fd);

#endif
