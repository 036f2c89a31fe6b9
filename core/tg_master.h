/*
 * tg_master.h: the master process. It owns the config snapshot, every
 * listening socket and the shared stats region, forks the workers and
 * never serves traffic.
 *
 * Signals: SIGHUP reloads (the new config is loaded and checked completely
 * first; on any error every error is logged and the running config keeps
 * serving); SIGTERM stops gracefully (workers drain); SIGINT and SIGQUIT
 * stop fast. A worker that dies unexpectedly is restarted with the same
 * generation's config.
 */
#ifndef TG_MASTER_H
#define TG_MASTER_H

#include "tg_conf.h"

/* Runs the master on an already loaded, valid config (ownership passes to
 * the master) until it is stopped. Returns the process exit status. */
int tg_master_run(const char *conf_path, tg_conf_t *conf);

/* Loads and fully checks a config, router included. NULL + errs on error. */
tg_conf_t *tg_master_load_conf(const char *path, tg_conf_errors_t *errs);

#endif
