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

#include "json.c" /* strict JSON scan: json_members, json_index */

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

/* Stream context lifecycle without Python (see proxywasm.contract): with one root
 * context, a stream's Python context is made on its first callback, and deletes are
 * handed to Python in batches, so two of the few Python calls per request disappear. */
static int pw_lazy_create;  /* proxywasm.contract.LAZY_HTTP_CONTEXTS */
static int pw_defer_delete; /* proxywasm.contract.defer_delete() */
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
  Py_DECREF(disp);
  PyObject *contract = PyImport_ImportModule("proxywasm.contract"); /* what the shim may do without Python */
  if (!contract) {
    pw_print_error("contract import");
    return;
  }
  PyObject *flag = PyObject_GetAttrString(contract, "LAZY_HTTP_CONTEXTS");
  pw_lazy_create = flag && PyObject_IsTrue(flag) == 1;
  Py_XDECREF(flag);
  PyObject *defer = PyObject_CallMethod(contract, "defer_delete", NULL);
  pw_defer_delete = defer && PyObject_IsTrue(defer) == 1;
  Py_XDECREF(defer);
  pw_delete_many = PyObject_GetAttrString(contract, "delete_many");
  if (!pw_delete_many) pw_defer_delete = 0;
  PyErr_Clear();
  Py_DECREF(contract);
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
                      idx == PW_EXPORT_ON_DELETE || idx == PW_EXPORT_ON_FOREIGN_FUNCTION ||
                      idx == PW_EXPORT_ON_GRPC_RECEIVE_INITIAL_METADATA || idx == PW_EXPORT_ON_GRPC_RECEIVE ||
                      idx == PW_EXPORT_ON_GRPC_RECEIVE_TRAILING_METADATA || idx == PW_EXPORT_ON_GRPC_CLOSE ||
                      idx == PW_EXPORT_ON_REDIS_CALL_RESPONSE))
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
