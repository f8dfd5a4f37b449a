/* Floor 4: floor_minimal's work in C, no Python: what any compiled (C, Rust, Go) proxy-wasm plugin doing it costs.
 *
 * Per request, as bench/ai/floor_plugins/floor_minimal: hold the headers until the body is in; read the body's
 * "model" (a byte search, no JSON validation: less work than the Python floor does); set the upstream, model and
 * credential headers (three keys, round robin, the pool's state read from shared data); note :status and the content
 * type; keep the JSON answer or the stream's last 4 KiB; at the end read the three token counts, the route name, and
 * record six counters, a histogram and the AI log line in filter state. Built by bench/ai/floor.py with zig. */

#define _GNU_SOURCE /* memmem */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))
#define EXPORT(name) __attribute__((export_name(#name)))

IMPORT(proxy_get_header_map_pairs) int32_t proxy_get_header_map_pairs(int32_t, char **, size_t *);
IMPORT(proxy_replace_header_map_value) int32_t proxy_replace_header_map_value(int32_t, const char *, size_t,
                                                                              const char *, size_t);
IMPORT(proxy_get_buffer_bytes) int32_t proxy_get_buffer_bytes(int32_t, int32_t, int32_t, char **, size_t *);
IMPORT(proxy_get_shared_data) int32_t proxy_get_shared_data(const char *, size_t, char **, size_t *, uint32_t *);
IMPORT(proxy_define_metric) int32_t proxy_define_metric(int32_t, const char *, size_t, uint32_t *);
IMPORT(proxy_increment_metric) int32_t proxy_increment_metric(uint32_t, int64_t);
IMPORT(proxy_record_metric) int32_t proxy_record_metric(uint32_t, uint64_t);
IMPORT(proxy_get_property) int32_t proxy_get_property(const char *, size_t, char **, size_t *);
IMPORT(proxy_set_property) int32_t proxy_set_property(const char *, size_t, const char *, size_t);
IMPORT(proxy_get_current_time_nanoseconds) int32_t proxy_get_current_time_nanoseconds(uint64_t *);

enum { REQ_HEADERS = 0, RESP_HEADERS = 2, REQ_BODY = 0, RESP_BODY = 1, CONTINUE = 0, PAUSE = 1, TAIL = 4096 };

typedef struct {
  int32_t id;
  int active, sse, status;
  uint64_t started;
  char *body;
  size_t len;
} stream_t;

#define SLOTS 4096
static stream_t streams[SLOTS];
static uint32_t metric[7];
static unsigned rr;
static const char *keys[3] = {"Bearer sk-bench-1", "Bearer sk-bench-2", "Bearer sk-bench-3"};

static stream_t *get(int32_t id) {
  stream_t *s = &streams[(uint32_t)id % SLOTS];
  if (s->id != id) {
    free(s->body);
    memset(s, 0, sizeof *s);
    s->id = id;
  }
  return s;
}

static uint64_t now(void) {
  uint64_t t = 0;
  proxy_get_current_time_nanoseconds(&t);
  return t;
}

/* The value of header `name` in a serialised map (u32 count, (u32, u32) sizes, "k\0v\0"...), or NULL. */
static const char *header(const char *map, size_t n, const char *name, uint32_t *vlen) {
  if (n < 4) return NULL;
  uint32_t count;
  memcpy(&count, map, 4);
  size_t pos = 4 + (size_t)count * 8, nlen = strlen(name);
  for (uint32_t i = 0; i < count && pos <= n; i++) {
    uint32_t len[2];
    memcpy(len, map + 4 + (size_t)i * 8, 8);
    if (len[0] == nlen && !memcmp(map + pos, name, nlen)) {
      *vlen = len[1];
      return map + pos + len[0] + 1;
    }
    pos += (size_t)len[0] + len[1] + 2;
  }
  return NULL;
}

static int is(const char *v, uint32_t n, const char *want) { return v && n == strlen(want) && !memcmp(v, want, n); }

static long number_after(const char *p, size_t n, const char *key) { /* "key": 123 -> 123, else 0 */
  const char *at = memmem(p, n, key, strlen(key));
  if (!at) return 0;
  at += strlen(key);
  while (at < p + n && (*at == ' ' || *at == ':' || *at == '"')) at++;
  return strtol(at, NULL, 10);
}

EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}
EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t n) { return malloc(n ? n : 1); }
EXPORT(proxy_on_context_create) void proxy_on_context_create(int32_t id, int32_t parent) {}
EXPORT(proxy_on_vm_start) int32_t proxy_on_vm_start(int32_t id, int32_t size) { return 1; }

EXPORT(proxy_on_configure) int32_t proxy_on_configure(int32_t id, int32_t size) {
  static const char *names[7] = {"floor.requests", "floor.request_total", "floor.llm_service_duration",
                                 "floor.input_token", "floor.output_token", "floor.total_token", "floor.llm_latency"};
  for (int i = 0; i < 7; i++) proxy_define_metric(i == 6 ? 2 : 0, names[i], strlen(names[i]), &metric[i]);
  return 1;
}

EXPORT(proxy_on_request_headers) int32_t proxy_on_request_headers(int32_t id, int32_t n, int32_t eos) {
  char *map = NULL;
  size_t len = 0;
  proxy_get_header_map_pairs(REQ_HEADERS, &map, &len);
  uint32_t ml = 0, pl = 0;
  const char *method = header(map, len, ":method", &ml), *path = header(map, len, ":path", &pl);
  stream_t *s = get(id);
  s->active = is(method, ml, "POST") && is(path, pl, "/v1/chat/completions");
  free(map);
  if (!s->active) return CONTINUE;
  s->started = now();
  return PAUSE;
}

EXPORT(proxy_on_request_body) int32_t proxy_on_request_body(int32_t id, int32_t size, int32_t eos) {
  if (!eos) return PAUSE;
  stream_t *s = get(id);
  if (!s->active) return CONTINUE;
  char *body = NULL, *shared = NULL;
  size_t len = 0, slen = 0;
  uint32_t cas = 0;
  proxy_get_buffer_bytes(REQ_BODY, 0, size, &body, &len);
  const char *m = body ? memmem(body, len, "\"model\"", 7) : NULL;
  s->active = m && memmem(m, len - (size_t)(m - body), "\"bench-model\"", 13);
  free(body);
  if (!s->active) return CONTINUE;
  proxy_replace_header_map_value(REQ_HEADERS, "x-ai-upstream", 13, "llm", 3);
  proxy_replace_header_map_value(REQ_HEADERS, "x-ai-model", 10, "bench-model", 11);
  proxy_get_shared_data("aigw.keys.bench-model", 21, &shared, &slen, &cas);
  free(shared);
  const char *key = keys[rr++ % 3];
  proxy_replace_header_map_value(REQ_HEADERS, "authorization", 13, key, strlen(key));
  proxy_increment_metric(metric[0], 1);
  return CONTINUE;
}

EXPORT(proxy_on_response_headers) int32_t proxy_on_response_headers(int32_t id, int32_t n, int32_t eos) {
  stream_t *s = get(id);
  if (!s->active) return CONTINUE;
  char *map = NULL;
  size_t len = 0;
  proxy_get_header_map_pairs(RESP_HEADERS, &map, &len);
  uint32_t sl = 0, cl = 0;
  const char *status = header(map, len, ":status", &sl), *ctype = header(map, len, "content-type", &cl);
  s->status = status ? atoi(status) : 0;
  s->sse = ctype && memmem(ctype, cl, "text/event-stream", 17);
  free(map);
  proxy_replace_header_map_value(RESP_HEADERS, "x-ai-served-model", 17, "bench-model", 11);
  return CONTINUE;
}

EXPORT(proxy_on_response_body) int32_t proxy_on_response_body(int32_t id, int32_t size, int32_t eos) {
  stream_t *s = get(id);
  if (!s->active) return CONTINUE;
  if (size > 0) { /* JSON: all of it; SSE: the stream's last TAIL bytes */
    int32_t start = s->sse && size > TAIL ? size - TAIL : 0;
    char *chunk = NULL;
    size_t n = 0;
    proxy_get_buffer_bytes(RESP_BODY, start, size - start, &chunk, &n);
    if (s->sse && s->len + n > TAIL) { /* older bytes make room */
      size_t drop = s->len + n - TAIL;
      memmove(s->body, s->body + drop, s->len - drop);
      s->len -= drop;
    }
    s->body = realloc(s->body, s->len + n + 1);
    memcpy(s->body + s->len, chunk, n);
    s->len += n;
    free(chunk);
  }
  if (!eos) return CONTINUE;
  const char *u = s->body ? memmem(s->body, s->len, "\"usage\"", 7) : NULL;
  size_t ul = u ? s->len - (size_t)(u - s->body) : 0;
  long in = number_after(u, ul, "\"prompt_tokens\""), out = number_after(u, ul, "\"completion_tokens\""),
       total = number_after(u, ul, "\"total_tokens\"");
  uint64_t ms = (now() - s->started) / 1000000;
  char *route = NULL;
  size_t rl = 0;
  proxy_get_property("xds\0route_name", 14, &route, &rl);
  proxy_increment_metric(metric[1], 1);
  if (ms) proxy_increment_metric(metric[2], (int64_t)ms);
  proxy_increment_metric(metric[3], in);
  proxy_increment_metric(metric[4], out);
  proxy_increment_metric(metric[5], total);
  proxy_record_metric(metric[6], ms);
  char line[512];
  int n = snprintf(line, sizeof line,
                   "{\"model\":\"bench-model\",\"route\":\"%.*s\",\"status\":%d,\"input_tokens\":%ld,"
                   "\"output_tokens\":%ld,\"total_tokens\":%ld,\"duration_ms\":%llu}",
                   (int)(rl < 64 ? rl : 64), route ? route : "", s->status, in, out, total, (unsigned long long)ms);
  proxy_set_property("ai_log", 6, line, (size_t)n);
  free(route);
  s->active = 0;
  return CONTINUE;
}

EXPORT(proxy_on_done) int32_t proxy_on_done(int32_t id) { return 1; }
EXPORT(proxy_on_log) void proxy_on_log(int32_t id) {}

EXPORT(proxy_on_delete) void proxy_on_delete(int32_t id) {
  stream_t *s = &streams[(uint32_t)id % SLOTS];
  if (s->id == id) {
    free(s->body);
    memset(s, 0, sizeof *s);
  }
}
