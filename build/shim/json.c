/* Strict JSON validation and the top-level object's members, in C (proxywasm.jsonscan); included by shim.c.
 * Its Python twin, which the tests compare this against on both hosts, is in proxywasm/testing/shim_twins.py. */
/* ---- json_members: strict JSON validation + the top-level object's member spans, in one pass ----
 * json_members(body) -> [(key_start, key_end, value_start, value_end), ...] for a top-level object,
 * None for a valid document that is not an object; ValueError when the body is not JSON as
 * the Python twin (proxywasm.testing.shim_twins) judges it (json.loads on the strictly decoded UTF-8 text, no
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
