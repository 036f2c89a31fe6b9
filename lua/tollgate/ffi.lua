-- tollgate.ffi: the C functions of the PDK (core/tg_lua_api.c, core/tg_lua.c),
-- declared once for every module that calls them. They are exported by the
-- tollgate binary, so ffi.C finds them.
local ffi = require "ffi"

ffi.cdef [[
typedef struct { const char *p; size_t len; } tg_str_t;
typedef struct { tg_str_t name; tg_str_t value; } tg_http_header_t;
typedef struct tg_request_s tg_request_t;

const tg_str_t *tg_ffi_req_method(tg_request_t *r);
const tg_str_t *tg_ffi_req_path(tg_request_t *r);
const tg_str_t *tg_ffi_req_raw_query(tg_request_t *r);
const tg_str_t *tg_ffi_req_upstream_uri(tg_request_t *r);
const char *tg_ffi_req_client_ip(tg_request_t *r);
const char *tg_ffi_req_host(tg_request_t *r);
int tg_ffi_req_port(tg_request_t *r);
int tg_ffi_req_https(tg_request_t *r);
int tg_ffi_req_client_cert(tg_request_t *r, const char **out);
int tg_ffi_req_http_minor(tg_request_t *r);
const char *tg_ffi_req_route_name(tg_request_t *r);
double tg_ffi_req_start_time(tg_request_t *r);
const tg_http_header_t *tg_ffi_req_headers(tg_request_t *r, int *n);
const tg_http_header_t *tg_ffi_req_header(tg_request_t *r, const char *name, size_t len);
int tg_ffi_req_header_set(tg_request_t *r, const char *name, size_t nlen,
                          const char *value, size_t vlen, int mode);
int tg_ffi_req_set_path(tg_request_t *r, const char *p, size_t len);
int tg_ffi_req_set_query(tg_request_t *r, const char *q, size_t len);
int tg_ffi_req_read_body(tg_request_t *r);
const char *tg_ffi_req_body(tg_request_t *r, size_t *len);
int tg_ffi_req_set_body(tg_request_t *r, const char *p, size_t len);
void tg_ffi_req_set_id(tg_request_t *r, const char *id, size_t len);
int tg_ffi_upstream_set(tg_request_t *r, const char *name, size_t len);
const char *tg_ffi_upstream_name(tg_request_t *r);

int tg_ffi_resp_exit(tg_request_t *r, int status, const char *body, size_t len);
int tg_ffi_resp_status(tg_request_t *r);
int tg_ffi_resp_set_status(tg_request_t *r, int status);
const tg_http_header_t *tg_ffi_resp_headers(tg_request_t *r, int *n);
const tg_http_header_t *tg_ffi_resp_header(tg_request_t *r, const char *name, size_t len);
int tg_ffi_resp_header_set(tg_request_t *r, const char *name, size_t nlen,
                           const char *value, size_t vlen, int mode);
int tg_ffi_resp_upstream_status(tg_request_t *r);
void tg_ffi_resp_skip_body_filter(tg_request_t *r);

int tg_ffi_upstream_ntargets(tg_request_t *r);
const char *tg_ffi_upstream_target_addr(tg_request_t *r, int i);
int tg_ffi_upstream_exclude_target(tg_request_t *r, int i);
int tg_ffi_upstream_nattempts(tg_request_t *r);
int tg_ffi_upstream_attempt(tg_request_t *r, int i, int *target);

void tg_ffi_log(int level, tg_request_t *r, const char *msg, size_t len);
double tg_ffi_now(void);
int tg_ffi_worker_slot(void);
int tg_ffi_sleep(double s);
int tg_ffi_timer_at(double delay, int id);
]]

return ffi.C
