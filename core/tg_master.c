/*
 * tg_master.c: process control (see tg_master.h).
 *
 * The master waits for signals synchronously with sigtimedwait() on a
 * blocked set instead of running an event loop: it has nothing else to do,
 * there are no handler races, and the one-second timeout drives the few
 * deadlines it keeps (drain limits, restart back-off).
 *
 * Listening sockets: one socket per address, shared by all workers
 * (nginx's model). The master keeps every one open for its whole life, so a
 * reload never closes a socket with connections queued on it; a reload that
 * drops an address closes that socket only.
 */
#include "tg_master.h"
#include "tg_log.h"
#include "tg_lua.h"
#include "tg_router.h"
#include "tg_shdict.h"
#include "tg_stats.h"
#include "tg_worker.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Most children alive at once: two generations during a reload, plus one
 * that is still draining when another reload comes. */
#define TG_MASTER_MAX_CHILDREN (TG_STATS_MAX_WORKERS * 3)
/* A worker that dies sooner than this after its start is restarted only
 * after this much time, so a crash loop does not spin the CPU. */
#define TG_RESPAWN_BACKOFF_S 1.0
/* Extra time past shutdown_timeout_ms before the master SIGKILLs a worker
 * that did not exit by itself. */
#define TG_KILL_GRACE_S 2.0

typedef struct {
    char *text;     /* "127.0.0.1:8080" */
    int   fd;
} tg_master_listen_t;

typedef struct {
    pid_t    pid;
    int      slot;          /* worker slot of its generation */
    int      stats_slot;    /* entry in tg_stats_t.workers */
    unsigned generation;
    double   started;
    double   kill_at;       /* 0, or when to SIGKILL it (draining) */
} tg_child_t;

typedef struct {
    const char         *conf_path;
    tg_conf_t          *conf;
    unsigned            generation;
    tg_stats_t         *stats;
    tg_master_listen_t *listens;   /* current, matching conf->listens */
    int                 nlistens;
    tg_master_listen_t  admin;     /* fd -1 when none */
    tg_child_t          children[TG_MASTER_MAX_CHILDREN];
    double              respawn_at[TG_STATS_MAX_WORKERS];  /* pending restarts */
    int                 stopping;  /* 1 graceful, 2 fast */
} tg_master_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

tg_conf_t *tg_master_load_conf(const char *path, tg_conf_errors_t *errs) {
    tg_conf_t *conf = tg_conf_load(path, errs);
    if (conf == NULL) return NULL;
    char err[512];
    conf->router = tg_router_build(conf->routes, conf->nroutes, err, sizeof(err));
    if (conf->router == NULL) {
        tg_conf_errors_add(errs, "%s", err);
        tg_conf_unref(conf);
        return NULL;
    }
    /* Plugins load and their configs validate in a throwaway VM, so a bad
     * plugin config fails -t and never replaces a good config on reload. */
    if (tg_lua_conf_check(conf, errs) != TG_OK) {
        tg_conf_unref(conf);
        return NULL;
    }
    return conf;
}

static int open_listener(const tg_conf_addr_t *a, int backlog) {
    int fd = socket(a->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (a->addr.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->addr, a->addrlen) < 0 || listen(fd, backlog) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Finds an open socket for text among the master's current ones. */
static int find_fd(tg_master_t *m, const char *text) {
    for (int i = 0; i < m->nlistens; i++)
        if (m->listens[i].text && strcmp(m->listens[i].text, text) == 0) return m->listens[i].fd;
    if (m->admin.fd >= 0 && strcmp(m->admin.text, text) == 0) return m->admin.fd;
    return -1;
}

/* Opens (or reuses) the sockets conf needs. On failure logs which address
 * and why, closes what it opened, returns TG_ERROR. */
static int bind_all(tg_master_t *m, tg_conf_t *conf, tg_master_listen_t **out, tg_master_listen_t *admin) {
    tg_master_listen_t *ls = tg_xcalloc((size_t)conf->nlistens, sizeof(*ls));
    int n = conf->nlistens + (conf->admin ? 1 : 0);
    for (int i = 0; i < n; i++) {
        const tg_conf_listen_t *cl = i < conf->nlistens ? &conf->listens[i] : conf->admin;
        tg_master_listen_t *dst = i < conf->nlistens ? &ls[i] : admin;
        int fd = find_fd(m, cl->addr.text);
        int opened = 0;
        if (fd < 0) {
            fd = open_listener(&cl->addr, cl->backlog);
            opened = 1;
        }
        if (fd < 0) {
            tg_log_error("cannot listen on \"%s\": %s", cl->addr.text, strerror(errno));
            for (int k = 0; k < i; k++) {
                tg_master_listen_t *d = k < conf->nlistens ? &ls[k] : admin;
                if (find_fd(m, d->text) != d->fd) close(d->fd);
                free(d->text);
            }
            free(ls);
            return TG_ERROR;
        }
        (void)opened;
        dst->text = tg_xstrdup(cl->addr.text);
        dst->fd = fd;
    }
    if (!conf->admin) {
        admin->fd = -1;
        admin->text = NULL;
    }
    *out = ls;
    return TG_OK;
}

static int stats_slot_get(tg_master_t *m) {
    for (int i = 0; i < TG_STATS_MAX_WORKERS; i++)
        if (m->stats->workers[i].pid == 0) {
            memset((void *)&m->stats->workers[i], 0, sizeof(m->stats->workers[i]));
            m->stats->workers[i].pid = -1;   /* reserved until the child sets its pid */
            return i;
        }
    return -1;
}

static tg_child_t *child_slot(tg_master_t *m) {
    for (int i = 0; i < TG_MASTER_MAX_CHILDREN; i++)
        if (m->children[i].pid == 0) return &m->children[i];
    return NULL;
}

static void spawn(tg_master_t *m, int slot) {
    tg_child_t *ch = child_slot(m);
    int st = stats_slot_get(m);
    if (ch == NULL || st < 0) {
        tg_log_error("cannot start worker %d: too many processes", slot);
        return;
    }
    int fds[TG_STATS_MAX_WORKERS];
    for (int i = 0; i < m->nlistens && i < TG_STATS_MAX_WORKERS; i++) fds[i] = m->listens[i].fd;
    pid_t pid = fork();
    if (pid < 0) {
        tg_log_error("fork() failed: %s", strerror(errno));
        m->stats->workers[st].pid = 0;
        m->respawn_at[slot] = now_s() + TG_RESPAWN_BACKOFF_S;
        return;
    }
    if (pid == 0) {
        /* A worker whose master died (kill -9) drains and exits instead of
         * serving on unsupervised. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() == 1) _exit(0);
        int rc = tg_worker_run(m->conf, st, m->generation, m->stats, fds, m->admin.fd);
        _exit(rc);
    }
    ch->pid = pid;
    ch->slot = slot;
    ch->stats_slot = st;
    ch->generation = m->generation;
    ch->started = now_s();
    ch->kill_at = 0;
    m->stats->workers[st].pid = pid;
    m->stats->workers[st].generation = m->generation;
}

static void spawn_generation(tg_master_t *m) {
    m->stats->generation = m->generation;
    m->stats->config_version = m->conf->version;
    for (int i = 0; i < m->conf->worker_processes; i++) spawn(m, i);
}

static int children_alive(tg_master_t *m) {
    int n = 0;
    for (int i = 0; i < TG_MASTER_MAX_CHILDREN; i++) if (m->children[i].pid > 0) n++;
    return n;
}

static void signal_children(tg_master_t *m, int sig, unsigned generation_below, double kill_at) {
    for (int i = 0; i < TG_MASTER_MAX_CHILDREN; i++) {
        tg_child_t *ch = &m->children[i];
        if (ch->pid > 0 && ch->generation < generation_below) {
            kill(ch->pid, sig);
            if (kill_at > 0 && ch->kill_at == 0) ch->kill_at = kill_at;
        }
    }
}

static void reap(tg_master_t *m) {
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) return;
        for (int i = 0; i < TG_MASTER_MAX_CHILDREN; i++) {
            tg_child_t *ch = &m->children[i];
            if (ch->pid != pid) continue;
            m->stats->workers[ch->stats_slot].pid = 0;
            int current = ch->generation == m->generation && !m->stopping;
            if (current) {
                if (WIFSIGNALED(status))
                    tg_log_error("worker %d (pid %d) died on signal %d; restarting", ch->slot, (int)pid, WTERMSIG(status));
                else
                    tg_log_error("worker %d (pid %d) exited with status %d; restarting", ch->slot, (int)pid, WEXITSTATUS(status));
                double at = now_s();
                if (at - ch->started < TG_RESPAWN_BACKOFF_S) at += TG_RESPAWN_BACKOFF_S;
                m->respawn_at[ch->slot] = at;
            }
            ch->pid = 0;
            break;
        }
    }
}

static void reload(tg_master_t *m) {
    tg_log_notice("reloading \"%s\"", m->conf_path);
    tg_conf_errors_t errs = { 0 };
    tg_conf_t *conf = tg_master_load_conf(m->conf_path, &errs);
    if (conf == NULL) {
        for (int i = 0; i < errs.n; i++)
            tg_log_error("reload failed, keeping the running config: %s", errs.msg[i]);
        if (errs.dropped) tg_log_error("... and %d more error(s)", errs.dropped);
        tg_conf_errors_free(&errs);
        m->stats->reloads_failed++;
        return;
    }
    if (tg_shdict_zones_sync(conf, &errs) != TG_OK) {
        for (int i = 0; i < errs.n; i++)
            tg_log_error("reload failed, keeping the running config: %s", errs.msg[i]);
        tg_conf_errors_free(&errs);
        tg_conf_unref(conf);
        m->stats->reloads_failed++;
        return;
    }
    tg_master_listen_t *ls = NULL, admin = { NULL, -1 };
    if (bind_all(m, conf, &ls, &admin) != TG_OK) {
        tg_log_error("reload failed, keeping the running config");
        tg_conf_unref(conf);
        m->stats->reloads_failed++;
        return;
    }
    /* Close the sockets the new config dropped; the new generation must not
     * inherit them. */
    for (int i = 0; i < m->nlistens; i++) {
        int kept = 0;
        for (int k = 0; k < conf->nlistens; k++) if (ls[k].fd == m->listens[i].fd) kept = 1;
        if (admin.fd == m->listens[i].fd) kept = 1;
        if (!kept) close(m->listens[i].fd);
        free(m->listens[i].text);
    }
    if (m->admin.fd >= 0) {
        int kept = admin.fd == m->admin.fd;
        for (int k = 0; k < conf->nlistens; k++) if (ls[k].fd == m->admin.fd) kept = 1;
        if (!kept) close(m->admin.fd);
        free(m->admin.text);
    }
    free(m->listens);
    m->listens = ls;
    m->nlistens = conf->nlistens;
    m->admin = admin;

    if (tg_log_open(conf->error_log_path, conf->error_log_level) != TG_OK)
        tg_log_error("cannot open error log \"%s\": %s", conf->error_log_path, strerror(errno));

    tg_conf_t *old = m->conf;
    m->conf = conf;
    unsigned old_generation = m->generation;
    m->generation++;
    for (int i = 0; i < TG_STATS_MAX_WORKERS; i++) m->respawn_at[i] = 0;
    m->stats->reloads_ok++;
    spawn_generation(m);
    /* The new generation accepts from the same sockets; the old one stops
     * accepting, finishes what it has and exits. */
    signal_children(m, SIGTERM, old_generation + 1,
                    now_s() + old->shutdown_timeout_ms / 1000.0 + TG_KILL_GRACE_S);
    tg_conf_unref(old);
    tg_log_notice("reloaded: generation %u, config version %u, %d worker(s)",
                  m->generation, conf->version, conf->worker_processes);
}

int tg_master_run(const char *conf_path, tg_conf_t *conf) {
    tg_master_t *m = tg_xcalloc(1, sizeof(*m));
    m->conf_path = conf_path;
    m->conf = conf;
    m->generation = 1;
    m->admin.fd = -1;
    tg_log_set_role("master");
    if (tg_log_open(conf->error_log_path, conf->error_log_level) != TG_OK) {
        fprintf(stderr, "tollgate: cannot open error log \"%s\": %s\n", conf->error_log_path, strerror(errno));
        return 1;
    }
    m->stats = tg_stats_create();
    if (m->stats == NULL) {
        tg_log_error("cannot map the shared stats region: %s", strerror(errno));
        return 1;
    }
    m->stats->started_at = (double)time(NULL);
    tg_conf_errors_t errs = { 0 };
    if (tg_shdict_zones_sync(conf, &errs) != TG_OK) {
        for (int i = 0; i < errs.n; i++) tg_log_error("%s", errs.msg[i]);
        tg_conf_errors_free(&errs);
        return 1;
    }
    if (bind_all(m, conf, &m->listens, &m->admin) != TG_OK) return 1;
    m->nlistens = conf->nlistens;

    sigset_t set;
    sigemptyset(&set);
    int sigs[] = { SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGCHLD };
    for (size_t i = 0; i < tg_nelems(sigs); i++) sigaddset(&set, sigs[i]);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    for (int i = 0; i < conf->nlistens; i++)
        tg_log_notice("listening on %s%s", m->listens[i].text, conf->listens[i].tls ? " (TLS)" : "");
    if (conf->admin) tg_log_notice("admin API on %s", m->admin.text);
    spawn_generation(m);

    double stop_deadline = 0;
    for (;;) {
        struct timespec ts = { 1, 0 };
        int sig = sigtimedwait(&set, NULL, &ts);
        double now = now_s();
        switch (sig) {
        case SIGCHLD:
            reap(m);
            break;
        case SIGHUP:
            if (!m->stopping) reload(m);
            break;
        case SIGTERM:
            if (!m->stopping) {
                tg_log_notice("stopping gracefully");
                m->stopping = 1;
                /* New clients are refused at once instead of queueing on a
                 * socket nobody will accept from again. */
                for (int i = 0; i < m->nlistens; i++) close(m->listens[i].fd);
                if (m->admin.fd >= 0) close(m->admin.fd);
                m->nlistens = 0;
                m->admin.fd = -1;
                stop_deadline = now + m->conf->shutdown_timeout_ms / 1000.0 + TG_KILL_GRACE_S;
                signal_children(m, SIGTERM, ~0u, 0);
            }
            break;
        case SIGINT:
        case SIGQUIT:
            tg_log_notice("stopping now");
            m->stopping = 2;
            stop_deadline = now + TG_KILL_GRACE_S;
            signal_children(m, SIGINT, ~0u, 0);
            break;
        default:
            break;
        }
        reap(m);
        if (m->stopping) {
            if (children_alive(m) == 0) break;
            if (now >= stop_deadline) signal_children(m, SIGKILL, ~0u, 0);
            continue;
        }
        for (int i = 0; i < TG_MASTER_MAX_CHILDREN; i++) {
            tg_child_t *ch = &m->children[i];
            if (ch->pid > 0 && ch->kill_at > 0 && now >= ch->kill_at) {
                tg_log_warn("worker pid %d did not finish draining in time; killing it", (int)ch->pid);
                kill(ch->pid, SIGKILL);
                ch->kill_at = 0;
            }
        }
        for (int s = 0; s < m->conf->worker_processes; s++) {
            if (m->respawn_at[s] > 0 && now >= m->respawn_at[s]) {
                m->respawn_at[s] = 0;
                spawn(m, s);
            }
        }
    }
    tg_log_notice("stopped");
    return 0;
}
