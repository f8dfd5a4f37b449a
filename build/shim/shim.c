/*
 * proxy-wasm <-> CPython shim.
 *
 * Exports every proxy-wasm 0.2.1 callback and forwards it to the Python
 * dispatcher (proxywasm.dispatcher); offers every env.proxy_* import to Python
 * as the native module `_proxywasm`. The per-function glue is generated from
 * plugin/proxywasm/abi.py into abi_glue.c, which this file includes.
 *
 * Python starts lazily on the first callback after the module's own start-up,
 * because V8 traps on proxy_* calls made from _initialize.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wasm_simd128.h>

#include "mem.c" /* memcpy, memmove, memset */

/* Frozen module tables and the plugin's entry module (generated). */
extern const struct _frozen pw_frozen_stdlib[];
extern const struct _frozen pw_frozen_plugin[];
extern const char pw_entry_module[];

static PyObject *pw_arg_count(const char *name, Py_ssize_t want, Py_ssize_t got) {
  PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, got);
  return NULL;
}

/* Borrow the bytes of a bytes or bytearray argument. */
static int pw_bytes(PyObject *o, const char **p, Py_ssize_t *n) {
  if (PyBytes_Check(o)) {
    *p = PyBytes_AS_STRING(o);
    *n = PyBytes_GET_SIZE(o);
    return 0;
  }
  if (PyByteArray_Check(o)) {
    *p = PyByteArray_AS_STRING(o);
    *n = PyByteArray_GET_SIZE(o);
    return 0;
  }
  PyErr_Format(PyExc_TypeError, "expected bytes, got %.100s", Py_TYPE(o)->tp_name);
  return -1;
}

/* Wrap a host-allocated buffer as bytes and free it. */
static PyObject *pw_take_bytes(char *p, size_t n) {
  PyObject *b = PyBytes_FromStringAndSize(p ? p : "", p ? (Py_ssize_t)n : 0);
  free(p);
  return b;
}

/* (status, out1, ...): steals the references to the outputs; None-fills on failure. */
static PyObject *pw_result(int32_t st, int n, ...) {
  PyObject *t = PyTuple_New(n + 1);
  va_list ap;
  va_start(ap, n);
  for (int i = 0; i < n; i++) {
    PyObject *o = va_arg(ap, PyObject *);
    if (st != 0) {
      Py_XDECREF(o);
      o = Py_NewRef(Py_None);
    }
    if (o == NULL) o = Py_NewRef(Py_None);
    PyTuple_SET_ITEM(t, i + 1, o);
  }
  va_end(ap);
  PyTuple_SET_ITEM(t, 0, PyLong_FromLong(st));
  return t;
}

static int32_t pw_call_export(int idx, const int32_t *v, int n, int32_t dflt);

#include "headers.c" /* header maps unpacked in C */

/* ---- json_members: strict JSON validation + the top-level object's member spans, in one pass ----
 * json_members(body) -> [(key_start, key_end, value_start, value_end), ...] for a top-level object,
 * None for a valid document that is not an object; ValueError when the body is not JSON as
 * proxywasm.jsonscan's Python reference judges it (json.loads on the strictly decoded UTF-8 text, no
 * NaN/Infinity, finite doubles, ints of at most 4300 digits, nesting at most PW_JSON_MAX_DEPTH).
 * Parsing a 2 KB request into Python objects costs ~100k VM instructions; this costs a tenth. */
#define PW_JSON_MAX_DEPTH 500
#define PW_JSON_MAX_INT_DIGITS 4300

typedef struct {
  const unsigned char *p, *end;
  const char *err;
} pw_js;

static inline int pw_is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static void pw_js_ws(pw_js *j) {
  const unsigned char *p = j->p, *end = j->end;
  if (p < end && pw_is_ws(*p) && ++p < end && *p <= ' ') { /* a run (indented JSON), not ", " */
    while (end - p >= 16) {
      /* the four have distinct low nibbles: a byte is whitespace iff it equals the table's at its low nibble */
      const v128_t table = wasm_u8x16_make(' ', 0, 0, 0, 0, 0, 0, 0, 0, '\t', '\n', 0, 0, '\r', 0, 0);
      v128_t v = wasm_v128_load(p);
      v128_t expected = wasm_i8x16_swizzle(table, wasm_v128_and(v, wasm_i8x16_splat(0x0F)));
      uint32_t ws = wasm_i8x16_bitmask(wasm_i8x16_eq(expected, v));
      if (ws != 0xFFFF) {
        j->p = p + __builtin_ctz(~ws);
        return;
      }
      p += 16;
    }
    while (p < end && pw_is_ws(*p)) p++;
  }
  j->p = p;
}

static int pw_js_fail(pw_js *j, const char *why) { /* the first reason wins */
  if (!j->err) j->err = why;
  return -1;
}

static int pw_hex(unsigned char c) {
  return (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'f');
}

/* Whether none of 8 bytes needs a look: no control character, quote, backslash or non-ASCII byte. */
static inline int pw_plain8(uint64_t v) {
  const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
  uint64_t q = v ^ (ones * '"'), b = v ^ (ones * '\\');
  /* bit-hack "has a byte < n" / "has a zero byte" tests, valid once no byte has its high bit */
  return !((v | ((v - ones * 0x20) & ~v) | ((q - ones) & ~q) | ((b - ones) & ~b)) & high);
}

/* UTF-8 errors between a block and the 16 bytes before it (Keiser & Lemire, "Validating UTF-8 In Less Than
 * One Instruction Per Byte", 2021: simdjson's lookup tables); the same verdict as pw_js_string's byte-wise
 * check, but for a sequence still unfinished at the block's end. */
#define PW_U8_SHORT 0x01 /* a lead or ASCII byte where a continuation belongs, or a lead after a lead */
#define PW_U8_LONG 0x02  /* a continuation after ASCII */
#define PW_U8_OVER3 0x04 /* E0 80..9F */
#define PW_U8_LARGE 0x08 /* above U+10FFFF, or F5..FF */
#define PW_U8_SURR 0x10  /* ED A0..BF */
#define PW_U8_OVER2 0x20 /* C0, C1 */
#define PW_U8_1000 0x40  /* F0 80..8F (overlong) or a too large lead before 80..8F */
#define PW_U8_TWO 0x80   /* two continuations in a row: only right as the 3rd/4th byte of a sequence */
#define PW_U8_CARRY (PW_U8_SHORT | PW_U8_LONG | PW_U8_TWO)

static inline v128_t pw_utf8_errors(v128_t prev, v128_t v) {
  const v128_t b1_high = wasm_u8x16_make( /* by the previous byte's high nibble */
      PW_U8_LONG, PW_U8_LONG, PW_U8_LONG, PW_U8_LONG, PW_U8_LONG, PW_U8_LONG, PW_U8_LONG, PW_U8_LONG,
      PW_U8_TWO, PW_U8_TWO, PW_U8_TWO, PW_U8_TWO, PW_U8_SHORT | PW_U8_OVER2, PW_U8_SHORT,
      PW_U8_SHORT | PW_U8_OVER3 | PW_U8_SURR, PW_U8_SHORT | PW_U8_LARGE | PW_U8_1000);
  const v128_t b1_low = wasm_u8x16_make( /* by its low nibble */
      PW_U8_CARRY | PW_U8_OVER3 | PW_U8_OVER2 | PW_U8_1000, PW_U8_CARRY | PW_U8_OVER2, PW_U8_CARRY, PW_U8_CARRY,
      PW_U8_CARRY | PW_U8_LARGE, PW_U8_CARRY | PW_U8_LARGE | PW_U8_1000, PW_U8_CARRY | PW_U8_LARGE | PW_U8_1000,
      PW_U8_CARRY | PW_U8_LARGE | PW_U8_1000, PW_U8_CARRY | PW_U8_LARGE | PW_U8_1000,
      PW_U8_CARRY | PW_U8_LARGE | PW_U8_1000, PW_U8_CARRY | PW_U8_LARGE | PW_U8_1000,
      PW_U8_CARRY | PW_U8_LARGE | PW_U8_1000, PW_U8_CARRY | PW_U8_LARGE | PW_U8_1000,
      PW_U8_CARRY | PW_U8_LARGE | PW_U8_1000 | PW_U8_SURR, PW_U8_CARRY | PW_U8_LARGE | PW_U8_1000,
      PW_U8_CARRY | PW_U8_LARGE | PW_U8_1000);
  const v128_t b2_high = wasm_u8x16_make( /* by this byte's high nibble */
      PW_U8_SHORT, PW_U8_SHORT, PW_U8_SHORT, PW_U8_SHORT, PW_U8_SHORT, PW_U8_SHORT, PW_U8_SHORT, PW_U8_SHORT,
      PW_U8_LONG | PW_U8_OVER2 | PW_U8_TWO | PW_U8_OVER3 | PW_U8_1000,
      PW_U8_LONG | PW_U8_OVER2 | PW_U8_TWO | PW_U8_OVER3 | PW_U8_LARGE,
      PW_U8_LONG | PW_U8_OVER2 | PW_U8_TWO | PW_U8_SURR | PW_U8_LARGE,
      PW_U8_LONG | PW_U8_OVER2 | PW_U8_TWO | PW_U8_SURR | PW_U8_LARGE,
      PW_U8_SHORT, PW_U8_SHORT, PW_U8_SHORT, PW_U8_SHORT);
  v128_t prev1 = wasm_i8x16_shuffle(prev, v, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30);
  v128_t prev2 = wasm_i8x16_shuffle(prev, v, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29);
  v128_t prev3 = wasm_i8x16_shuffle(prev, v, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28);
  v128_t special = wasm_v128_and(
      wasm_v128_and(wasm_i8x16_swizzle(b1_high, wasm_u8x16_shr(prev1, 4)),
                    wasm_i8x16_swizzle(b1_low, wasm_v128_and(prev1, wasm_i8x16_splat(0x0F)))),
      wasm_i8x16_swizzle(b2_high, wasm_u8x16_shr(v, 4)));
  /* where a 3rd/4th byte is due (2 after an E0+ lead, 3 after F0+), PW_U8_TWO is required, elsewhere an error */
  v128_t must23 =
      wasm_v128_or(wasm_u8x16_ge(prev2, wasm_u8x16_splat(0xE0)), wasm_u8x16_ge(prev3, wasm_u8x16_splat(0xF0)));
  return wasm_v128_xor(wasm_v128_and(must23, wasm_u8x16_splat(0x80)), special);
}

/* The bytes a string scan must look at: quote, backslash, control or non-ASCII (as signed bytes, < 0x20 is both). */
static inline v128_t pw_special16(const unsigned char *p) {
  v128_t v = wasm_v128_load(p);
  return wasm_v128_or(wasm_v128_or(wasm_i8x16_eq(v, wasm_i8x16_splat('"')), wasm_i8x16_eq(v, wasm_i8x16_splat('\\'))),
                      wasm_i8x16_lt(v, wasm_i8x16_splat(0x20)));
}

static inline int pw_plain64(const unsigned char *p) {
  return !wasm_v128_any_true(wasm_v128_or(wasm_v128_or(pw_special16(p), pw_special16(p + 16)),
                                          wasm_v128_or(pw_special16(p + 32), pw_special16(p + 48))));
}

/* Skips plain string bytes 16 at a time: printable ASCII, and valid UTF-8 checked a block at a time. Stops at
 * the first quote, backslash or control byte when all before it in its block is ASCII, else at the start of the
 * block holding it or an invalid sequence, then backs up to the start of a character the last block left
 * unfinished. So it answers a character boundary the byte-wise loop would reach with all before it valid, from
 * where that loop gives the same verdict and message as it would alone. Reads only whole blocks in the buffer. */
static const unsigned char *pw_js_skip16(const unsigned char *p, const unsigned char *end) {
  v128_t prev = wasm_i8x16_splat(0); /* p is a character boundary: as if after ASCII */
  int multibyte = 0;                 /* whether prev holds non-ASCII bytes */
  while (end - p >= 16) {
    v128_t v = wasm_v128_load(p);
    uint32_t stop = wasm_i8x16_bitmask(wasm_v128_or(
        wasm_v128_or(wasm_i8x16_eq(v, wasm_i8x16_splat('"')), wasm_i8x16_eq(v, wasm_i8x16_splat('\\'))),
        wasm_u8x16_lt(v, wasm_u8x16_splat(0x20))));
    uint32_t high = wasm_i8x16_bitmask(v);
    if (stop) {
      if (!multibyte) return p + __builtin_ctz(stop | high); /* the first byte to look at, after ASCII */
      break;
    }
    if (high | multibyte) { /* non-ASCII here or at the end of the last block */
      if (wasm_v128_any_true(pw_utf8_errors(prev, v))) break;
      multibyte = high != 0;
      prev = v;
      p += 16;
    } else { /* ASCII (and so is prev: any ASCII block is as good); a long run goes 64 bytes a step */
      p += 16;
      if (end - p >= 32 && !wasm_v128_any_true(wasm_v128_or(pw_special16(p), pw_special16(p + 16)))) {
        p += 32; /* 32 first: for a medium string, a failing 64-byte test costs more than it saves */
        while (end - p >= 64 && pw_plain64(p)) p += 64;
      }
    }
  }
  if (multibyte) { /* prev = p[-16..-1], without errors: at most one unfinished sequence at its end */
    if (p[-1] >= 0xC0) p -= 1;
    else if (p[-2] >= 0xE0) p -= 2;
    else if (p[-3] >= 0xF0) p -= 3;
  }
  return p;
}

static int pw_js_string(pw_js *j) { /* at the opening quote */
  const unsigned char *p = j->p + 1, *end = j->end;
  while (p < end) {
    uint64_t v;
    if (end - p >= 16) p = pw_js_skip16(p, end);
    if (end - p < 16) /* the tail (no 16-byte load may pass the end), 8 bytes a step */
      while (end - p >= 8 && (memcpy(&v, p, 8), pw_plain8(v))) p += 8;
    if (p >= end) break;
    unsigned char c = *p;
    if (c == '"') {
      j->p = p + 1;
      return 0;
    }
    if (c < 0x20) return pw_js_fail(j, "control character in string");
    if (c == '\\') {
      if (p + 1 >= end) break;
      unsigned char e = p[1];
      if (e == 'u') {
        if (p + 6 > end || !pw_hex(p[2]) || !pw_hex(p[3]) || !pw_hex(p[4]) || !pw_hex(p[5]))
          return pw_js_fail(j, "bad \\u escape");
        p += 6;
      } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
        p += 2;
      } else {
        return pw_js_fail(j, "bad escape");
      }
      continue;
    }
    if (c < 0x80) {
      p++;
      continue;
    }
    /* strict UTF-8: no overlongs, no encoded surrogates, nothing above U+10FFFF */
    int n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else
      return pw_js_fail(j, "invalid UTF-8");
    if (p + n >= end) return pw_js_fail(j, "invalid UTF-8");
    if (p[1] < lo || p[1] > hi) return pw_js_fail(j, "invalid UTF-8");
    for (int k = 2; k <= n; k++)
      if (p[k] < 0x80 || p[k] > 0xBF) return pw_js_fail(j, "invalid UTF-8");
    p += n + 1;
  }
  return pw_js_fail(j, "unterminated string");
}

static int pw_js_number(pw_js *j) {
  const unsigned char *p = j->p, *end = j->end, *start = p;
  if (p < end && *p == '-') p++;
  const unsigned char *digits = p;
  if (p < end && *p == '0') p++;
  else if (p < end && *p >= '1' && *p <= '9')
    while (p < end && *p >= '0' && *p <= '9') p++;
  else
    return pw_js_fail(j, "bad number");
  size_t ndigits = (size_t)(p - digits);
  int is_float = 0;
  if (p + 1 < end && *p == '.' && p[1] >= '0' && p[1] <= '9') {
    is_float = 1;
    p++;
    while (p < end && *p >= '0' && *p <= '9') p++;
  }
  int has_exp = 0;
  if (p < end && (*p == 'e' || *p == 'E')) {
    const unsigned char *q = p + 1;
    if (q < end && (*q == '+' || *q == '-')) q++;
    if (q < end && *q >= '0' && *q <= '9') {
      is_float = has_exp = 1;
      while (q < end && *q >= '0' && *q <= '9') q++;
      p = q;
    }
  }
  /* Without an exponent, at most 308 integer digits is below DBL_MAX (~1.8e308): finite, no strtod
   * (musl's costs ~13k VM instructions for "0.2"). */
  if (is_float && (has_exp || ndigits > 308)) {
    /* strtod stops at the first byte outside the number: the body always ends in a NUL (bytes object) */
    double v = strtod((const char *)start, NULL);
    if (v - v != 0.0) return pw_js_fail(j, "number out of range");
  } else if (ndigits > PW_JSON_MAX_INT_DIGITS) {
    return pw_js_fail(j, "integer too long");
  }
  j->p = p;
  return 0;
}

static int pw_js_scalar(pw_js *j) {
  switch (*j->p) {
    case '"':
      return pw_js_string(j);
    case 't':
      if (j->end - j->p >= 4 && !memcmp(j->p, "true", 4)) { j->p += 4; return 0; }
      break;
    case 'f':
      if (j->end - j->p >= 5 && !memcmp(j->p, "false", 5)) { j->p += 5; return 0; }
      break;
    case 'n':
      if (j->end - j->p >= 4 && !memcmp(j->p, "null", 4)) { j->p += 4; return 0; }
      break;
    default:
      if (*j->p == '-' || (*j->p >= '0' && *j->p <= '9')) return pw_js_number(j);
  }
  return pw_js_fail(j, "expected a value");
}

/* Iterative (an explicit bracket stack): deep nesting must not grow the VM's C stack. */
static PyObject *pw_span(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, Py_ssize_t d, int n) {
  PyObject *t = PyTuple_New(n); /* Py_BuildValue parses its format on every call: ~4x dearer */
  if (!t) return NULL;
  Py_ssize_t v[4] = {a, b, c, d};
  for (int i = 0; i < n; i++) {
    PyObject *x = PyLong_FromSsize_t(v[i]);
    if (!x) {
      Py_DECREF(t);
      return NULL;
    }
    PyTuple_SET_ITEM(t, i, x);
  }
  return t;
}

/* A top-level member into json_index's dict: raw key bytes -> (value_start, value_end, times seen, int or None). */
static int pw_index_add(PyObject *out, const unsigned char *b0, const unsigned char *ks, const unsigned char *ke,
                        const unsigned char *vs, const unsigned char *ve, int *escaped) {
  Py_ssize_t klen = ke - ks - 2;
  if (memchr(ks + 1, '\\', klen)) *escaped = 1;
  PyObject *key = PyBytes_FromStringAndSize((const char *)ks + 1, klen);
  if (!key) return -1;
  PyObject *old = PyDict_GetItemWithError(out, key);
  Py_ssize_t seen = old ? PyLong_AsSsize_t(PyTuple_GET_ITEM(old, 2)) + 1 : 1;
  PyObject *t = (old || !PyErr_Occurred()) ? pw_span(vs - b0, ve - b0, seen, 0, 4) : NULL;
  if (t) { /* a non-negative integer value (token counts, max_tokens) comes decoded; anything else: None */
    Py_ssize_t n = ve - vs;
    long long v = 0; /* 18 digits fit in 64 bits (Py_ssize_t is 32 here) */
    int digits = n > 0 && n <= 18;
    for (Py_ssize_t i = 0; digits && i < n; i++) {
      digits = vs[i] >= '0' && vs[i] <= '9';
      v = v * 10 + (vs[i] - '0');
    }
    PyObject *x = digits ? PyLong_FromLongLong(v) : Py_NewRef(Py_None);
    Py_SETREF(PyTuple_GET_ITEM(t, 3), x); /* replaces the placeholder 0 */
    if (!x) Py_CLEAR(t);
  }
  int r = t ? PyDict_SetItem(out, key, t) : -1;
  Py_XDECREF(t);
  Py_DECREF(key);
  return r;
}

/* json_members(body) (index = 0), or json_index(body) (index = 1): the same one-pass scan; the index is
 * ({raw key bytes: (value_start, value_end, times seen, the value if a non-negative integer)}, whether a key
 * has a JSON escape). */
static PyObject *pw_json_scan(PyObject *arg, int index) {
  if (!PyBytes_Check(arg)) return PyErr_Format(PyExc_TypeError, "json scan needs bytes");
  int escaped = 0;
  const unsigned char *b0 = (const unsigned char *)PyBytes_AS_STRING(arg);
  pw_js j = {b0, b0 + PyBytes_GET_SIZE(arg), NULL};
  unsigned char stack[PW_JSON_MAX_DEPTH];
  int depth = 0;
  const unsigned char *ks = NULL, *ke = NULL, *vs = NULL;
  pw_js_ws(&j);
  int object = j.p < j.end && *j.p == '{';
  PyObject *out = object ? (index ? PyDict_New() : PyList_New(0)) : NULL;
  if (object && !out) return NULL;
value:
  if (j.p >= j.end) {
    pw_js_fail(&j, "expected a value");
    goto fail;
  }
  if (*j.p == '{' || *j.p == '[') {
    if (depth == PW_JSON_MAX_DEPTH) {
      pw_js_fail(&j, "nested too deeply");
      goto fail;
    }
    stack[depth++] = *j.p == '{' ? '}' : ']';
    j.p++;
    pw_js_ws(&j);
    if (j.p < j.end && *j.p == stack[depth - 1]) {
      j.p++;
      depth--;
      goto after;
    }
    if (stack[depth - 1] == '}') goto key;
    goto value;
  }
  if (pw_js_scalar(&j) < 0) goto fail;
after:
  if (depth == 0) goto done;
  if (depth == 1 && object) { /* a member of the top-level object just ended */
    if (index) {
      if (pw_index_add(out, b0, ks, ke, vs, j.p, &escaped) < 0) goto fail;
    } else {
      PyObject *t = pw_span(ks - b0, ke - b0, vs - b0, j.p - b0, 4);
      if (!t || PyList_Append(out, t) < 0) {
        Py_XDECREF(t);
        goto fail;
      }
      Py_DECREF(t);
    }
  }
  pw_js_ws(&j);
  if (j.p < j.end && *j.p == ',') {
    j.p++;
    pw_js_ws(&j);
    if (stack[depth - 1] == '}') goto key;
    goto value;
  }
  if (j.p < j.end && *j.p == stack[depth - 1]) {
    j.p++;
    depth--;
    goto after;
  }
  pw_js_fail(&j, "expected ',' or a closing bracket");
  goto fail;
key:
  if (j.p >= j.end || *j.p != '"') {
    pw_js_fail(&j, "expected a key");
    goto fail;
  }
  if (depth == 1) ks = j.p;
  if (pw_js_string(&j) < 0) goto fail;
  if (depth == 1) ke = j.p;
  pw_js_ws(&j);
  if (j.p >= j.end || *j.p != ':') {
    pw_js_fail(&j, "expected ':'");
    goto fail;
  }
  j.p++;
  pw_js_ws(&j);
  if (depth == 1) vs = j.p;
  goto value;
done:
  pw_js_ws(&j);
  if (j.p != j.end) {
    pw_js_fail(&j, "extra data");
    goto fail;
  }
  if (!object) Py_RETURN_NONE;
  if (index) {
    PyObject *r = PyTuple_Pack(2, out, escaped ? Py_True : Py_False);
    Py_DECREF(out);
    return r;
  }
  return out;
fail:
  Py_XDECREF(out);
  if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "not JSON: %s", j.err ? j.err : "?");
  return NULL;
}

static PyObject *pw_json_members(PyObject *self, PyObject *arg) { return pw_json_scan(arg, 0); }
static PyObject *pw_json_index(PyObject *self, PyObject *arg) { return pw_json_scan(arg, 1); }

static PyObject *pw_tap_start(PyObject *self, PyObject *const *args, Py_ssize_t nargs); /* tap.c */
static PyObject *pw_tap_take(PyObject *self, PyObject *arg);
static PyObject *pw_tap_skip(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
static PyObject *pw_tap_count_keys(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#define PW_NATIVE_HELPERS                                            \
  {"unpack_pairs", (PyCFunction)pw_unpack_pairs, METH_O, NULL},      \
  {"unpack_dict", (PyCFunction)pw_unpack_dict, METH_O, NULL},      \
  {"header_map", (PyCFunction)(void (*)(void))pw_header_map, METH_FASTCALL, NULL}, \
  {"json_members", (PyCFunction)pw_json_members, METH_O, NULL},      \
  {"json_index", (PyCFunction)pw_json_index, METH_O, NULL},      \
  {"tap_start", (PyCFunction)(void (*)(void))pw_tap_start, METH_FASTCALL, NULL}, \
  {"tap_take", (PyCFunction)pw_tap_take, METH_O, NULL},      \
  {"tap_skip", (PyCFunction)(void (*)(void))pw_tap_skip, METH_FASTCALL, NULL}, \
  {"tap_count", (PyCFunction)(void (*)(void))pw_tap_count_keys, METH_FASTCALL, NULL},

#include "abi_glue.c"

static struct PyModuleDef pw_module = {
    PyModuleDef_HEAD_INIT, "_proxywasm", "proxy-wasm host calls", -1, pw_methods,
};

static PyObject *pw_init_module(void) { return PyModule_Create(&pw_module); }

static PyObject *pw_exports[PW_NUM_EXPORTS];
static int pw_state; /* 0: not started, 1: ready, -1: failed */

/* Stream context lifecycle without Python (see proxywasm.dispatcher): with one root
 * context, a stream's Python context is made on its first callback, and deletes are
 * handed to Python in batches, so two of the few Python calls per request disappear. */
static int pw_lazy_create;  /* dispatcher.LAZY_HTTP_CONTEXTS */
static int pw_defer_delete; /* dispatcher.defer_delete() */
static int pw_roots;
static int32_t pw_root_id = -1;
#define PW_PENDING_MAX 64
static int32_t pw_pending[PW_PENDING_MAX];
static int pw_npending;
static PyObject *pw_delete_many;

static void pw_log_error(const char *msg) { proxy_log(4, msg, strlen(msg)); }

#include "tap.c" /* response body taps */

/* Log the pending Python exception with its traceback through sys.stderr. */
static void pw_print_error(const char *where) {
  char buf[160];
  snprintf(buf, sizeof buf, "python: unhandled exception in %s", where);
  pw_log_error(buf);
  PyErr_Print();
}

static struct _frozen *pw_merge_frozen(void) {
  size_t a = 0, b = 0;
  while (pw_frozen_stdlib[a].name) a++;
  while (pw_frozen_plugin[b].name) b++;
  struct _frozen *all = calloc(a + b + 1, sizeof *all);
  if (!all) return NULL;
  /* Plugin modules first so that they win over a stdlib module of the same name. */
  memcpy(all, pw_frozen_plugin, b * sizeof *all);
  memcpy(all + b, pw_frozen_stdlib, a * sizeof *all);
  return all;
}

static double pw_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void pw_start_python(void) {
  double t0 = pw_now_ms();
  pw_state = -1;
  struct _frozen *frozen = pw_merge_frozen();
  if (!frozen) {
    pw_log_error("python: out of memory");
    return;
  }
  PyImport_FrozenModules = frozen;
  if (PyImport_AppendInittab("_proxywasm", pw_init_module) < 0) {
    pw_log_error("python: cannot register _proxywasm");
    return;
  }
  PyConfig config;
  PyConfig_InitIsolatedConfig(&config);
  config.site_import = 0;
  config.use_frozen_modules = 1;
  config.write_bytecode = 0;
  config.buffered_stdio = 0;
  config.install_signal_handlers = 0;
  config.pathconfig_warnings = 0;
  config.module_search_paths_set = 1; /* empty: everything is frozen */
  PyStatus st = PyConfig_SetString(&config, &config.home, L"/python");
  if (!PyStatus_Exception(st)) st = PyConfig_SetString(&config, &config.program_name, L"proxywasm");
  if (!PyStatus_Exception(st)) st = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(st)) {
    char buf[256];
    snprintf(buf, sizeof buf, "python: initialisation failed: %s: %s", st.func ? st.func : "?",
             st.err_msg ? st.err_msg : "?");
    pw_log_error(buf);
    return;
  }
  PyObject *entry = PyImport_ImportModule(pw_entry_module);
  if (!entry) {
    pw_print_error("plugin import");
    return;
  }
  Py_DECREF(entry);
  PyObject *disp = PyImport_ImportModule("proxywasm.dispatcher");
  if (!disp) {
    pw_print_error("dispatcher import");
    return;
  }
  for (int i = 0; i < PW_NUM_EXPORTS; i++) {
    pw_exports[i] = PyObject_GetAttrString(disp, pw_export_names[i]);
    if (!pw_exports[i]) PyErr_Clear(); /* callback not implemented: host gets the default */
  }
  PyObject *flag = PyObject_GetAttrString(disp, "LAZY_HTTP_CONTEXTS");
  pw_lazy_create = flag && PyObject_IsTrue(flag) == 1;
  Py_XDECREF(flag);
  PyObject *defer = PyObject_CallMethod(disp, "defer_delete", NULL);
  pw_defer_delete = defer && PyObject_IsTrue(defer) == 1;
  Py_XDECREF(defer);
  pw_delete_many = PyObject_GetAttrString(disp, "delete_many");
  if (!pw_delete_many) pw_defer_delete = 0;
  PyErr_Clear();
  Py_DECREF(disp);
  pw_state = 1;
  char buf[160];
  snprintf(buf, sizeof buf, "python: ready in %.1f ms, linear memory %zu KiB", pw_now_ms() - t0,
           (size_t)__builtin_wasm_memory_size(0) * 64);
  proxy_log(2, buf, strlen(buf));
}

static void pw_flush_deletes(void) {
  PyObject *ids = PyTuple_New(pw_npending);
  for (int i = 0; i < pw_npending; i++) PyTuple_SET_ITEM(ids, i, PyLong_FromLong(pw_pending[i]));
  pw_npending = 0;
  PyObject *r = PyObject_CallOneArg(pw_delete_many, ids);
  Py_DECREF(ids);
  if (!r) pw_print_error("delete_many");
  Py_XDECREF(r);
}

/* True when the call needs no Python (a lazily created or batch-deleted stream context). */
static int pw_handled_in_c(int idx, const int32_t *v) {
  if (idx == PW_EXPORT_ON_CONTEXT_CREATE) {
    if (v[1] == 0) {
      pw_roots++;
      pw_root_id = v[0];
      return 0;
    }
    return pw_lazy_create && pw_roots == 1 && v[1] == pw_root_id;
  }
  if (idx == PW_EXPORT_ON_RESPONSE_BODY) return pw_tap_handles(v[0], (uint32_t)v[1], v[2]);
  if (idx == PW_EXPORT_ON_DELETE) pw_tap_remove(v[0]);
  if (idx == PW_EXPORT_ON_DELETE && pw_defer_delete && pw_roots == 1 && v[0] != pw_root_id) {
    pw_pending[pw_npending++] = v[0];
    if (pw_npending == PW_PENDING_MAX) pw_flush_deletes();
    return 1;
  }
  /* Anything that may touch other contexts sees deletes first. */
  if (pw_npending && (idx == PW_EXPORT_ON_HTTP_CALL_RESPONSE || idx == PW_EXPORT_ON_TICK ||
                      idx == PW_EXPORT_ON_QUEUE_READY || idx == PW_EXPORT_ON_CONFIGURE ||
                      idx == PW_EXPORT_ON_DELETE || idx == PW_EXPORT_ON_FOREIGN_FUNCTION))
    pw_flush_deletes();
  return 0;
}

static int32_t pw_call_export(int idx, const int32_t *v, int n, int32_t dflt) {
  if (pw_state == 0) pw_start_python();
  if (pw_state != 1 || !pw_exports[idx]) return dflt;
  if (n && pw_handled_in_c(idx, v)) return dflt;
  PyObject *args[8];
  for (int i = 0; i < n; i++) args[i] = PyLong_FromUnsignedLong((uint32_t)v[i]);
  PyObject *r = PyObject_Vectorcall(pw_exports[idx], args, (size_t)n, NULL);
  for (int i = 0; i < n; i++) Py_DECREF(args[i]);
  if (!r) {
    pw_print_error(pw_export_names[idx]);
    return dflt;
  }
  int32_t out = dflt;
  if (r != Py_None) {
    out = (int32_t)PyLong_AsLong(r);
    if (out == -1 && PyErr_Occurred()) {
      pw_print_error(pw_export_names[idx]);
      out = dflt;
    }
  }
  Py_DECREF(r);
  return out;
}

__attribute__((export_name("proxy_abi_version_0_2_1"))) void proxy_abi_version_0_2_1(void) {}

__attribute__((export_name("proxy_on_memory_allocate"))) void *proxy_on_memory_allocate(size_t size) {
  return malloc(size ? size : 1);
}
