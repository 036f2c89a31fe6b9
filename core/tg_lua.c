/*
 * tg_lua.c: the Lua VM of a worker, request coroutines, phases and the
 * wait/wake machinery for non-blocking I/O (see tg_lua.h).
 *
 * How a wait works (lua-resty-core's pattern): a PDK function calls an FFI
 * function that starts an operation and registers the running coroutine
 * with tg_lua_wait_begin(); it returns "pending" and the Lua side yields
 * TG_LUA_WAIT. When the loop completes the operation, the owner calls
 * tg_lua_wake(), which resumes the coroutine; the Lua side then fetches the
 * result through FFI. FFI calls never yield and never finish a request
 * themselves: anything that could end the request (reading the body can
 * fail with 413) is started here, after the coroutine has yielded.
 *
 * Process-wide state: a worker has exactly one VM; the FFI functions find
 * it, the running coroutine and its request through the statics below
 * (there is no other way for an FFI call to know its caller).
 */
#include "tg_lua.h"
#include "tg_conn.h"
#include "tg_log.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef TG_PREFIX
#define TG_PREFIX "."
#endif

#define TG_LUA_IDLE_COROUTINES 64

struct tg_lua_s {
    lua_State   *L;
    tg_worker_t *worker;
    unsigned    *phases;       /* per route */
    int          nroutes;
    int          ref_runtime;  /* the runtime module table */
    int          ref_main;     /* runtime.request_main */
    int          ref_timer;    /* runtime.run_timer */
    int          ref_failed;   /* runtime.request_failed */
    /* Request coroutines that finished a request between phases, kept for
     * the next requests: a new thread, its registry ref and its first
     * resume of request_main cost more than the plugins of a short chain. */
    lua_State   *idle_co[TG_LUA_IDLE_COROUTINES];
    int          idle_ref[TG_LUA_IDLE_COROUTINES];
    int          nidle;
};

struct tg_lua_wait_s {
    tg_request_t *r;           /* NULL for timer coroutines */
    lua_State    *co;
    struct tg_lua_timer_s *timer;
    int           cancelled;
};

typedef struct tg_lua_timer_s {
    ev_timer   t;
    int        id;             /* runtime.timers[id] holds the function */
    lua_State *co;
    int        co_ref;
} tg_lua_timer_t;

static tg_lua_t     *g_lua;
static lua_State    *g_co;          /* coroutine being resumed, if any */
static tg_request_t *g_r;           /* its request */
static tg_lua_timer_t *g_timer;     /* its timer, for timer coroutines */
static int           g_may_yield;

tg_worker_t *tg_lua_worker(void) { return g_lua ? g_lua->worker : NULL; }

/* ---- config tree -> Lua ---- */

static void push_yaml(lua_State *L, const tg_yaml_node_t *n, int null_idx) {
    if (n == NULL) {
        lua_pushnil(L);
        return;
    }
    switch (n->type) {
    case TG_YAML_SCALAR: {
        int b;
        double d;
        if (!n->plain) lua_pushlstring(L, n->scalar, n->len);
        else if (tg_yaml_is_null(n)) lua_pushvalue(L, null_idx);
        else if (tg_yaml_as_bool(n, &b)) lua_pushboolean(L, b);
        else if (tg_yaml_as_number(n, &d)) lua_pushnumber(L, d);
        else lua_pushlstring(L, n->scalar, n->len);
        return;
    }
    case TG_YAML_SEQ:
        lua_createtable(L, n->n, 0);
        for (int i = 0; i < n->n; i++) {
            push_yaml(L, n->items[i], null_idx);
            lua_rawseti(L, -2, i + 1);
        }
        return;
    case TG_YAML_MAP:
        lua_createtable(L, 0, n->n);
        for (int i = 0; i < n->n; i++) {
            lua_pushlstring(L, n->keys[i]->scalar, n->keys[i]->len);
            push_yaml(L, n->items[i], null_idx);
            lua_rawset(L, -3);
        }
        return;
    }
    lua_pushnil(L);
}

/* ---- VM ---- */

static lua_State *vm_open(const tg_conf_t *conf, tg_conf_errors_t *errs) {
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        tg_conf_errors_add(errs, "lua: cannot create a VM (out of memory)");
        return NULL;
    }
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    const char *old = lua_tostring(L, -1);
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s", TG_PREFIX, TG_PREFIX, old ? old : "");
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    lua_getglobal(L, "require");
    lua_pushstring(L, "tollgate.runtime");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        tg_conf_errors_add(errs, "lua: cannot load the runtime: %s", lua_tostring(L, -1));
        lua_close(L);
        return NULL;
    }
    return L;   /* runtime module on the stack */
}

/* Calls runtime.init(conf_tree, prefix, check_only) with the runtime at the
 * top of L's stack. Collects errors; on success leaves phases in lua. */
static int vm_init(lua_State *L, tg_conf_t *conf, int check_only, tg_conf_errors_t *errs,
                   unsigned **phases_out) {
    int rt = lua_gettop(L);
    lua_getfield(L, rt, "init");
    lua_getfield(L, rt, "null");
    int null_idx = lua_gettop(L);
    push_yaml(L, conf->root, null_idx);
    lua_remove(L, null_idx);
    lua_pushstring(L, conf->prefix ? conf->prefix : ".");
    lua_pushstring(L, TG_PREFIX);
    lua_pushboolean(L, check_only);
    if (lua_pcall(L, 4, 2, 0) != 0) {
        tg_conf_errors_add(errs, "lua: runtime init failed: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return TG_ERROR;
    }
    /* returns: phases (table) | nil, errors (table) */
    if (lua_isnil(L, -2)) {
        int n = (int)lua_objlen(L, -1);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            tg_conf_errors_add(errs, "%s", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
        return TG_ERROR;
    }
    if (phases_out) {
        unsigned *ph = tg_xcalloc((size_t)(conf->nroutes ? conf->nroutes : 1), sizeof(unsigned));
        for (int i = 0; i < conf->nroutes; i++) {
            lua_rawgeti(L, -2, i + 1);
            ph[i] = (unsigned)lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
        *phases_out = ph;
    }
    lua_pop(L, 2);
    return TG_OK;
}

int tg_lua_conf_check(tg_conf_t *conf, tg_conf_errors_t *errs) {
    lua_State *L = vm_open(conf, errs);
    if (L == NULL) return TG_ERROR;
    int rc = vm_init(L, conf, 1, errs, NULL);
    lua_close(L);
    return rc;
}

tg_lua_t *tg_lua_new(tg_conf_t *conf, tg_worker_t *w) {
    tg_conf_errors_t errs = { 0 };
    lua_State *L = vm_open(conf, &errs);
    tg_lua_t *lua = NULL;
    if (L && vm_init(L, conf, 0, &errs, NULL) == TG_OK) {
        lua = tg_xcalloc(1, sizeof(*lua));
        lua->L = L;
        lua->worker = w;
        lua->nroutes = conf->nroutes;
        lua->phases = tg_xcalloc((size_t)(conf->nroutes ? conf->nroutes : 1), sizeof(unsigned));
        /* runtime.route_phases(i) */
        lua_getfield(L, -1, "route_phases");
        for (int i = 0; i < conf->nroutes; i++) {
            lua_pushvalue(L, -1);
            lua_pushinteger(L, i + 1);
            lua_call(L, 1, 1);
            lua->phases[i] = (unsigned)lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        lua_getfield(L, -1, "request_main");
        lua->ref_main = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_getfield(L, -1, "run_timer");
        lua->ref_timer = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_getfield(L, -1, "request_failed");
        lua->ref_failed = luaL_ref(L, LUA_REGISTRYINDEX);
        lua->ref_runtime = luaL_ref(L, LUA_REGISTRYINDEX);
        g_lua = lua;
        /* init_worker handlers may start timers: they need g_lua. */
        lua_rawgeti(L, LUA_REGISTRYINDEX, lua->ref_runtime);
        lua_getfield(L, -1, "init_worker");
        if (lua_pcall(L, 0, 0, 0) != 0) {
            tg_log_error("lua: init_worker failed: %s", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        return lua;
    }
    for (int i = 0; i < errs.n; i++) tg_log_error("%s", errs.msg[i]);
    tg_conf_errors_free(&errs);
    if (L) lua_close(L);
    return NULL;
}

void tg_lua_free(tg_lua_t *lua) {
    if (lua == NULL) return;
    if (g_lua == lua) g_lua = NULL;
    lua_close(lua->L);
    free(lua->phases);
    free(lua);
}

unsigned tg_lua_route_phases(const tg_lua_t *lua, int route_index) {
    if (lua == NULL || route_index < 0 || route_index >= lua->nroutes) return 0;
    return lua->phases[route_index];
}

/* ---- coroutines ---- */

static void drop_coroutine(tg_request_t *r) {
    if (r->lua_co_ref != -1 && g_lua) luaL_unref(g_lua->L, LUA_REGISTRYINDEX, r->lua_co_ref);
    r->lua_co_ref = -1;
    r->lua_co = NULL;
}

static void cancel_wait(tg_request_t *r) {
    if (r->lua_wait) {
        r->lua_wait->cancelled = 1;
        r->lua_wait->r = NULL;
        r->lua_wait = NULL;
    }
}

/* A plugin raised an error: plugins run unprotected in the request
 * coroutine (a pcall frame under them would keep LuaJIT from compiling a
 * phase's plugins as one trace), so the error ends the coroutine. The
 * runtime logs it with the plugin, the phase and the traceback, and hands
 * back the request's ctx, which later phases need (they run in another
 * coroutine). */
static void request_failed(tg_request_t *r, lua_State *co) {
    lua_State *L = g_lua->L;
    const char *msg = lua_tostring(co, -1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, g_lua->ref_failed);
    luaL_traceback(L, co, msg ? msg : "(error object is not a string)", 0);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        tg_log_write(TG_LOG_ERR, r->request_id, "lua: request failed: %s (and reporting it failed: %s)",
                     msg ? msg : "?", lua_tostring(L, -1));
        lua_pop(L, 1);
        return;
    }
    if (r->lua_ctx_ref == -1 && lua_istable(L, -1)) r->lua_ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else lua_pop(L, 1);
}

/* Resumes co. Returns the yielded code (TG_LUA_*), leaving the yielded
 * values on co's stack, or TG_LUA_ERROR when the coroutine died. */
static int resume(tg_request_t *r, tg_lua_timer_t *tm, lua_State *co, int nargs, int may_yield) {
    lua_State *saved_co = g_co;
    tg_request_t *saved_r = g_r;
    tg_lua_timer_t *saved_t = g_timer;
    int saved_y = g_may_yield;
    g_co = co;
    g_r = r;
    g_timer = tm;
    g_may_yield = may_yield;
    if (r) r->lua_running = 1;
    int st = lua_resume(co, nargs);
    if (r) r->lua_running = 0;
    g_co = saved_co;
    g_r = saved_r;
    g_timer = saved_t;
    g_may_yield = saved_y;
    if (st == LUA_YIELD) {
        int code = (int)lua_tointeger(co, 1);
        if (r) {
            r->lua_co_idle = code == TG_LUA_PHASE_DONE || code == TG_LUA_ERROR;
            /* A coroutine that waits may be abandoned and one that exits
             * is: the request's ctx (yielded with the code) must outlive
             * it, for the phases that run in a fresh coroutine. */
            if (!r->lua_co_idle && r->lua_ctx_ref == -1 && lua_istable(co, 2)) {
                lua_pushvalue(co, 2);
                lua_xmove(co, g_lua->L, 1);
                r->lua_ctx_ref = luaL_ref(g_lua->L, LUA_REGISTRYINDEX);
            }
        }
        return code;
    }
    if (st != 0 && r) {
        request_failed(r, co);
    } else if (st != 0) {
        const char *msg = lua_tostring(co, -1);
        tg_log_write(TG_LOG_ERR, NULL, "lua: coroutine failed: %s", msg ? msg : "?");
    }
    if (r) drop_coroutine(r);
    return st == 0 ? TG_LUA_PHASE_DONE : TG_LUA_ERROR;
}

static int code_to_rc(int code) {
    switch (code) {
    case TG_LUA_PHASE_DONE: return TG_OK;
    case TG_LUA_WAIT:       return TG_AGAIN;
    case TG_LUA_EXIT:       return TG_DONE;
    default:                return TG_ERROR;
    }
}

/* Things a coroutine asked for that must start outside Lua (see the file
 * comment). Returns 1 when the wait already completed and the coroutine
 * should be resumed again right away. */
static int start_deferred(tg_request_t *r) {
    if (r->body_read_wanted) {
        /* Not wanted while we read synchronously: the pump must not wake
         * (resume) the coroutine from inside this call. */
        r->body_read_wanted = 0;
        int rc = tg_request_read_body(r);
        if (rc == TG_OK) {
            cancel_wait(r);
            return 1;
        }
        /* TG_AGAIN: the pump wakes us when the body is complete;
         * TG_ERROR: the request is finalized. */
        if (rc == TG_AGAIN) r->body_read_wanted = 1;
    }
    return 0;
}

/* The coroutine for r's next phase: r's own, an idle one or a new one.
 * request_main(phase, a1, a2, r, route, ctx) starts with these arguments,
 * and an idle coroutine receives them from its yield between phases;
 * *fresh tells the caller to push a1, a2 and the request after the phase. */
static lua_State *request_coroutine(tg_request_t *r, int *fresh) {
    lua_State *co = r->lua_co;
    if (co != NULL && r->lua_wait) {
        /* Still waiting in an earlier phase (the request was cut short):
         * that phase is abandoned; this one runs in another coroutine. */
        cancel_wait(r);
        drop_coroutine(r);
        co = NULL;
    }
    if (co != NULL) {
        lua_settop(co, 0);
        *fresh = 0;
        return co;
    }
    *fresh = 1;
    if (g_lua->nidle > 0) {
        g_lua->nidle--;
        co = g_lua->idle_co[g_lua->nidle];
        r->lua_co_ref = g_lua->idle_ref[g_lua->nidle];
        r->lua_co = co;
        lua_settop(co, 0);
        return co;
    }
    lua_State *L = g_lua->L;
    co = lua_newthread(L);
    r->lua_co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    r->lua_co = co;
    lua_rawgeti(co, LUA_REGISTRYINDEX, g_lua->ref_main);
    return co;
}

/* After the phase and its a1, a2: which request, as a number (a light
 * userdata would stop LuaJIT's trace at the ffi.cast), its route, and its
 * ctx when an earlier coroutine of the request kept one. */
static int push_request(lua_State *co, tg_request_t *r) {
    lua_pushnumber(co, (lua_Number)(uintptr_t)r);
    lua_pushinteger(co, r->route ? r->route->index + 1 : 0);
    if (r->lua_ctx_ref != -1) lua_rawgeti(co, LUA_REGISTRYINDEX, r->lua_ctx_ref);
    else lua_pushnil(co);
    return 3;
}

/* Runs one phase in r's coroutine. Extra arguments are pushed by `push`. */
static int run(tg_request_t *r, tg_phase_e phase, int may_yield) {
    if (g_lua == NULL) return TG_OK;
    if (r->lua_running) return TG_ERROR;   /* never re-enter a running coroutine */
    int fresh;
    lua_State *co = request_coroutine(r, &fresh);
    int nargs = 1;
    lua_pushinteger(co, phase);
    if (fresh) {
        lua_pushnil(co);
        lua_pushnil(co);
        nargs += 2 + push_request(co, r);
    }
    int code = resume(r, NULL, co, nargs, may_yield);
    while (code == TG_LUA_WAIT && start_deferred(r)) {
        lua_settop(co, 0);
        code = resume(r, NULL, co, 0, may_yield);
    }
    return code;
}

/* tg.response.exit() yields TG_LUA_EXIT from inside the plugin: that
 * coroutine must never be resumed again; later phases get a fresh one. */
static int finish_code(tg_request_t *r, int code) {
    if (code == TG_LUA_EXIT) drop_coroutine(r);
    else if (r->lua_co) lua_settop((lua_State *)r->lua_co, 0);
    return code_to_rc(code);
}

int tg_lua_run_phase(tg_request_t *r, tg_phase_e phase) {
    r->hold++;
    int rc = finish_code(r, run(r, phase, 1));
    if (--r->hold == 0 && r->free_pending) {
        tg_request_release(r);
        return TG_DECLINED;   /* the request ended meanwhile: r is gone */
    }
    return rc;
}

int tg_lua_header_filter(tg_request_t *r) {
    int code = run(r, TG_PHASE_HEADER_FILTER, 0);
    if (r->lua_co) lua_settop((lua_State *)r->lua_co, 0);
    return code == TG_LUA_PHASE_DONE ? TG_OK : TG_ERROR;
}

int tg_lua_body_filter(tg_request_t *r, const char *in, size_t len, int eof,
                       const char **out, size_t *outlen) {
    if (g_lua == NULL || r->lua_running) return TG_ERROR;
    int fresh;
    lua_State *co = request_coroutine(r, &fresh);
    int nargs = 3;
    lua_pushinteger(co, TG_PHASE_BODY_FILTER);
    lua_pushlstring(co, in ? in : "", len);
    lua_pushboolean(co, eof);
    if (fresh) nargs += push_request(co, r);
    int code = resume(r, NULL, co, nargs, 0);
    if (code != TG_LUA_PHASE_DONE || r->lua_co == NULL) return TG_ERROR;
    /* The chunk stays on the coroutine's stack until the next call. */
    if (lua_type(co, 2) == LUA_TSTRING) {
        *out = lua_tolstring(co, 2, outlen);
    } else {
        *out = "";
        *outlen = 0;
    }
    return TG_OK;
}

void tg_lua_request_free(tg_request_t *r) {
    if (g_lua && r->lua_co && r->lua_co_idle && !r->lua_wait && !r->lua_running &&
        g_lua->nidle < TG_LUA_IDLE_COROUTINES) {
        lua_settop((lua_State *)r->lua_co, 0);
        g_lua->idle_co[g_lua->nidle] = r->lua_co;
        g_lua->idle_ref[g_lua->nidle] = r->lua_co_ref;
        g_lua->nidle++;
        r->lua_co = NULL;
        r->lua_co_ref = -1;
    }
    cancel_wait(r);
    drop_coroutine(r);
    if (r->lua_ctx_ref != -1 && g_lua) luaL_unref(g_lua->L, LUA_REGISTRYINDEX, r->lua_ctx_ref);
    r->lua_ctx_ref = -1;
}

/* ---- waits ---- */

tg_lua_wait_t *tg_lua_wait_begin(void) {
    if (g_co == NULL || !g_may_yield) return NULL;
    tg_lua_wait_t *wt = tg_xcalloc(1, sizeof(*wt));
    wt->co = g_co;
    wt->r = g_r;
    wt->timer = g_timer;
    if (g_r) g_r->lua_wait = wt;
    return wt;
}

int tg_lua_wait_cancelled(const tg_lua_wait_t *wt) { return wt->cancelled; }

static void timer_finish(tg_lua_timer_t *tm) {
    if (g_lua) luaL_unref(g_lua->L, LUA_REGISTRYINDEX, tm->co_ref);
    free(tm);
}

void tg_lua_wake(tg_lua_wait_t *wt) {
    if (wt->cancelled || g_lua == NULL) {
        free(wt);
        return;
    }
    tg_request_t *r = wt->r;
    lua_State *co = wt->co;
    tg_lua_timer_t *tm = wt->timer;
    free(wt);
    if (r == NULL) {
        lua_settop(co, 0);
        int code = resume(NULL, tm, co, 0, 1);
        if (code != TG_LUA_WAIT && tm) timer_finish(tm);
        return;
    }
    r->lua_wait = NULL;
    if (r->lua_running) return;   /* cannot happen: waits complete from the loop */
    lua_settop(co, 0);
    r->hold++;
    int code = resume(r, NULL, co, 0, 1);
    while (code == TG_LUA_WAIT && start_deferred(r)) {
        lua_settop(co, 0);
        code = resume(r, NULL, co, 0, 1);
    }
    int rc = finish_code(r, code);
    if (--r->hold == 0 && r->free_pending) {
        tg_request_release(r);   /* ended while we resumed it */
        return;
    }
    tg_request_lua_resumed(r, rc);
}

/* ---- timers (tg.timer.at / every, tg.sleep) ---- */

static void timer_fire_cb(struct ev_loop *loop, ev_timer *t, int revents) {
    tg_lua_timer_t *tm = (tg_lua_timer_t *)t;
    /* Undo the ev_unref of tg_ffi_timer_at: the one-shot timer has stopped. */
    ev_ref(loop);
    if (g_lua == NULL) {
        free(tm);
        return;
    }
    lua_State *L = g_lua->L;
    lua_State *co = lua_newthread(L);
    tm->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    tm->co = co;
    lua_rawgeti(co, LUA_REGISTRYINDEX, g_lua->ref_timer);
    lua_pushinteger(co, tm->id);
    int code = resume(NULL, tm, co, 1, 1);
    if (code != TG_LUA_WAIT) timer_finish(tm);
}

int tg_ffi_timer_at(double delay, int id) {
    if (g_lua == NULL || delay < 0) return -1;
    tg_lua_timer_t *tm = tg_xcalloc(1, sizeof(*tm));
    tm->id = id;
    tm->co_ref = LUA_NOREF;
    ev_timer_init(&tm->t, timer_fire_cb, delay, 0.);
    ev_timer_start(g_lua->worker->loop, &tm->t);
    /* Pending timers do not keep a draining worker alive. */
    ev_unref(g_lua->worker->loop);
    return 0;
}

typedef struct {
    ev_timer       t;
    tg_lua_wait_t *wt;
} sleep_timer_t;

static void sleep_cb(struct ev_loop *loop, ev_timer *t, int revents) {
    sleep_timer_t *st = (sleep_timer_t *)t;
    tg_lua_wait_t *wt = st->wt;
    free(st);
    tg_lua_wake(wt);
}

/* tg.sleep(s): 1 = yield now, -1 = not allowed in this context. */
int tg_ffi_sleep(double s) {
    tg_lua_wait_t *wt = tg_lua_wait_begin();
    if (wt == NULL) return -1;
    sleep_timer_t *st = tg_xcalloc(1, sizeof(*st));
    st->wt = wt;
    ev_timer_init(&st->t, sleep_cb, s < 0 ? 0 : s, 0.);
    ev_timer_start(g_lua->worker->loop, &st->t);
    return 1;
}

/* tg.request.get_body(): 0 = ready, 1 = yield now, -1 = not available. */
int tg_ffi_req_read_body(tg_request_t *r) {
    if (r->body_done && (r->body_mem || !r->has_body)) return 0;
    if (r->body_done || r->conn == NULL) return -1;   /* streamed upstream already */
    tg_lua_wait_t *wt = tg_lua_wait_begin();
    if (wt == NULL) return -1;
    r->body_read_wanted = 1;
    return 1;
}

/* ---- admin API extensions ---- */

int tg_lua_admin(tg_request_t *r, const char **body, size_t *len) {
    if (g_lua == NULL) return 0;
    lua_State *L = g_lua->L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, g_lua->ref_runtime);
    lua_getfield(L, -1, "admin");
    lua_pushlstring(L, r->http->method_name.p, r->http->method_name.len);
    lua_pushlstring(L, r->path.p, r->path.len);
    if (r->http->query.p) lua_pushlstring(L, r->http->query.p, r->http->query.len);
    else lua_pushliteral(L, "");
    int status = 0;
    if (lua_pcall(L, 3, 2, 0) != 0) {
        tg_log_write(TG_LOG_ERR, r->request_id, "lua: admin handler failed: %s", lua_tostring(L, -1));
        status = 500;
        *body = "{\"error\":\"Internal Server Error\"}";
        *len = strlen(*body);
    } else if (lua_isnumber(L, -2)) {
        status = (int)lua_tointeger(L, -2);
        size_t n = 0;
        const char *b = lua_tolstring(L, -1, &n);
        *body = tg_pool_strndup(r->pool, b ? b : "", n);
        *len = n;
    }
    lua_settop(L, top);
    return status;
}
