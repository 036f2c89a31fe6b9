/*
 * tg_buf.c: buffer free list and the socket write queue (see tg_buf.h).
 */
#include "tg_buf.h"
#include "tg_pool.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

/* writev accepts at most IOV_MAX segments; callers pass a handful. */
#define TG_WQUEUE_MAX_IOV 16

void tg_buf_list_init(tg_buf_list_t *l, size_t size, int max_free) {
    memset(l, 0, sizeof(*l));
    l->size = size;
    l->max_free = max_free;
}

void tg_buf_list_free(tg_buf_list_t *l) {
    while (l->free) {
        tg_buf_t *b = l->free;
        l->free = b->next;
        free(b);
    }
    l->nfree = 0;
}

tg_buf_t *tg_buf_get(tg_buf_list_t *l) {
    tg_buf_t *b = l->free;
    if (b) {
        l->free = b->next;
        l->nfree--;
    } else {
        b = tg_xmalloc(sizeof(*b) + l->size);
        b->size = l->size;
    }
    b->next = NULL;
    b->start = b->end = 0;
    l->outstanding++;
    return b;
}

void tg_buf_put(tg_buf_list_t *l, tg_buf_t *b) {
    if (b == NULL) return;
    l->outstanding--;
    if (l->nfree >= l->max_free) {
        free(b);
        return;
    }
    b->next = l->free;
    l->free = b;
    l->nfree++;
}

void tg_wqueue_reset(tg_wqueue_t *q) {
    free(q->data);
    q->data = NULL;
    q->len = q->off = q->cap = 0;
}

void tg_wqueue_append(tg_wqueue_t *q, const char *p, size_t n) {
    if (n == 0) return;
    if (q->off > 0 && q->off == q->len) q->off = q->len = 0;
    if (q->len + n > q->cap) {
        /* Drop the written prefix before growing. */
        if (q->off) {
            memmove(q->data, q->data + q->off, q->len - q->off);
            q->len -= q->off;
            q->off = 0;
        }
        if (q->len + n > q->cap) {
            size_t cap = q->cap ? q->cap : 4096;
            while (cap < q->len + n) cap *= 2;
            q->data = tg_xrealloc(q->data, cap);
            q->cap = cap;
        }
    }
    memcpy(q->data + q->len, p, n);
    q->len += n;
}

int tg_wqueue_flush(tg_wqueue_t *q, int fd) {
    while (q->off < q->len) {
        ssize_t w = write(fd, q->data + q->off, q->len - q->off);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return TG_AGAIN;
            return TG_ERROR;
        }
        q->off += (size_t)w;
    }
    tg_wqueue_reset(q);
    return TG_OK;
}

int tg_wqueue_writev(tg_wqueue_t *q, int fd, const struct iovec *iov, int iovcnt) {
    if (!tg_wqueue_empty(q)) {
        for (int i = 0; i < iovcnt; i++) tg_wqueue_append(q, iov[i].iov_base, iov[i].iov_len);
        return tg_wqueue_flush(q, fd);
    }
    struct iovec v[TG_WQUEUE_MAX_IOV];
    if (iovcnt > TG_WQUEUE_MAX_IOV) iovcnt = TG_WQUEUE_MAX_IOV;
    memcpy(v, iov, sizeof(struct iovec) * (size_t)iovcnt);
    int i = 0;
    while (i < iovcnt) {
        if (v[i].iov_len == 0) { i++; continue; }
        ssize_t w = writev(fd, v + i, iovcnt - i);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return TG_ERROR;
        }
        size_t n = (size_t)w;
        while (i < iovcnt && n >= v[i].iov_len) { n -= v[i].iov_len; i++; }
        if (i < iovcnt) {
            v[i].iov_base = (char *)v[i].iov_base + n;
            v[i].iov_len -= n;
        }
    }
    if (i >= iovcnt) return TG_OK;
    for (; i < iovcnt; i++) tg_wqueue_append(q, v[i].iov_base, v[i].iov_len);
    return TG_AGAIN;
}
