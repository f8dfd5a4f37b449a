/* Response body taps (proxywasm.taps); included by shim.c after the ABI glue.
 *
 * A stream whose plugin only needs what a response body ends with (token usage, [DONE]) and when it began (time
 * to first token) asks for a tap: from then on each response chunk goes on to the client without a Python call;
 * C keeps every byte while the body is at most whole_upto bytes long, then only the last `keep` bytes, and the
 * time the first bytes came. Python is called again at the end of the body (the last chunk already kept). Per
 * chunk this costs one host call and a copy instead of a Python callback (an SSE answer has one chunk per token).
 *
 * A tap can instead skip SSE events (tap_skip): while armed, each chunk that ends an event (a blank line) and holds
 * none of the plugin's markers goes on without Python; the first that does not, and the end of the body, reach
 * Python as usual and disarm it (the plugin arms it again when it holds nothing back). A plugin rewriting a few
 * events of a stream (the gateway's usage-only event) then sees those only.
 *
 * A tap can also count (tap_count, alone or with either of the above): in every response chunk from then on,
 * whether Python sees it or not, the JSON members named by the plugin's keys whose value is a non-empty string,
 * their string bytes (as sent, escapes included) and the time of the first chunk that completed a line holding
 * one. Only whole lines are looked at (a member never spans lines; a line's end is LF or CR), the last line of a
 * chunk is held until its end comes, so a chunk boundary anywhere changes nothing. The gateway counts generated
 * output this way (content, reasoning, tool-call arguments): the true time to the first token, and a token
 * estimate for servers that send no usage.
 *
 * Taps live in an open-addressing table keyed by context id (linear probing, deletion by backward shift), freed
 * when the stream's context is deleted or the plugin takes the tap. proxywasm/testing/shim_twins.py has the same
 * rules in Python for the in-process test host. */

typedef struct {
  int32_t id; /* 0: free slot */
  uint32_t keep, whole_upto, len, cap;
  uint64_t total; /* bytes seen, kept or not */
  int64_t first_ns;
  int trimmed; /* bytes were dropped: data is the body's end, not all of it */
  char *buf;
  int skip, armed; /* skipping events (tap_skip), and whether the next chunk may be skipped */
  int nmarks;
  struct {
    char needle[32], unless[16];
    uint32_t nlen, ulen;
  } marks[4];
  int nkeys; /* counting (tap_count): keys as they appear in JSON, quotes included */
  struct {
    char name[32];
    uint32_t len;
  } keys[6];
  uint8_t first_lo[16], first_hi[16]; /* the keys' first letters, by nibble: bit k for key k */
  uint8_t second_lo[16], second_hi[16]; /* and their second letters */
  char *line; /* the chunk's last line, not ended yet */
  uint32_t line_len, line_cap;
  uint64_t strings, string_bytes;
  int64_t first_string_ns;
} pw_tap;

#define PW_MAX_LINE (1u << 16) /* a longer line is not counted */

static pw_tap *pw_taps;
static uint32_t pw_taps_cap, pw_taps_used; /* cap: 0 or a power of two */

static uint32_t pw_tap_slot(int32_t id) { return ((uint32_t)id * 2654435761u) & (pw_taps_cap - 1); }

static pw_tap *pw_tap_find(int32_t id) {
  if (!pw_taps_used) return NULL;
  for (uint32_t i = pw_tap_slot(id);; i = (i + 1) & (pw_taps_cap - 1)) {
    if (pw_taps[i].id == id) return &pw_taps[i];
    if (!pw_taps[i].id) return NULL;
  }
}

static int pw_tap_grow(void) {
  uint32_t old_cap = pw_taps_cap, cap = old_cap ? old_cap * 2 : 64;
  pw_tap *old = pw_taps, *t = calloc(cap, sizeof *t);
  if (!t) return -1;
  pw_taps = t;
  pw_taps_cap = cap;
  for (uint32_t i = 0; i < old_cap; i++) {
    if (!old[i].id) continue;
    uint32_t j = pw_tap_slot(old[i].id);
    while (t[j].id) j = (j + 1) & (cap - 1);
    t[j] = old[i];
  }
  free(old);
  return 0;
}

static void pw_tap_remove(int32_t id) {
  pw_tap *t = pw_tap_find(id);
  if (!t) return;
  free(t->buf);
  free(t->line);
  uint32_t i = (uint32_t)(t - pw_taps), mask = pw_taps_cap - 1;
  pw_taps_used--;
  /* Backward shift: move later entries of the run into the hole when their home slot allows it. */
  for (uint32_t j = (i + 1) & mask; pw_taps[j].id; j = (j + 1) & mask) {
    uint32_t home = pw_tap_slot(pw_taps[j].id);
    if (((j - home) & mask) >= ((j - i) & mask)) {
      pw_taps[i] = pw_taps[j];
      i = j;
    }
  }
  memset(&pw_taps[i], 0, sizeof pw_taps[i]);
}

static int pw_tap_append(pw_tap *t, const char *p, uint32_t n) {
  if (t->len + n > t->cap) { /* a tail-only tap gets its whole room at once: no copies while it fills */
    uint32_t cap = t->cap ? t->cap : t->whole_upto ? 4096 : t->keep;
    while (cap < t->len + n) cap *= 2;
    char *b = realloc(t->buf, cap);
    if (!b) return -1;
    t->buf = b;
    t->cap = cap;
  }
  memcpy(t->buf + t->len, p, n);
  t->len += n;
  return 0;
}

static int64_t pw_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts); /* the clock of proxywasm.hostcalls.now_ns */
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Keep what the rules say of the current response chunk, p[0:size] (twin: proxywasm.testing.shim_twins.Tap.feed). */
static int pw_tap_feed(pw_tap *t, const char *p, uint32_t size) {
  if (!size) return 0;
  if (!t->total) t->first_ns = pw_now_ns();
  t->total += size;
  uint32_t start = 0;
  if (t->total > t->whole_upto) { /* the body's end only: of this chunk, at most its last `keep` bytes */
    if (size > t->keep) {
      start = size - t->keep;
      t->trimmed = 1;
    }
    uint32_t want = size - start;
    if (t->len + want > t->keep) { /* older bytes make room */
      uint32_t drop = t->len + want - t->keep;
      memmove(t->buf, t->buf + drop, t->len - drop);
      t->len -= drop;
      t->trimmed = 1;
    }
  }
  return pw_tap_append(t, p + start, size - start);
}

/* The first quote at or after q followed by the first two letters of a counted key (end: none), 16 bytes a
 * step: letters c, d are a key's first two when (lo1[c & 15] & hi1[c >> 4] & lo2[d & 15] & hi2[d >> 4]) has that
 * key's bit (tables made by tap_count). */
static const char *pw_next_key(const pw_tap *t, const char *q, const char *end) {
  const v128_t quote = wasm_i8x16_splat('"'), low = wasm_i8x16_splat(0x0F), zero = wasm_i8x16_splat(0);
  const v128_t lo1 = wasm_v128_load(t->first_lo), hi1 = wasm_v128_load(t->first_hi);
  const v128_t lo2 = wasm_v128_load(t->second_lo), hi2 = wasm_v128_load(t->second_hi);
  while (end - q >= 18) {
    v128_t c = wasm_v128_load(q + 1), d = wasm_v128_load(q + 2);
    v128_t keys = wasm_v128_and(
        wasm_v128_and(wasm_i8x16_swizzle(lo1, wasm_v128_and(c, low)), wasm_i8x16_swizzle(hi1, wasm_u8x16_shr(c, 4))),
        wasm_v128_and(wasm_i8x16_swizzle(lo2, wasm_v128_and(d, low)), wasm_i8x16_swizzle(hi2, wasm_u8x16_shr(d, 4))));
    uint32_t bits = wasm_i8x16_bitmask(wasm_v128_andnot(wasm_i8x16_eq(wasm_v128_load(q), quote),
                                                        wasm_i8x16_eq(keys, zero)));
    if (bits) return q + __builtin_ctz(bits);
    q += 16;
  }
  for (; end - q >= 3; q++) {
    unsigned char c = (unsigned char)q[1], d = (unsigned char)q[2];
    if (*q == '"' && (t->first_lo[c & 15] & t->first_hi[c >> 4] & t->second_lo[d & 15] & t->second_hi[d >> 4]))
      return q;
  }
  return end;
}

/* The first quote or line end at or after q (end: none). 16 bytes a step. */
static const char *pw_next_quote_or_eol(const char *q, const char *end) {
  while (end - q >= 16) {
    v128_t v = wasm_v128_load(q);
    uint32_t bits = wasm_i8x16_bitmask(wasm_v128_or(
        wasm_i8x16_eq(v, wasm_i8x16_splat('"')),
        wasm_v128_or(wasm_i8x16_eq(v, wasm_i8x16_splat('\n')), wasm_i8x16_eq(v, wasm_i8x16_splat('\r')))));
    if (bits) return q + __builtin_ctz(bits);
    q += 16;
  }
  while (q < end && *q != '"' && *q != '\n' && *q != '\r') q++;
  return q;
}

/* The counted members in p[0:n] (whole lines): the rules of proxywasm.taps.count_strings. */
static void pw_count_strings(pw_tap *t, const char *p, size_t n) {
  const char *end = p + n, *q = p;
  while ((q = pw_next_key(t, q, end)) < end) {
    unsigned char c = (unsigned char)q[1], d = (unsigned char)q[2];
    uint32_t maybe = /* the keys starting with these two letters */
        t->first_lo[c & 15] & t->first_hi[c >> 4] & t->second_lo[d & 15] & t->second_hi[d >> 4];
    int k = -1;
    while (maybe) {
      int i = __builtin_ctz(maybe);
      maybe &= maybe - 1;
      uint32_t len = t->keys[i].len;
      if ((size_t)(end - q) > len && q[len - 1] == '"' && !memcmp(q + 2, t->keys[i].name + 2, len - 3)) {
        k = i;
        break;
      }
    }
    if (k < 0) {
      q++;
      continue;
    }
    q += t->keys[k].len;
    while (q < end && (*q == ' ' || *q == '\t' || *q == ':')) q++;
    if (q >= end || *q != '"') continue;
    const char *open = ++q;
    for (;;) { /* the closing quote: one not escaped (an even number of backslashes before it), on this line */
      q = pw_next_quote_or_eol(q, end);
      if (q == end || *q != '"') break;
      const char *b = q;
      while (b > open && b[-1] == '\\') b--;
      if (!((q - b) & 1)) break;
      q++;
    }
    if (q == end || *q != '"') continue; /* not closed on its line: go on from the line's end */
    if (q > open) {
      t->strings++;
      t->string_bytes += (uint64_t)(q - open);
    }
    q++;
  }
}

static int pw_line_add(pw_tap *t, const char *p, uint32_t n) {
  if (t->line_len + n > PW_MAX_LINE) return -1;
  if (t->line_len + n > t->line_cap) {
    uint32_t cap = t->line_cap ? t->line_cap : 256;
    while (cap < t->line_len + n) cap *= 2;
    char *b = realloc(t->line, cap);
    if (!b) return -1;
    t->line = b;
    t->line_cap = cap;
  }
  memcpy(t->line + t->line_len, p, n);
  t->line_len += n;
  return 0;
}

/* Count the whole lines the chunk p[0:n] completes; hold its last line until its end comes (or the body's). */
static void pw_tap_count(pw_tap *t, const char *p, uint32_t n, int eos) {
  uint64_t before = t->strings;
  uint32_t cut = n;
  while (cut && p[cut - 1] != '\n' && p[cut - 1] != '\r') cut--;
  if (cut) {
    if (t->line_len) { /* the held line ends in this chunk */
      if (pw_line_add(t, p, cut) == 0) pw_count_strings(t, t->line, t->line_len);
      t->line_len = 0;
    } else {
      pw_count_strings(t, p, cut);
    }
  }
  if (cut < n && pw_line_add(t, p + cut, n - cut) < 0) t->line_len = 0; /* too long: not counted */
  if (eos && t->line_len) {
    pw_count_strings(t, t->line, t->line_len);
    t->line_len = 0;
  }
  if (t->strings != before && !t->first_string_ns) t->first_string_ns = pw_now_ns();
}

/* Whether the chunk holds a marker: its needle, unless the 16 bytes after it, past spaces, tabs, line ends and
 * colons, begin with its `unless` text (the rule of ai_gateway.usage._interesting: "usage": null is not one). */
static int pw_tap_marked(const pw_tap *t, const char *p, size_t n) {
  for (int m = 0; m < t->nmarks; m++) {
    const char *at = p, *end = p + n;
    while ((at = memmem(at, (size_t)(end - at), t->marks[m].needle, t->marks[m].nlen))) {
      const char *q = at + t->marks[m].nlen, *w = q + 16 < end ? q + 16 : end;
      while (q < w && (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n' || *q == ':')) q++;
      uint32_t ul = t->marks[m].ulen;
      if (!ul || (size_t)(w - q) < ul || memcmp(q, t->marks[m].unless, ul)) return 1;
      at++;
    }
  }
  return 0;
}

static int pw_ends_event(const char *p, size_t n) { /* as ai_gateway.usage._EVENT_END */
  return (n >= 2 && ((p[n - 2] == '\n' && p[n - 1] == '\n') || (p[n - 2] == '\r' && p[n - 1] == '\r'))) ||
         (n >= 3 && !memcmp(p + n - 3, "\n\r\n", 3)) || (n >= 4 && !memcmp(p + n - 4, "\r\n\r\n", 4));
}

/* Skipping events: True when the chunk p[0:size] goes on without Python (p NULL: it could not be read). */
static int pw_tap_skips(pw_tap *t, const char *p, uint32_t size, int eos) {
  if (!size && !eos) return 1;
  int armed = t->armed;
  t->armed = 0;
  if (!armed || eos) return 0;
  int skip = p && pw_ends_event(p, size) && !pw_tap_marked(t, p, size);
  t->armed = skip;
  t->total += size;
  return skip;
}

/* On a response body callback: True when the tap took the chunk and Python need not be called. The chunk is read
 * once (one host call), when a rule needs it. */
static int pw_tap_handles(int32_t id, uint32_t size, int eos) {
  pw_tap *t = pw_tap_find(id);
  if (!t) return 0;
  int feeds = !t->skip && t->keep;
  char *p = NULL;
  size_t n = 0;
  int read_ok = 1;
  if (size && (t->nkeys || feeds || (t->skip && t->armed && !eos))) {
    read_ok = proxy_get_buffer_bytes(1 /* HTTP_RESPONSE_BODY */, 0, (int32_t)size, &p, &n) == 0 && n == size;
  }
  if (t->nkeys && (read_ok || eos)) pw_tap_count(t, read_ok && p ? p : "", read_ok ? size : 0, eos);
  int r;
  if (t->skip) {
    r = pw_tap_skips(t, read_ok ? p : NULL, size, eos);
  } else if (!feeds) {
    r = 0; /* counting only: Python sees every chunk */
  } else if (!read_ok || pw_tap_feed(t, p ? p : "", size) < 0) {
    pw_log_error("python: response tap: cannot read the body chunk; the tap is dropped");
    pw_tap_remove(id); /* the plugin sees every chunk again, from the next one on */
    r = 0;
  } else {
    r = !eos;
  }
  free(p);
  return r;
}

static pw_tap *pw_tap_get(int32_t id) { /* the stream's tap, made if need be; NULL: out of memory */
  pw_tap *t = pw_tap_find(id);
  if (t) return t;
  if ((pw_taps_used + 1) * 2 > pw_taps_cap && pw_tap_grow() < 0) return NULL;
  uint32_t i = pw_tap_slot(id);
  while (pw_taps[i].id) i = (i + 1) & (pw_taps_cap - 1);
  t = &pw_taps[i];
  t->id = id;
  pw_taps_used++;
  return t;
}

/* tap_start(context_id, keep, whole_upto) */
static PyObject *pw_tap_start(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 3) return pw_arg_count("tap_start", 3, nargs);
  long id = PyLong_AsLong(args[0]), keep = PyLong_AsLong(args[1]), whole = PyLong_AsLong(args[2]);
  if (PyErr_Occurred()) return NULL;
  if (id <= 0 || keep < 1 || whole < 0 || keep > 1L << 30 || whole > 1L << 30)
    return PyErr_Format(PyExc_ValueError, "tap_start: bad arguments");
  pw_tap *t = pw_tap_get((int32_t)id);
  if (!t) return PyErr_NoMemory();
  t->keep = (uint32_t)keep;
  t->whole_upto = (uint32_t)whole;
  t->skip = 0;
  Py_RETURN_NONE;
}

/* tap_skip(context_id, markers): skip events (see the top), armed; markers: ((needle, unless), ...) as bytes,
 * at most 4, needles of 1..31 bytes, unless texts of at most 15. */
static PyObject *pw_tap_skip(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 2) return pw_arg_count("tap_skip", 2, nargs);
  long id = PyLong_AsLong(args[0]);
  if (id == -1 && PyErr_Occurred()) return NULL;
  PyObject *marks = args[1];
  if (id <= 0 || !PyTuple_Check(marks) || PyTuple_GET_SIZE(marks) > 4)
    return PyErr_Format(PyExc_ValueError, "tap_skip: bad arguments");
  pw_tap *t = pw_tap_get((int32_t)id);
  if (!t) return PyErr_NoMemory();
  t->skip = t->armed = 1;
  t->nmarks = 0;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(marks); i++) {
    PyObject *m = PyTuple_GET_ITEM(marks, i);
    if (!PyTuple_Check(m) || PyTuple_GET_SIZE(m) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(m, 0)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(m, 1)) || PyBytes_GET_SIZE(PyTuple_GET_ITEM(m, 0)) < 1 ||
        PyBytes_GET_SIZE(PyTuple_GET_ITEM(m, 0)) > 31 || PyBytes_GET_SIZE(PyTuple_GET_ITEM(m, 1)) > 15) {
      pw_tap_remove((int32_t)id);
      return PyErr_Format(PyExc_ValueError, "tap_skip: markers must be (needle, unless) bytes pairs");
    }
    t->marks[i].nlen = (uint32_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(m, 0));
    t->marks[i].ulen = (uint32_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(m, 1));
    memcpy(t->marks[i].needle, PyBytes_AS_STRING(PyTuple_GET_ITEM(m, 0)), t->marks[i].nlen);
    memcpy(t->marks[i].unless, PyBytes_AS_STRING(PyTuple_GET_ITEM(m, 1)), t->marks[i].ulen);
    t->nmarks++;
  }
  Py_RETURN_NONE;
}

/* tap_count(context_id, keys): count the members named by keys (at most 6 bytes objects of 1..29 bytes, without
 * quotes) whose value is a non-empty string, from the next chunk on (see the top). */
static PyObject *pw_tap_count_keys(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 2) return pw_arg_count("tap_count", 2, nargs);
  long id = PyLong_AsLong(args[0]);
  if (id == -1 && PyErr_Occurred()) return NULL;
  PyObject *keys = args[1];
  if (id <= 0 || !PyTuple_Check(keys) || PyTuple_GET_SIZE(keys) > 6 || !PyTuple_GET_SIZE(keys))
    return PyErr_Format(PyExc_ValueError, "tap_count: bad arguments");
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(keys); i++) {
    PyObject *k = PyTuple_GET_ITEM(keys, i);
    if (!PyBytes_Check(k) || PyBytes_GET_SIZE(k) < 1 || PyBytes_GET_SIZE(k) > 29)
      return PyErr_Format(PyExc_ValueError, "tap_count: keys must be bytes of 1..29 bytes");
  }
  pw_tap *t = pw_tap_get((int32_t)id);
  if (!t) return PyErr_NoMemory();
  t->nkeys = 0;
  memset(t->first_lo, 0, sizeof t->first_lo);
  memset(t->first_hi, 0, sizeof t->first_hi);
  memset(t->second_lo, 0, sizeof t->second_lo);
  memset(t->second_hi, 0, sizeof t->second_hi);
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(keys); i++) {
    PyObject *k = PyTuple_GET_ITEM(keys, i);
    uint32_t len = (uint32_t)PyBytes_GET_SIZE(k);
    t->keys[i].name[0] = '"';
    memcpy(t->keys[i].name + 1, PyBytes_AS_STRING(k), len);
    t->keys[i].name[len + 1] = '"';
    t->keys[i].len = len + 2;
    unsigned char c = (unsigned char)t->keys[i].name[1];
    t->first_lo[c & 15] |= (uint8_t)(1u << i);
    t->first_hi[c >> 4] |= (uint8_t)(1u << i);
    unsigned char d = (unsigned char)t->keys[i].name[2]; /* a 1-letter key: its closing quote */
    t->second_lo[d & 15] |= (uint8_t)(1u << i);
    t->second_hi[d >> 4] |= (uint8_t)(1u << i);
    t->nkeys++;
  }
  Py_RETURN_NONE;
}

/* tap_take(context_id) -> (data, total, first_ns, trimmed, strings, string_bytes, first_string_ns) or None; the tap
 * is gone afterwards. */
static PyObject *pw_tap_take(PyObject *self, PyObject *arg) {
  long id = PyLong_AsLong(arg);
  if (id == -1 && PyErr_Occurred()) return NULL;
  pw_tap *t = pw_tap_find((int32_t)id);
  if (!t) Py_RETURN_NONE;
  PyObject *r = Py_BuildValue("(y#KLOKKL)", t->buf ? t->buf : "", (Py_ssize_t)t->len, (unsigned long long)t->total,
                              (long long)t->first_ns, t->trimmed ? Py_True : Py_False,
                              (unsigned long long)t->strings, (unsigned long long)t->string_bytes,
                              (long long)t->first_string_ns);
  pw_tap_remove((int32_t)id);
  return r;
}
