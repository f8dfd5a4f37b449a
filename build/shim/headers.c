/* Header maps unpacked in C; included by shim.c. The host's serialisation: u32 count, (u32 name length, u32 value
 * length) per pair, then "name\0value\0" per pair. proxywasm/testing/shim_twins.py has the same in Python
 * (unpack_pairs, unpack_dict, header_map) for the in-process host; inside the VM a Python loop cost ~10 us a map. */

__attribute__((import_module("env"), import_name("proxy_get_header_map_pairs"))) extern int32_t
proxy_get_header_map_pairs(int32_t, char **, size_t *); /* as the ABI glue declares it */

/* Whether the raw name is one of `names` (a tuple of bytes; NULL: every name is). */
static int pw_wanted(PyObject *names, const char *name, uint32_t len) {
  if (!names) return 1;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
    PyObject *w = PyTuple_GET_ITEM(names, i);
    if (PyBytes_Check(w) && PyBytes_GET_SIZE(w) == (Py_ssize_t)len && !memcmp(PyBytes_AS_STRING(w), name, len))
      return 1;
  }
  return 0;
}

/* The pairs of a serialised map as a list of (name, value), or as a dict (repeated names joined with ",", as
 * proxy_get_header_map_value answers), of the names in `names` only when it is not NULL (the others are never
 * decoded). Names and values are decoded as UTF-8 with surrogateescape. */
static PyObject *pw_unpack(const char *p, Py_ssize_t n, int as_dict, PyObject *names) {
  PyObject *out = as_dict ? PyDict_New() : PyList_New(0);
  if (!out || n < 4) return out;
  uint32_t count;
  memcpy(&count, p, 4);
  if ((uint64_t)count * 8 + 4 > (uint64_t)n) {
    Py_DECREF(out);
    return PyErr_Format(PyExc_ValueError, "header map: bad count");
  }
  size_t pos = 4 + (size_t)count * 8;
  for (uint32_t i = 0; i < count; i++) {
    uint32_t len[2];
    memcpy(len, p + 4 + (size_t)i * 8, 8);
    if ((uint64_t)pos + len[0] + len[1] + 2 <= (uint64_t)n && !pw_wanted(names, p + pos, len[0])) {
      pos += (size_t)len[0] + len[1] + 2;
      continue;
    }
    PyObject *kv[2] = {NULL, NULL};
    for (int j = 0; j < 2; j++) {
      if ((uint64_t)pos + len[j] + 1 > (uint64_t)n) {
        PyErr_Format(PyExc_ValueError, "header map: truncated");
        break;
      }
      kv[j] = PyUnicode_DecodeUTF8(p + pos, len[j], "surrogateescape");
      if (!kv[j]) break;
      pos += len[j] + 1;
    }
    int rc = -1;
    if (kv[1] && as_dict) {
      PyObject *old = PyDict_GetItemWithError(out, kv[0]);
      if (old) {
        PyObject *joined = PyUnicode_FromFormat("%U,%U", old, kv[1]);
        rc = joined ? PyDict_SetItem(out, kv[0], joined) : -1;
        Py_XDECREF(joined);
      } else if (!PyErr_Occurred()) {
        rc = PyDict_SetItem(out, kv[0], kv[1]);
      }
    } else if (kv[1]) {
      PyObject *t = PyTuple_Pack(2, kv[0], kv[1]);
      rc = t ? PyList_Append(out, t) : -1;
      Py_XDECREF(t);
    }
    Py_XDECREF(kv[0]);
    Py_XDECREF(kv[1]);
    if (rc < 0) {
      Py_DECREF(out);
      return NULL;
    }
  }
  return out;
}

/* unpack_pairs(buf) -> [(name, value), ...] */
static PyObject *pw_unpack_pairs(PyObject *self, PyObject *arg) {
  const char *p;
  Py_ssize_t n;
  return pw_bytes(arg, &p, &n) < 0 ? NULL : pw_unpack(p, n, 0, NULL);
}

/* unpack_dict(buf) -> {name: value} */
static PyObject *pw_unpack_dict(PyObject *self, PyObject *arg) {
  const char *p;
  Py_ssize_t n;
  return pw_bytes(arg, &p, &n) < 0 ? NULL : pw_unpack(p, n, 1, NULL);
}

/* header_map(map_type, as_dict[, names]) -> the map as unpack_dict/unpack_pairs give it (only the names in the
 * tuple `names`, if given), read from the host and unpacked in one call (no bytes object in between); the host's
 * status (an int) when it is not OK. */
static PyObject *pw_header_map(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 2 && nargs != 3) return pw_arg_count("header_map", 3, nargs);
  long map_type = PyLong_AsLong(args[0]);
  if (map_type == -1 && PyErr_Occurred()) return NULL;
  PyObject *names = nargs == 3 && args[2] != Py_None ? args[2] : NULL;
  if (names && !PyTuple_Check(names)) return PyErr_Format(PyExc_TypeError, "header_map: names must be a tuple");
  char *p = NULL;
  size_t n = 0;
  int32_t st = proxy_get_header_map_pairs((int32_t)map_type, &p, &n);
  PyObject *out = st == 0 ? pw_unpack(p ? p : "", (Py_ssize_t)n, PyObject_IsTrue(args[1]) == 1, names)
                          : PyLong_FromLong(st);
  free(p);
  return out;
}
