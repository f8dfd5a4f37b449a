/* Response body taps (proxywasm.taps); included by shim.c after the ABI glue.
 *
 * A stream whose plugin only needs what a response body ends with (token usage, [DONE]) and when it began (time
 * to first token) asks for a tap: from then on each response chunk goes on to the client without a Python call;
 * C keeps every byte while the body is at most whole_upto bytes long, then only the last `keep` bytes, and the
 * time the first bytes came. Python is called again at the end of the body (the last chunk already kept). Per
 * chunk this costs one host call and a copy instead of a Python callback (an LLM stream has one chunk per token).
 *
 * A tap can instead skip SSE events (tap_skip): while armed, each chunk that ends an event (a blank line) and holds
 * none of the plugin's markers goes on without Python; the first that does not, and the end of the body, reach
 * Python as usual and disarm it (the plugin arms it again when it holds nothing back). A plugin rewriting a few
 * events of a stream (the gateway's usage-only event) then sees those only.
 *
 * Taps live in an open-addressing table keyed by context id (linear probing, deletion by backward shift), freed
 * when the stream's context is deleted or the plugin takes the tap. proxywasm/taps.py has the same rules in
 * Python for the in-process test host. */

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
} pw_tap;

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

/* Keep what the rules say of the current response chunk (`size` bytes); -1 when the host or memory failed. */
static int pw_tap_feed(pw_tap *t, uint32_t size) {
  if (!size) return 0;
  if (!t->total) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* the clock of proxywasm.hostcalls.now_ns */
    t->first_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  }
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
  char *p = NULL;
  size_t n = 0;
  int32_t st = proxy_get_buffer_bytes(1 /* HTTP_RESPONSE_BODY */, (int32_t)start, (int32_t)(size - start), &p, &n);
  int r = st == 0 ? pw_tap_append(t, p ? p : "", (uint32_t)n) : -1;
  free(p);
  return r;
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
         (n >= 4 && !memcmp(p + n - 4, "\r\n\r\n", 4));
}

/* Skipping events: True when the chunk goes on without Python. */
static int pw_tap_skips(pw_tap *t, uint32_t size, int eos) {
  if (!size && !eos) return 1;
  int armed = t->armed;
  t->armed = 0;
  if (!armed || eos) return 0;
  char *p = NULL;
  size_t n = 0;
  int skip = proxy_get_buffer_bytes(1 /* HTTP_RESPONSE_BODY */, 0, (int32_t)size, &p, &n) == 0 && n == size &&
             pw_ends_event(p, n) && !pw_tap_marked(t, p, n);
  free(p);
  t->armed = skip;
  t->total += size;
  return skip;
}

/* On a response body callback: True when the tap took the chunk and Python need not be called. */
static int pw_tap_handles(int32_t id, uint32_t size, int eos) {
  pw_tap *t = pw_tap_find(id);
  if (!t) return 0;
  if (t->skip) return pw_tap_skips(t, size, eos);
  if (pw_tap_feed(t, size) < 0) {
    pw_log_error("python: response tap: cannot read the body chunk; the tap is dropped");
    pw_tap_remove(id); /* the plugin sees every chunk again, from the next one on */
    return 0;
  }
  return !eos;
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

/* tap_take(context_id) -> (data, total, first_ns, trimmed) or None; the tap is gone afterwards. */
static PyObject *pw_tap_take(PyObject *self, PyObject *arg) {
  long id = PyLong_AsLong(arg);
  if (id == -1 && PyErr_Occurred()) return NULL;
  pw_tap *t = pw_tap_find((int32_t)id);
  if (!t) Py_RETURN_NONE;
  PyObject *r = Py_BuildValue("(y#KLO)", t->buf ? t->buf : "", (Py_ssize_t)t->len, (unsigned long long)t->total,
                              (long long)t->first_ns, t->trimmed ? Py_True : Py_False);
  pw_tap_remove((int32_t)id);
  return r;
}
