/*
 * tg_lua.h: the bridge between the C core and the Lua runtime (one LuaJIT VM
 * per worker, one coroutine per request; OpenResty's model, see DESIGN.md
 * "Lua bridge").
 *
 * The per-request coroutine runs lua/tollgate/runtime.lua's request_main,
 * which runs one phase per resume and yields a code back to C:
 *   TG_LUA_PHASE_DONE  the phase finished (body_filter: + the new chunk)
 *   TG_LUA_WAIT        a PDK call started I/O; C resumes the coroutine when
 *                      the operation completes (tg_lua_wake)
 *   TG_LUA_EXIT        tg.response.exit() ended the request (r->exit_*)
 *   TG_LUA_ERROR       a plugin raised; the runtime logged plugin, phase,
 *                      message and traceback; the core answers 500
 * The coroutine survives an exit or an error, so the log phase still runs
 * in it with the same ctx.
 *
 * PDK functions are C functions exported from the binary (ENABLE_EXPORTS)
 * and called through LuaJIT FFI; their names start with tg_ffi_ and they
 * use only plain C types. They are declared in lua/tollgate/ffi.lua.
 */
#ifndef TG_LUA_H
#define TG_LUA_H

#include "tg_conf.h"
#include "tg_request.h"

typedef struct tg_lua_s tg_lua_t;
typedef struct tg_lua_wait_s tg_lua_wait_t;

/* Codes yielded by request coroutines (mirrored in runtime.lua). */
#define TG_LUA_PHASE_DONE 0
#define TG_LUA_WAIT       1
#define TG_LUA_EXIT       2
#define TG_LUA_ERROR      3

/* Phase bits of tg_lua_route_phases(). */
#define TG_LUA_BIT(phase) (1u << (phase))

/* Checks every plugin config of conf in a throwaway VM (master, -t and
 * reload): plugins load, schemas are valid, configs validate. Adds each
 * problem to errs with its YAML path; TG_OK or TG_ERROR. */
int tg_lua_conf_check(tg_conf_t *conf, tg_conf_errors_t *errs);

/* Creates the worker's VM: loads the runtime and the plugins, builds each
 * route's per-phase plugin lists, runs init_worker. NULL on error (logged). */
tg_lua_t *tg_lua_new(tg_conf_t *conf, tg_worker_t *w);
void tg_lua_free(tg_lua_t *lua);

/* Phases in which a route has at least one plugin (TG_LUA_BIT(phase)).
 * A route with no bit for a phase never enters Lua for it. */
unsigned tg_lua_route_phases(const tg_lua_t *lua, int route_index);

/* Runs REWRITE, ACCESS or LOG for r. Returns TG_OK (phase done), TG_AGAIN
 * (waiting for I/O: the core is called back through
 * tg_request_lua_resumed()), TG_DONE (exit: r->exit_status etc. are set) or
 * TG_ERROR (plugin error, logged). */
int tg_lua_run_phase(tg_request_t *r, tg_phase_e phase);

/* Runs HEADER_FILTER (synchronous: no yielding there). TG_OK or TG_ERROR. */
int tg_lua_header_filter(tg_request_t *r);

/* Runs BODY_FILTER on one chunk (synchronous). On TG_OK out and outlen are is the
 * chunk to send, valid until the next call into Lua for r. */
int tg_lua_body_filter(tg_request_t *r, const char *in, size_t len, int eof,
                       const char **out, size_t *outlen);

/* Admin API paths served by plugins (a plugin's `admin` table, e.g.
 * proxy-cache's purge). Runs synchronously in the worker's VM. Returns the
 * status with *body / *len (in r's pool), or 0 when no plugin serves the
 * path. */
int tg_lua_admin(tg_request_t *r, const char **body, size_t *len);

/* Releases r's coroutine and cancels a pending wait. */
void tg_lua_request_free(tg_request_t *r);

/* Async operations. Called inside an FFI function invoked by a running
 * coroutine: returns a handle for that coroutine; the Lua side yields
 * TG_LUA_WAIT right after. The handle is owned by the caller until it calls
 * tg_lua_wake(), which resumes the coroutine (or only frees the handle if
 * the request went away meanwhile). NULL when there is no running
 * coroutine that may yield (header_filter, body_filter, init). */
tg_lua_wait_t *tg_lua_wait_begin(void);
void tg_lua_wake(tg_lua_wait_t *wt);
/* 1 when the waiting coroutine's owner is gone (the caller may stop early). */
int tg_lua_wait_cancelled(const tg_lua_wait_t *wt);

/* The worker running this process's Lua VM (FFI functions without a
 * request use it: tg.now(), timers). */
tg_worker_t *tg_lua_worker(void);

#endif
