/*
 * tg_stats.c: the shared counters region (see tg_stats.h).
 */
#include "tg_stats.h"

#include <sys/mman.h>

tg_stats_t *tg_stats_create(void) {
    void *p = mmap(NULL, sizeof(tg_stats_t), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    memset(p, 0, sizeof(tg_stats_t));
    return p;
}
